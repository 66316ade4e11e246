"""Design mode (y_mode): the predictive-mode estimate against closed forms, and bad input.

(a) linear-Gaussian model: E_y[Var(a . beta | y, X)] = a^T S(X) a in closed form; the objective
    (q - E[q | y, X])^2 depends on y, so every dy/dX term of the total derivative is exercised.
(b) a GP with tight hyperparameter priors: the expected integrated variance is the
    fixed-hyperparameter IMSE, which does not depend on y.
(c) the total derivative's dy/dX terms, fantasy by fantasy against the closed form of
    E[q | y_j(X), X]^2 (tests below: zeroing dy/dX, or cutting it from the log density alone, fails them).
(d) the relocation to the IMSE-optimal design is in experiments/design_mode.py (too slow here).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from placement import api, design, predictive
from placement.errors import PlacementError


def _z(est, exact, grad_exact):
    """Largest |error| / SE over F and every gradient component."""
    zF = abs(est.F - exact) / est.F_se
    zg = np.max(np.abs(np.asarray(est.grad) - grad_exact) / np.asarray(est.grad_se))
    return float(zF), float(zg)


def test_linear_gaussian_predictive_matches_closed_form():
    model = design.linear_gaussian()
    X = np.array([-0.7, -0.1, 0.3, 0.8])
    est = api.gradient(model, "post_var", X=X, y_mode="predictive", fantasies=2, sampler="importance",
                       num_samples=4096, aim_samples=1024, rel_se=0.0, seed=1)
    exact = float(design.linear_expected_variance(X))
    g_exact = np.asarray(jax.grad(design.linear_expected_variance)(jnp.asarray(X)))
    # the closed form's gradient agrees with its own central differences
    h = 1e-5
    fd = [(design.linear_expected_variance(X + h * e) - design.linear_expected_variance(X - h * e)) / (2 * h)
          for e in np.eye(4)]
    np.testing.assert_allclose(g_exact, fd, rtol=1e-6, atol=1e-10)
    assert est.trusted and est.diagnostics["y_mode"] == "predictive" and est.diagnostics["fantasies"] == 2
    assert est.F_se < 0.02 * exact and np.all(np.asarray(est.grad_se) < 0.15 * np.max(np.abs(g_exact)))
    zF, zg = _z(est, exact, g_exact)
    assert zF < 4.0 and zg < 4.0, (est.F, exact, est.grad, g_exact, est.grad_se)


def test_tight_gp_predictive_matches_fixed_hyperparameter_imse():
    model = design.tight_gp(prior_sd=0.001)
    X = np.array([0.3, 1.4, 2.2, 3.9, 4.6, 5.5, 6.8, 7.4, 8.9, 9.6])
    est = api.gradient(model, "integrated_variance", X=X, y_mode="predictive", fantasies=2, sampler="quadrature",
                       points=9, seed=0)
    exact = float(design.gp_imse(X))
    g_exact = np.asarray(jax.grad(design.gp_imse)(jnp.asarray(X)))
    assert est.trusted
    # SE capped, and the estimate within its SE plus the tight priors' own effect (width 0.1%)
    assert est.F_se < 0.01 * exact
    assert abs(est.F - exact) < 4 * est.F_se + 0.005 * exact, (est.F, exact, est.F_se)
    err = np.abs(np.asarray(est.grad) - g_exact)
    assert np.all(err < 4 * np.asarray(est.grad_se) + 0.01 * np.max(np.abs(g_exact))), (est.grad, g_exact)


def test_gp_fantasy_covariance_is_the_kernel():
    """The random-Fourier-feature function draws have covariance eta^2 k (+ noise on the diagonal)."""
    model = design.tight_gp(n=3, prior_sd=1e-6, x0=[1.0, 2.0, 4.5])
    from placement.model import from_pymc

    jm = from_pymc(model, "integrated_variance")
    fa = predictive.fantasies_for(model, jm, 2000, seed=3, features=256)
    ys = np.asarray(jax.vmap(lambda u: fa.y_of(u, jnp.asarray(jm.X)))(jnp.asarray(fa.u)))
    C = np.cov(ys.T)
    exact = np.asarray(predictive.gp_covariance("matern52", jnp.asarray(jm.X), 5.0, 8.0, 0.02))
    # 2000 draws: each entry's relative sd is about sqrt(2 / 2000) = 3%
    np.testing.assert_allclose(C, exact, rtol=0.12, atol=0.12 * 64)


# -- bad input: one PlacementError each, before any work ----------------------------------------
def test_unknown_y_mode():
    with pytest.raises(PlacementError, match="unknown y_mode 'dream'.*fixed, simulator, predictive"):
        api.gradient(design.linear_gaussian(), "post_var", y_mode="dream")


def test_unsupported_observed_distribution():
    import pymc as pm

    with pm.Model() as model:
        X = pm.Data("X", np.linspace(0, 1, 4))
        y = pm.Data("y", np.array([1, 0, 2, 1]))
        lam = pm.HalfNormal("lam")
        pm.Poisson("obs", lam * (1 + X), observed=y)
        pm.Deterministic("f", lam)
    with pytest.raises(PlacementError, match="cannot draw the observed Poisson.*Supported: Normal"):
        api.gradient(model, "f", y_mode="predictive")


def test_simulator_without_function():
    with pytest.raises(PlacementError, match="y_mode=simulator needs a function"):
        api.gradient(design.linear_gaussian(), "post_var", y_mode="simulator")


def test_config_y_mode_checked_before_the_builder():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"builder": "no_such_module:nothing", "y_mode": "sometimes"})
    with pytest.raises(PlacementError, match="unknown y_mode 'sometimes'"):
        api.build_problem(cfg, objective="f")


# -- expected information gain (placement.eig): PCE against the closed form -------------------
# Speed: eig.prepare draws the J x L contrastive parameters with pm.draw, one Python call per
# draw (~25 us each), so J = 400, L = 8192 spent ~90 s drawing 3.3 M prior draws and ~2 s on the
# estimate itself. Here the problem is built through the API at a small L (its contrastive draws
# checked against the prior), and the large-L estimate gets its contrastive draws from NumPy:
# beta ~ N(0, I) has no transform, so the flat unconstrained prior is exactly N(0, I_3), the
# distribution prepare draws from. The estimate still runs through api.gradient and EIGEngine.
def _eig_problem(L, seed, fantasies=400, L_api=64, **options):
    """The eig Problem as api.gradient builds it (fantasy_seed = seed), with contrastive L_api,
    then its (J, L_api, 3) prior draws checked and replaced by (J, L, 3) iid N(0, 1) draws."""
    import dataclasses

    from placement import eig

    model = design.linear_gaussian(split=bool(options.get("params")))
    problem = api.problem_from_model(model, "eig", y_mode="predictive", fantasies=fantasies, fantasy_seed=seed,
                                     objective_options={**options, "contrastive": L_api})
    c = problem.eig.contrastive
    assert c.shape == (fantasies, L_api, 3) and problem.eig.cfg.contrastive == L_api
    # prepare's draws are the prior N(0, I_3): moments within 5 SE (N = J L_api = 25600 per column),
    # uncorrelated, all distinct and none equal to a fantasy's theta0 (independent of the fantasies)
    flat = c.reshape(-1, 3)
    N = flat.shape[0]
    assert np.all(np.abs(flat.mean(0)) < 5 / np.sqrt(N)), flat.mean(0)
    assert np.all(np.abs(flat.var(0) - 1) < 5 * np.sqrt(2 / N)), flat.var(0)
    assert np.all(np.abs(np.corrcoef(flat.T)[np.triu_indices(3, 1)]) < 5 / np.sqrt(N))
    assert len(np.unique(flat[:, 0])) == N and not np.isin(np.asarray(problem.fantasies.theta0)[:, 0], flat[:, 0]).any()
    draws = np.random.default_rng([seed, 3]).standard_normal((fantasies, L, 3))
    return dataclasses.replace(problem, eig=problem.eig._replace(contrastive=draws, cfg=problem.eig.cfg._replace(
        contrastive=L)))


def test_eig_matches_closed_form_linear_gaussian():
    """At L = 8192 the PCE bias (measured: -0.14 nats at L = 512, -0.05 at 2048) is below the SE."""
    X = np.array([-0.7, -0.1, 0.3, 0.8])
    est = api.gradient(_eig_problem(8192, seed=3), X=X, seed=3)
    exact = float(design.linear_eig(X))
    g_exact = np.asarray(jax.grad(design.linear_eig)(jnp.asarray(X)))
    h = 1e-5
    fd = [(design.linear_eig(X + h * e) - design.linear_eig(X - h * e)) / (2 * h) for e in np.eye(4)]
    np.testing.assert_allclose(g_exact, fd, rtol=1e-6, atol=1e-10)
    assert est.diagnostics["sampler"] == "pce" and est.diagnostics["contrastive"] == 8192
    assert est.diagnostics["fantasies"] == 400 and not est.diagnostics["nuisance"]
    assert est.F_se < 0.03 * exact and np.all(np.asarray(est.grad_se) < 0.1 * np.max(np.abs(g_exact)))
    zF, zg = _z(est, exact, g_exact)
    assert zF < 4.0 and zg < 4.0, (est.F, exact, est.grad, g_exact, est.grad_se)


def test_eig_pce_is_a_lower_bound_at_small_L():
    model = design.linear_gaussian()
    X = np.array([-0.7, -0.1, 0.3, 0.8])
    est = api.gradient(model, "eig", X=X, y_mode="predictive", fantasies=400, objective_options={"contrastive": 8},
                       seed=3)
    assert est.F <= np.log(9.0) + 1e-12
    assert est.F + 4 * est.F_se < float(design.linear_eig(X))


def test_eig_about_a_subset_with_nuisance():
    X = np.array([-0.7, -0.1, 0.3, 0.8])
    est = api.gradient(_eig_problem(4096, seed=5, params=["b1"]), X=X, seed=5)
    exact = float(design.linear_eig_subset(X, [1]))
    g_exact = np.asarray(jax.grad(lambda x: design.linear_eig_subset(x, [1]))(jnp.asarray(X)))
    assert est.diagnostics["nuisance"] and est.diagnostics["contrastive"] == 4096 and est.F_se < 0.05 * exact
    zF, zg = _z(est, exact, g_exact)
    assert zF < 4.0 and zg < 4.0, (est.F, exact, est.grad, g_exact, est.grad_se)


def test_eig_needs_predictive_mode_and_known_params():
    with pytest.raises(PlacementError, match="objective=eig .* needs problem.y_mode=predictive"):
        api.gradient(design.linear_gaussian(), "eig")
    with pytest.raises(PlacementError, match="'gamma' is not a free variable"):
        api.gradient(design.linear_gaussian(), "eig", y_mode="predictive", objective_options={"params": ["gamma"]})


# -- the total derivative's dy/dX term, on objectives whose posterior mean depends on y -------
# Checked fantasy by fantasy: fantasy j's data are y_j(X) = phi(X) beta_j + noise z_j (beta_j from the
# prior, z_j fixed; predictive.normal_fantasies), so F_j(X) = E[f | y_j(X), X] has a closed form whose
# total derivative in X is exact, with no fantasy-to-fantasy noise. The design is closely spaced (the
# quadratic's curvature poorly known), where the dy/dX part of the gradient is large.
CLOSE = np.array([-0.3, -0.1, 0.1, 0.3])
NOISE = 0.3


def _sq_mean_of_fantasy(u, X):
    """(a . E[beta | y_j(X), X])^2 for fantasy u = (beta_j, z_j), written from the model alone (JAX)."""
    Phi = jnp.stack(design.features(X), axis=1)
    y = Phi @ u[:3] + NOISE * u[3:]
    mean = design.linear_posterior_cov(X, noise=NOISE) @ Phi.T @ y / NOISE**2
    return jnp.dot(jnp.asarray(design.LINEAR_A), mean) ** 2


def _exact_over_fantasies(u):
    """(mean_j F_j(X), mean_j dF_j/dX) at CLOSE, the total derivative through y_j(X)."""
    X = jnp.asarray(CLOSE)
    F = np.mean([float(_sq_mean_of_fantasy(jnp.asarray(uj), X)) for uj in u])
    g = np.mean([np.asarray(jax.grad(_sq_mean_of_fantasy, argnums=1)(jnp.asarray(uj), X)) for uj in u], axis=0)
    return F, g


def _without_dy_dX(problem, **cfg):
    """An engine for ``problem`` whose Jacobian of the fantasy y in X is zeroed (the broken subject)."""
    from placement.settings import sampler_config

    engine = api.make_engine(problem, sampler_config("importance", "gradient", **cfg))
    y_jac = engine._y_jac
    engine._y_jac = lambda u, X: (y_jac(u, X)[0], 0.0 * y_jac(u, X)[1])
    return engine


def test_predictive_total_derivative_of_a_function_of_the_data_is_exact():
    """f = E[q | y, X]^2, a function of (y, X) alone: every draw carries the same f, so the estimate is
    the pathwise df/dX + df/dy dy_j/dX exactly; without dy/dX it is the fixed-y derivative, far off."""
    cfg = dict(num_samples=256, aim_samples=256, rel_se=0.0)
    problem = api.problem_from_model(design.linear_gaussian(noise=NOISE), "sq_mean", y_mode="predictive", fantasies=3)
    est = api.gradient(problem, X=CLOSE, sampler="importance", seed=1, **cfg)
    F, g = _exact_over_fantasies(problem.fantasies.u)
    assert abs(est.F - F) < 1e-9 * abs(F) and np.allclose(est.grad, g, rtol=1e-7, atol=1e-9), (est.grad, g)
    assert np.linalg.norm(g) > 0.05  # not a trivial gradient
    broken = api.gradient(problem, engine=_without_dy_dX(problem, **cfg), X=CLOSE, sampler="importance", seed=1, **cfg)
    assert np.linalg.norm(np.asarray(broken.grad) - g) > 0.3 * np.linalg.norm(g), (broken.grad, g)


def test_predictive_total_derivative_needs_dy_dX():
    """f = q E[q | y, X], whose posterior mean is the same E[q | y, X]^2: the estimate (draw noise now,
    and the score term's d/dy log p dy/dX) is within 4 SE of the closed form's total derivative per
    fantasy, with the SE capped; with dy/dX zeroed it is more than 6 SE off."""
    cfg = dict(num_samples=4096, aim_samples=1024, rel_se=0.0)
    # one fantasy: its SE is then the draws' alone (over several it is their spread, which includes how
    # the fantasies' F_j differ: the right SE for E_y[F], not for this per-fantasy check)
    problem = api.problem_from_model(design.linear_gaussian(noise=NOISE), "q_times_mean", y_mode="predictive",
                                     fantasies=1)
    est = api.gradient(problem, X=CLOSE, sampler="importance", seed=1, **cfg)
    F, g = _exact_over_fantasies(problem.fantasies.u)
    assert np.linalg.norm(est.grad_se) < 0.05 * np.linalg.norm(g), (est.grad_se, g)  # measured 0.016-0.018
    zF, zg = _z(est, F, g)
    assert zF < 4.0 and zg < 4.0, (est.F, F, est.grad, g, est.grad_se)
    broken = api.gradient(problem, engine=_without_dy_dX(problem, **cfg), X=CLOSE, sampler="importance", seed=1, **cfg)
    assert np.max(np.abs(np.asarray(broken.grad) - g) / np.asarray(broken.grad_se)) > 6.0, (broken.grad, g)


# -- measured points: fantasies from the posterior predictive given them -----------------------
# The first k points are measured. Each fantasy keeps their observed y; theta0 comes from the
# posterior given them and the other points' y from the posterior predictive. Checked against
# the closed forms: the linear-Gaussian model's conjugate posterior, and a GP with its
# hyperparameters pinned (tight priors), whose predictive given the measured values is Gaussian.
def _moments_within(draws, mean, cov, *, k=4.0, var_rtol=0.15):
    """Each coordinate's sample mean within k SE of ``mean``, its variance within var_rtol."""
    draws = np.asarray(draws)
    se = np.sqrt(np.diag(cov) / len(draws))
    z = np.abs(draws.mean(0) - mean) / se
    assert np.all(z < k), (draws.mean(0), mean, z)
    np.testing.assert_allclose(draws.var(0), np.diag(cov), rtol=var_rtol)


def test_measured_linear_gaussian_fantasies_follow_the_posterior_given_the_measured_points():
    import pymc as pm

    from placement.model import from_pymc

    X = np.array([-0.8, -0.2, 0.5, 0.9, -0.5, 0.1, 0.7])
    k, noise = 4, 0.3
    y_m = np.array([0.9, -0.4, 0.3, 1.6])
    model = design.linear_gaussian(n=len(X), x0=X)
    with model:
        pm.set_data({"y": np.concatenate([y_m, np.zeros(len(X) - k)])})
    jm = from_pymc(model, "post_var")
    J = 1500
    fa = predictive.fantasies_for(model, jm, J, seed=5, measured=k)
    Phi = np.stack(design.features(X), axis=1)
    S = np.linalg.inv(np.eye(3) + Phi[:k].T @ Phi[:k] / noise**2)  # beta | y_m: N(mu, S), prior sd 1
    mu = S @ Phi[:k].T @ y_m / noise**2
    _moments_within(fa.theta0, mu, S)
    ys = np.asarray(jax.vmap(lambda u: fa.y_of(u, jnp.asarray(X)))(jnp.asarray(fa.u)))
    assert np.all(ys[:, :k] == y_m)  # the measured points keep their data
    _moments_within(ys[:, k:], Phi[k:] @ mu, Phi[k:] @ S @ Phi[k:].T + noise**2 * np.eye(len(X) - k))
    assert fa.measured == k and "posterior given the 4 measured points" in fa.detail


def test_measured_gp_fantasies_are_the_conditional_predictive():
    import pymc as pm

    from placement.model import from_pymc

    X = np.array([1.0, 2.5, 4.0, 2.0, 6.0, 9.0])
    k = 3
    y_m = np.array([3.0, -2.0, 5.0])
    model = design.tight_gp(n=len(X), prior_sd=1e-4, x0=X)
    with model:
        pm.set_data({"y": np.concatenate([y_m, np.zeros(len(X) - k)])})
    jm = from_pymc(model, "integrated_variance")
    fa = predictive.fantasies_for(model, jm, 1000, seed=3, features=2048, measured=k)
    ys = np.asarray(jax.vmap(lambda u: fa.y_of(u, jnp.asarray(X)))(jnp.asarray(fa.u)))
    assert np.all(ys[:, :k] == y_m)
    C = np.asarray(predictive.gp_covariance("matern52", jnp.asarray(X), 5.0, 8.0, 0.02))
    A = C[k:, :k] @ np.linalg.inv(C[:k, :k])
    cov = C[k:, k:] - A @ C[:k, k:]  # predictive given y_m: prior variance 64 shrunk to 0.04-38
    _moments_within(ys[:, k:], A @ y_m, cov)
    # the function draw moves smoothly with the planned points: dy/dX finite, zero on measured rows
    jac = np.asarray(jax.jacfwd(fa.y_of, argnums=1)(jnp.asarray(fa.u[0]), jnp.asarray(X)))
    assert np.all(np.isfinite(jac)) and not np.any(jac[:k]) and np.any(jac[k:, k:])


def test_measured_run_holds_the_measured_points_and_reports_them(tmp_path):
    """CLI: the seed problem with its first 6 points measured; a 2-step predictive run keeps them."""
    import json

    from inprocess import assert_ok, placement

    out = tmp_path / "out"
    r = placement("run", f"hydra.run.dir={out}", "problem.y_mode=predictive", "problem.measured=6",
                  "problem.fantasies=2", "steps=2", "plots=false", "sampler.num_samples=512",
                  "sampler.adapt_samples=512", "sampler.pilot_iters=2", "sampler.adapt_iters=2", "retry.max_retries=0")
    assert_ok(r)
    res = json.loads((out / "result.json").read_text())
    X, X0 = np.asarray(res["X"]), np.asarray(res["X0"])
    assert np.array_equal(X[:6], X0[:6]) and not np.array_equal(X[6:], X0[6:])
    assert res["y_mode"] == "predictive" and res["measured"] == 6 and res["fantasies"] == 2
    assert "given the 6 measured points" in res["fantasy_draw"]
    assert "first 6 points measured (held fixed)" in r.out


@pytest.mark.parametrize("kwargs,message", [
    ({"measured": 3}, "measured=3 needs y_mode=predictive"),
    ({"measured": 4, "y_mode": "predictive"}, "measured=4 leaves no point to plan.*at most 3"),
    ({"measured": -1, "y_mode": "predictive"}, "measured must be a whole number >= 0"),
    ({"measured": 1.5, "y_mode": "predictive"}, "measured must be a whole number"),
    ({"measured": True, "y_mode": "predictive"}, "measured must be a whole number"),
    ({"measured": "2", "y_mode": "predictive"}, "measured must be a whole number"),
])
def test_measured_bad_input(kwargs, message):
    with pytest.raises(PlacementError, match=message):
        api.gradient(design.linear_gaussian(), "post_var", **kwargs)


def test_measured_cli_value_is_checked_not_rounded(tmp_path):
    from inprocess import assert_clear_error, placement

    r = placement("gradient", f"hydra.run.dir={tmp_path / 'out'}", "problem.y_mode=predictive", "problem.measured=1.5")
    assert_clear_error(r, "measured must be a whole number")


def test_measured_points_need_finite_data_and_must_stay_in_a_given_design():
    """NaN is a fine placeholder for the planned points' y, not for a measured one; a design
    given with X must keep the measured points where they were measured."""
    import pymc as pm

    from placement.model import from_pymc

    X = np.array([-0.6, -0.2, 0.2, 0.6])
    model = design.linear_gaussian(n=4, x0=X)
    with model:
        pm.set_data({"y": np.array([0.5, -0.1, np.nan, np.nan])})
    jm = from_pymc(model, "post_var")
    fa = predictive.fantasies_for(model, jm, 4, seed=0, measured=2)
    ys = np.asarray(jax.vmap(lambda u: fa.y_of(u, jnp.asarray(X)))(jnp.asarray(fa.u)))
    assert np.isfinite(ys).all() and np.all(ys[:, :2] == [0.5, -0.1])
    with pytest.raises(PlacementError, match="the 3 measured points need finite observed values"):
        predictive.fantasies_for(model, jm, 4, seed=0, measured=3)
    with pytest.raises(PlacementError, match="first 2 points are measured at .* must keep them there"):
        predictive.check_measured_design(fa, X, X + 0.1)
    predictive.check_measured_design(fa, X, np.concatenate([X[:2], X[2:] + 0.1]))  # planned points may move
    with pytest.raises(PlacementError, match="must keep them there"):  # the API checks it before any sampling
        api.gradient(model, "post_var", X=X + 0.1, y_mode="predictive", measured=2, fantasies=2)


def test_newton_mode_leaves_a_non_concave_start():
    """Saddle-free steps: from where log p is convex along one axis, the mode is still found."""
    logp = lambda t: -jnp.log1p(t[0] ** 2) - 0.5 * t[1] ** 2  # noqa: E731  mode 0, -Hessian diag(2, 1)
    mode, cov = jax.jit(lambda t: predictive._newton_mode(logp, t))(jnp.array([3.0, 1.0]))
    np.testing.assert_allclose(mode, [0.0, 0.0], atol=1e-8)
    np.testing.assert_allclose(cov, np.diag([0.5, 1.0]), rtol=1e-6, atol=1e-9)
