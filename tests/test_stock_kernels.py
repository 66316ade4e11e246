"""Models written the PyMC way (stock ``pm.gp.cov`` kernels) export with correct X-gradients.

The derivatives are the ones the estimator uses (``make_terms``: jitted reverse mode, where
the stock kernels' expanded-form distance went wrong), checked against finite differences
at many parameter values and against the same model built with ``placement.kernels``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pymc as pm
import pytest

import placement.kernels as pk
from placement.estimator import make_terms
from placement.gradcheck import check_gradients, make_values
from placement.model import from_pymc

XLA_OPTIMIZED = True  # the stock kernels' wrong d/dX appears only in optimised code (conftest.py)

RNG = np.random.default_rng(3)
X1 = np.sort(RNG.uniform(0, 10, 9))
X1[4] = X1[3]  # coincident points: where the expanded form is wrong
X2 = RNG.uniform(0, 5, (8, 2))
X2[5] = X2[2]
Y1, Y2 = np.sin(X1), np.sin(X2[:, 0]) * np.cos(X2[:, 1])

STOCK = {
    "expquad": (lambda d, ls: pm.gp.cov.ExpQuad(d, ls=ls), lambda d, ls: pk.ExpQuad(d, ls=ls)),
    "matern12": (lambda d, ls: pm.gp.cov.Matern12(d, ls=ls), lambda d, ls: pk.Matern12(d, ls=ls)),
    "matern32": (lambda d, ls: pm.gp.cov.Matern32(d, ls=ls), lambda d, ls: pk.Matern32(d, ls=ls)),
    "matern52": (lambda d, ls: pm.gp.cov.Matern52(d, ls=ls), lambda d, ls: pk.Matern52(d, ls=ls)),
    "ratquad": (lambda d, ls: pm.gp.cov.RatQuad(d, ls=ls, alpha=1.5), lambda d, ls: pk.RatQuad(d, ls=ls, alpha=1.5)),
    "periodic": (lambda d, ls: pm.gp.cov.Periodic(d, ls=ls, period=3.0), lambda d, ls: pk.Periodic(d, ls=ls, period=3.0)),
    # no placement.kernels twin: exp(-r/2), checked against finite differences only
    "exponential": (lambda d, ls: pm.gp.cov.Exponential(d, ls=ls), None),
}


def marginal(kernel, X, y):
    d = 1 if X.ndim == 1 else X.shape[1]
    with pm.Model() as m:
        Xd = pm.Data("X", X)
        yd = pm.Data("y", y)
        Xm = Xd[:, None] if X.ndim == 1 else Xd
        ell = pm.InverseGamma("ell", mu=1.5, sigma=0.8, shape=() if d == 1 else (d,))
        eta = pm.Exponential("eta", scale=2.0)
        sigma = pm.HalfNormal("sigma", 0.5)
        gp = pm.gp.Marginal(cov_func=eta**2 * kernel(d, ell))
        gp.marginal_likelihood("y_obs", X=Xm, y=yd, sigma=sigma)
        mu, var = gp._predict_at(Xm, diag=True)
        pm.Deterministic("f", mu.mean() + var.mean())
    return m


def prior_model(kernel, X, y, hilbert: bool):
    """A latent GP (pm.gp.Latent, or pm.gp.HSGP when ``hilbert``) with Normal observations."""
    d = 1 if X.ndim == 1 else X.shape[1]
    with pm.Model() as m:
        Xd = pm.Data("X", X)
        yd = pm.Data("y", y)
        Xm = Xd[:, None] if X.ndim == 1 else Xd
        ell = pm.InverseGamma("ell", mu=1.5, sigma=0.8, shape=() if d == 1 else (d,))
        if hilbert:
            f = pm.gp.HSGP(m=[12] * d, L=[12.0] * d, cov_func=kernel(d, ell)).prior("g", X=Xm)
        else:
            f = pm.gp.Latent(cov_func=kernel(d, ell)).prior("g", X=Xm, jitter=1e-6)
        pm.Normal("y_obs", mu=f, sigma=0.3, observed=yd)
        pm.Deterministic("f", (f**2).mean())
    return m


def derivatives(jm, thetas):
    _, _, df, s = make_terms(jm)(jnp.asarray(thetas), jnp.asarray(jm.X), jnp.asarray(jm.y))
    return np.asarray(s), np.asarray(df)


def thetas_for(jm, k=24, seed=0):
    rng = np.random.default_rng(seed)
    return jm.initial_point + rng.normal(size=(k, jm.ndim)) * np.where(np.arange(jm.ndim) < 4, 1.0, 0.3)


def assert_matches_finite_differences(jm, thetas):
    s, df = derivatives(jm, thetas)
    r = check_gradients(make_values(jm), jm, thetas, s, df, jm.X, jnp.asarray(jm.y), jax.random.PRNGKey(1), directions=2)
    assert r.problem is None, r.problem
    return s, df


CASES = [("marginal", name, d) for name in STOCK for d in (1, 2)]
CASES = [c for c in CASES if not (c[2] == 2 and c[1] in ("ratquad", "exponential"))]
CASES += [("latent", "matern52", 1), ("latent", "expquad", 2), ("hsgp", "matern52", 1), ("hsgp", "expquad", 2)]
BUILD = {"marginal": marginal,
         "latent": lambda k, X, y: prior_model(k, X, y, hilbert=False),
         "hsgp": lambda k, X, y: prior_model(k, X, y, hilbert=True)}
TWINS = {("marginal", "matern52", 1), ("marginal", "matern12", 2), ("marginal", "ratquad", 1), ("latent", "matern52", 1)}


@pytest.mark.parametrize("kind,name,d", CASES)
def test_stock_kernel_models_have_exact_x_gradients(kind, name, d):
    X, y = (X1, Y1) if d == 1 else (X2, Y2)
    stock, ours = STOCK[name]
    jm = from_pymc(BUILD[kind](stock, X, y), "f")
    if kind != "hsgp" and name != "periodic":
        assert jm.distances_rewritten >= 1  # the expanded-form distance was found and made exact
    thetas = thetas_for(jm)
    s, df = assert_matches_finite_differences(jm, thetas)
    if (kind, name, d) in TWINS:
        # the same model with placement.kernels; the stock kernels take sqrt(r2 + 1e-12), so
        # values differ at coincident points by ~1e-6 of the kernel, not by factors
        twin = from_pymc(BUILD[kind](ours, X, y), "f")
        s2, df2 = derivatives(twin, thetas)
        for a, b in ((s, s2), (df, df2)):
            scale = np.abs(b).max(axis=1, keepdims=True) + 1e-12
            np.testing.assert_allclose(a / scale, b / scale, atol=1e-3)


def test_without_the_rewrite_the_stock_gradient_is_wrong_and_the_self_check_says_so():
    """The subject of the rewrite exists: switched off, the stock Matern52 model's compiled
    d log p/dX is wrong at some parameter values and the self-check names it."""
    jm = from_pymc(marginal(STOCK["matern52"][0], X1, Y1), "f", exact_distances=False)
    thetas = thetas_for(jm, k=48)
    s, df = derivatives(jm, thetas)
    r = check_gradients(make_values(jm), jm, thetas, s, df, jm.X, jnp.asarray(jm.y), jax.random.PRNGKey(1), directions=2)
    assert r.problem is not None and "d log p / dX" in r.problem


def test_a_non_finite_draw_does_not_switch_the_self_check_off():
    """The same wrong derivative, with one more draw whose log density is not finite (a failed
    factorisation gives NaN): that draw's comparisons are skipped, the others still flag it
    (a NaN in the shared rounding floor once made every comparison pass)."""
    jm = from_pymc(marginal(STOCK["matern52"][0], X1, Y1), "f", exact_distances=False)
    thetas = thetas_for(jm, k=48)
    thetas = np.concatenate([thetas, np.full((1, jm.ndim), np.nan)])
    s, df = derivatives(jm, thetas)
    r = check_gradients(make_values(jm), jm, thetas, s, df, jm.X, jnp.asarray(jm.y), jax.random.PRNGKey(1), directions=2)
    assert r.problem is not None and "d log p / dX" in r.problem


def test_a_rewrite_that_changes_the_values_is_not_kept(monkeypatch):
    """The distance rewrite matches a pattern, so the export keeps it only where the rewritten
    graph has the original's values at the model's initial point. A rewrite that scales each
    output by 1.001 is refused (nothing rewritten, the values are the original model's); the
    real one is kept with the same values."""
    import placement.rewrites as rw

    model = marginal(STOCK["matern52"][0], X1, Y1)
    real = from_pymc(model, "f")
    assert real.distances_rewritten >= 1
    exact = rw.exact_distances
    monkeypatch.setattr(rw, "exact_distances", lambda outs: ([o * 1.001 for o in exact(outs)[0]], 4))
    wrong = from_pymc(model, "f")
    assert wrong.distances_rewritten == 0
    plain = from_pymc(model, "f", exact_distances=False)
    theta, X, y = jnp.asarray(real.initial_point), jnp.asarray(real.X), jnp.asarray(real.y)
    for jm in (real, wrong):
        for fn in ("logdensity", "objective"):
            np.testing.assert_allclose(getattr(jm, fn)(theta, X, y), getattr(plain, fn)(theta, X, y), rtol=1e-9)


def test_the_rewrite_check_evaluates_through_jax_when_an_op_has_no_python_implementation(monkeypatch):
    """The check's values come from PyTensor's Python linker; where an op has no Python
    implementation they come from JAX instead, with the same values."""
    import pytensor.compile.function as ptf
    import pytensor.tensor as pt
    from pytensor.graph.utils import MethodNotDefined

    from placement.model import _evaluate

    a, b = pt.dvector("a"), pt.dscalar("b")
    outs = [pt.sum(pt.exp(a) * b), pt.linalg.cholesky(pt.outer(a, a) + pt.eye(3))]
    args = [np.array([0.1, -0.4, 0.7]), 2.5]
    python = _evaluate([a, b], outs, args)

    def no_python(*_, **__):
        raise MethodNotDefined("perform")

    monkeypatch.setattr(ptf, "function", no_python)
    via_jax = _evaluate([a, b], outs, args)
    A = np.outer(args[0], args[0]) + np.eye(3)
    for got in (python, via_jax):
        assert float(got[0]) == pytest.approx(float(np.sum(np.exp(args[0]) * args[1])), rel=1e-12)
        np.testing.assert_allclose(np.asarray(got[1]), np.linalg.cholesky(A), rtol=1e-12)
