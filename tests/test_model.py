"""PyMC -> JAX export: agreement with PyMC's own compiled log density, and clear errors."""

import jax.numpy as jnp
import numpy as np
import pymc as pm
import pytest

from placement.errors import PlacementError
from placement.model import from_pymc
from placement.problems import gp_model, seed_data


def test_logdensity_matches_pymc_at_new_designs_and_data(seed_jm):
    X, y = seed_data()
    rng = np.random.default_rng(0)
    for _ in range(3):
        X2 = np.sort(rng.uniform(0, 10, 10))
        y2 = rng.normal(0, 3, 10)
        theta = rng.normal([1.0, 1.5, -1.0], 0.5)
        ref = gp_model(X2, y2)
        logp = ref.compile_logp()
        point = dict(zip(["ell_log__", "eta_log__", "sigma_log__"], theta))
        assert float(seed_jm.logdensity(jnp.asarray(theta), X2, y2)) == pytest.approx(float(logp(point)), rel=1e-9)
        f = ref.compile_fn(ref.replace_rvs_by_values([ref["gp_mu"]])[0], inputs=ref.value_vars, point_fn=False)
        assert float(seed_jm.objective(jnp.asarray(theta), X2, y2)) == pytest.approx(float(f(*theta)), rel=1e-9)


def test_log_density_and_likelihood_match_pymc_with_two_observed_variables_and_a_potential():
    """log p (every term, Jacobians included, a Potential too) and the likelihood (the observed
    variables' terms only) against PyMC's own compiled log densities, at random points."""
    X = np.linspace(0.0, 1.0, 6)
    with pm.Model() as m:
        Xd = pm.Data("X", X)
        yd = pm.Data("y", np.sin(3 * X))
        a = pm.Normal("a", 0.0, 1.0)
        s = pm.HalfNormal("s", 0.5)
        nu = pm.Gamma("nu", 2.0, 0.5)
        pm.Normal("obs1", a * Xd, s, observed=yd)
        pm.StudentT("obs2", nu=nu, mu=a, sigma=1.0, observed=np.array([0.3, -0.2]))
        pm.Potential("pen", -0.5 * a**2)
        pm.Deterministic("f", a * s)
    jm = from_pymc(m, "f")
    full = m.compile_logp()
    lik = m.compile_logp(vars=m.observed_RVs, jacobian=False)
    names = [v.name for v in m.value_vars]
    rng = np.random.default_rng(1)
    for _ in range(3):
        theta = rng.normal(size=jm.ndim)
        point = dict(zip(names, theta))
        args = (jnp.asarray(theta), jnp.asarray(X), jnp.asarray(np.sin(3 * X)))
        assert float(jm.logdensity(*args)) == pytest.approx(float(full(point)), rel=1e-10)
        assert float(jm.loglik(*args)) == pytest.approx(float(lik(point)), rel=1e-10)


def test_seed_data_reproduces_the_seed_script():
    n = 10
    X = np.linspace(0, 10, n)
    state = np.random.get_state()
    np.random.seed(2)
    K = (8.0**2 * pm.gp.cov.Matern52(1, 5.0))(X[:, None]).eval()
    f_true = np.random.multivariate_normal(np.zeros(n), K + 1e-8 * np.eye(n), 1).flatten()
    y = f_true + 0.02 * np.random.randn(n)
    np.random.set_state(state)
    X2, y2 = seed_data()
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_allclose(y, y2, rtol=0, atol=1e-12)


def _tiny(data_name="X", det_name="f"):
    with pm.Model() as m:
        X = pm.Data(data_name, np.linspace(0, 1, 4))
        y = pm.Data("y", np.zeros(4))
        a = pm.Normal("a")
        pm.Normal("obs", a * X, 1.0, observed=y)
        pm.Deterministic(det_name, a**2)
    return m


def test_missing_design_container_is_a_clear_error():
    with pytest.raises(PlacementError, match=r"no pm.Data container named 'X'.*containers in the model: Z, y"):
        from_pymc(_tiny(data_name="Z"), "f")


def test_missing_objective_is_a_clear_error():
    with pytest.raises(PlacementError, match=r"no variable named 'gp_mu'.*Deterministics in the model: f"):
        from_pymc(_tiny(), "gp_mu")


def test_discrete_parameter_is_rejected():
    with pm.Model() as m:
        pm.Data("X", np.zeros(3))
        pm.Poisson("k", 3.0)
        pm.Deterministic("f", pm.math.constant(1.0))
    with pytest.raises(PlacementError, match="discrete"):
        from_pymc(m, "f", observed=None)


def test_builder_module_in_the_working_folder_is_found(tmp_path, monkeypatch):
    """`placement gradient problem.builder=my_module:build_model` run from the module's folder:
    a console script does not put that folder on sys.path, so load_builder must."""
    import sys

    from placement.problems import load_builder

    (tmp_path / "builder_in_cwd_xyz.py").write_text("def build_model():\n    return 42\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    assert load_builder("builder_in_cwd_xyz:build_model")() == 42


def test_the_joint_terms_equal_separate_derivatives_and_are_not_used_once_replaced(seed_jm):
    """A draw's terms from the joint (log p, f) function (one forward pass, two reverse passes)
    equal the separate value-and-gradients of log p and f; a model whose objective was replaced
    does not use the stale pair (``paired`` is None) and gets the new objective's derivative."""
    import dataclasses

    import jax

    from placement import estimator
    from placement.model import paired

    jm = seed_jm
    assert paired(jm) is not None
    rng = np.random.default_rng(5)
    X, y = jnp.asarray(jm.X), jnp.asarray(jm.y)
    separate = dataclasses.replace(jm, logdensity_and_objective=None)
    for _ in range(3):
        theta = jnp.asarray(jm.initial_point + 0.3 * rng.normal(size=jm.ndim))
        Xd = X + 0.2 * jnp.asarray(rng.normal(size=X.shape))
        joint = estimator._one_terms(jm)(theta, Xd, y)
        apart = estimator._one_terms(separate)(theta, Xd, y)
        for a, b in zip(joint, apart):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12 * float(np.max(np.abs(b))))
    doubled = dataclasses.replace(jm, objective=lambda t, x, yy=None: 2.0 * jm.objective(t, x, yy))
    assert paired(doubled) is None
    theta = jnp.asarray(jm.initial_point)
    _, f2, df2, _ = estimator._one_terms(doubled)(theta, X, y)
    _, f1, df1, _ = estimator._one_terms(jm)(theta, X, y)
    np.testing.assert_allclose([f2, *np.ravel(df2)], [2 * f1, *np.ravel(2 * df1)], rtol=1e-12)
    assert jax.tree_util.tree_structure(joint) == jax.tree_util.tree_structure(apart)
