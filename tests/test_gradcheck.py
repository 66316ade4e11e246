"""The gradient self-check stops a model whose X-derivative is wrong, before any number is shown."""

import numpy as np
import pymc as pm
import pytensor.tensor as pt
import pytest

from placement.api import Problem, gradient
from placement.errors import PlacementError
from placement.importance import ISConfig
from placement.model import from_pymc

KNOT = 5.0
X0 = np.array([1.0, 2.5, 4.0, KNOT, 6.5, 8.0, 9.0])  # one point sits exactly on the hinge
Y0 = 0.3 + 0.8 * np.maximum(X0 - KNOT, 0.0) + np.array([0.1, -0.2, 0.05, 0.0, 0.15, -0.1, 0.2])
CFG = ISConfig(num_samples=2048, adapt_samples=1024)


def hinge_model(hidden: bool) -> pm.Model:
    """Linear regression on the feature max(x - knot, 0). ``hidden``: written as a switch on
    x >= knot, whose compiled derivative at x == knot is the right slope (1) while the
    function has a kink there (finite differences see 1/2); else a smooth softplus feature."""
    with pm.Model() as m:
        Xd = pm.Data("X", X0)
        yd = pm.Data("y", Y0)
        a = pm.Normal("a", 0.0, 2.0)
        b = pm.Normal("b", 0.0, 2.0)
        sigma = pm.HalfNormal("sigma", 1.0)
        feat = pt.switch(pt.ge(Xd, KNOT), Xd - KNOT, 0.0) if hidden else pt.softplus(4.0 * (Xd - KNOT)) / 4.0
        pm.Normal("y_obs", mu=a + b * feat, sigma=sigma, observed=yd)
        pm.Deterministic("slope", b)
    return m


def test_a_hidden_non_differentiable_operation_stops_with_one_clear_error():
    problem = Problem("hinge", from_pymc(hinge_model(hidden=True), "slope"))
    with pytest.raises(PlacementError) as err:
        gradient(problem, CFG)
    msg = str(err.value)
    assert "self-check failed" in msg and "d log p / dX" in msg and "gradient_check=untrusted" in msg
    assert "kink" in msg  # told apart from a wrong derivative (one-sided differences disagree)


def test_opting_out_runs_but_marks_every_estimate_untrusted():
    problem = Problem("hinge", from_pymc(hinge_model(hidden=True), "slope"))
    est = gradient(problem, CFG, gradient_check="untrusted")
    d = est.diagnostics
    assert not d["trusted"] and any("self-check failed" in w for w in d["warnings"])
    assert d["attempts"] == 1  # a retry cannot fix the model: none is made


def test_a_smooth_model_passes_the_check():
    problem = Problem("smooth", from_pymc(hinge_model(hidden=False), "slope"))
    est = gradient(problem, CFG)
    d = est.diagnostics
    assert d["gradient_check"] == "passed" and d["gradient_check_worst"] < 1e-4
    assert np.all(np.isfinite(est.grad))


def test_rounding_noise_of_a_large_gp_is_not_taken_for_a_kink():
    """The seed GP's gp_mu at n = 200 barely moves with X (dF/dX ~ 1e-8 along a direction), so the
    finite differences are rounding noise (~1e-7): the check must pass them, at every direction set.
    With the noise floor from one comparison only, 8 of 10 direction sets failed ("a kink")."""
    import jax
    import jax.numpy as jnp

    from placement import problems
    from placement.gradcheck import check_gradients, make_derivatives, make_values

    jm = from_pymc(problems.seed_gp(n=200), "gp_mu")
    thetas = np.log([5.0, 8.0, 0.02]) + 0.1 * np.random.default_rng(0).normal(size=(3, 3))
    X, y = jnp.asarray(jm.X), jnp.asarray(jm.y)
    s, df = make_derivatives(jm)(jnp.asarray(thetas), X, y)
    values = make_values(jm)
    for k in range(10):
        r = check_gradients(values, jm, thetas, s, df, X, y, jax.random.PRNGKey(k))
        assert r.problem is None, (k, r.problem)
