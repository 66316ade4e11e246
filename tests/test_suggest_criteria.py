"""The criteria ek_variance and hedged_variance, the fantasies' sources
and the kernel options, against NumPy written independently of placement.suggest."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import placement  # noqa: F401
from placement import gpjax
from placement.kernels import KERNELS
from placement.suggest import fantasy_normals, grid_points, make_criterion
from placement.suggest.criteria import HEDGE, ek_terms
from placement.suggest.kernel import for_bounds, kmat

JITTER = 1e-9


def _matern52(A, B, ls, eta):
    r = np.sqrt((((A[:, None, :] - B[None, :, :]) / ls) ** 2).sum(-1))
    return eta**2 * (1 + np.sqrt(5) * r + 5 / 3 * r**2) * np.exp(-np.sqrt(5) * r)


def _var(X, G, ls, eta, sigma):
    K = _matern52(X, X, ls, eta) + (sigma**2 + JITTER) * np.eye(len(X))
    Kg = _matern52(X, G, ls, eta)
    return eta**2 - np.einsum("ig,ig->g", Kg, np.linalg.solve(K, Kg))


def _setup(M, n=6, seed=0):
    rng = np.random.default_rng(seed)
    Xn = rng.uniform(0, 1, (n, 1))
    yn = np.sin(6 * Xn[:, 0])
    hyper = (rng.uniform(0.2, 0.4, (M, 1)), rng.uniform(0.8, 1.2, M), rng.uniform(0.05, 0.2, M))
    return Xn, yn, grid_points(1, 32), hyper


def test_every_hyperparameter_draw_sources_as_many_fantasies():
    """J is rounded up to a multiple of M (16 fantasies, 32 draws -> 32), so fantasy j comes
    from draw j mod M and every draw sources the same number."""
    assert fantasy_normals(16, 32, 3, 0).shape == (32, 3)
    assert fantasy_normals(16, 1, 3, 0).shape == (16, 3)
    assert fantasy_normals(20, 8, 2, 0).shape == (24, 2)


def test_hedged_variance_is_the_mean_log_integrated_variance_over_scaled_length_scales():
    Xn, yn, G, hyper = _setup(M=2)
    B = np.array([[0.15], [0.7]])
    crit, now = make_criterion("hedged_variance", "matern52", Xn, yn, G, hyper, np.zeros((2, 2)))
    ell, eta, sigma = hyper
    D = np.vstack([Xn, B])
    want = np.mean([np.log(np.mean(_var(D, G, ell[m] * c, eta[m], sigma[m]))) for c in HEDGE for m in range(2)])
    want_now = np.mean([np.log(np.mean(_var(Xn, G, ell[m] * c, eta[m], sigma[m]))) for c in HEDGE for m in range(2)])
    assert float(crit(jnp.asarray(B))) == pytest.approx(want, rel=1e-8)
    assert float(now()) == pytest.approx(want_now, rel=1e-8)


def _log_prior_hessian(theta):
    from placement.suggest.hyper import _log_prior

    return np.asarray(jax.hessian(_log_prior)(jnp.asarray(theta)))


def test_ek_correction_matches_finite_differences_of_the_kriging_weights():
    """tr(I^-1 V): V_pq = (dlam/dtheta_p)^T K (dlam/dtheta_q), lam = K^-1 k_G, I the Fisher
    information 1/2 tr(K^-1 K_p K^-1 K_q) minus the prior's Hessian; all derivatives here by
    central differences in NumPy."""
    rng = np.random.default_rng(3)
    D, G = rng.uniform(0, 1, (7, 2)), grid_points(2, 16)
    theta = np.log(np.array([0.3, 0.5, 1.1, 0.1]))
    p, h = len(theta), 1e-5

    def K_of(t):
        return _matern52(D, D, np.exp(t[:2]), np.exp(t[2])) + (np.exp(2 * t[3]) + JITTER) * np.eye(len(D))

    def lam_of(t):
        return np.linalg.solve(K_of(t), _matern52(D, G, np.exp(t[:2]), np.exp(t[2])))

    E = np.eye(p) * h
    dK = [(K_of(theta + e) - K_of(theta - e)) / (2 * h) for e in E]
    dlam = [(lam_of(theta + e) - lam_of(theta - e)) / (2 * h) for e in E]
    K = K_of(theta)
    Ki = np.linalg.inv(K)
    F = np.array([[0.5 * np.trace(Ki @ dK[a] @ Ki @ dK[b]) for b in range(p)] for a in range(p)])
    Finv = np.linalg.inv(F - _log_prior_hessian(theta))
    corr = sum(Finv[a, b] * np.einsum("ig,ij,jg->g", dlam[a], K, dlam[b]) for a in range(p) for b in range(p))
    var, got = jax.jit(ek_terms, static_argnums=0)("matern52", jnp.asarray(D), jnp.asarray(G), jnp.asarray(theta))
    np.testing.assert_allclose(np.asarray(got), corr, rtol=1e-5, atol=1e-10)
    np.testing.assert_allclose(np.asarray(var), _var(D, G, np.exp(theta[:2]), np.exp(theta[2]), np.exp(theta[3])),
                               rtol=1e-8)
    assert corr.max() > 1e-3 * var.mean()  # the correction is not negligible here


def test_ek_variance_is_the_draw_average_of_plug_in_variance_plus_correction():
    Xn, yn, G, hyper = _setup(M=2)
    B = np.array([[0.15], [0.7]])
    crit, now = make_criterion("ek_variance", "matern52", Xn, yn, G, hyper, np.zeros((2, 2)))
    ell, eta, sigma = hyper

    terms = jax.jit(ek_terms, static_argnums=0)

    def ek(D):
        out = []
        for m in range(2):
            th = jnp.asarray(np.concatenate([np.log(ell[m]), [np.log(eta[m]), np.log(sigma[m])]]))
            v, c = terms("matern52", jnp.asarray(D), jnp.asarray(G), th)
            out.append(np.mean(np.asarray(v) + np.asarray(c)))
        return np.mean(out)

    assert float(crit(jnp.asarray(B))) == pytest.approx(ek(np.vstack([Xn, B])), rel=1e-10)
    assert float(now()) == pytest.approx(ek(Xn), rel=1e-10)
    g = np.asarray(jax.jit(jax.grad(crit))(jnp.asarray(B))).ravel()
    fd = [(float(crit(jnp.asarray(B) + 1e-6 * e)) - float(crit(jnp.asarray(B) - 1e-6 * e))) / 2e-6
          for e in np.eye(2)[:, :, None]]
    np.testing.assert_allclose(g, fd, rtol=1e-4, atol=1e-9)


def test_kernel_options_reach_the_criteria_on_the_normalised_scale():
    """period (data units) is divided by the span; alpha is passed through: kmat on
    normalised inputs equals the PyMC kernel on the raw ones with the same options."""
    X = np.random.default_rng(5).uniform(0, 10, (6, 1))
    b = np.array([[0.0, 10.0]])
    Xn = X / 10.0
    per = for_bounds("periodic", b, period=3.0)
    ref = 1.3**2 * KERNELS["periodic"](1, ls=0.8, period=3.0)(X).eval()
    np.testing.assert_allclose(np.asarray(kmat(per, jnp.asarray(Xn), jnp.asarray(Xn), 0.8, 1.3)), ref, rtol=1e-10)
    rq = for_bounds("ratquad", b, alpha=0.4)
    ref = KERNELS["ratquad"](1, ls=2.0, alpha=0.4)(X).eval()
    np.testing.assert_allclose(np.asarray(kmat(rq, jnp.asarray(Xn), jnp.asarray(Xn), 0.2, 1.0)), ref, rtol=1e-10)
    default = np.asarray(gpjax.kernel_matrix("ratquad", jnp.asarray(Xn), jnp.asarray(Xn), 0.2, 1.0))
    assert np.abs(default - ref).max() > 1e-3  # alpha = 2 would differ: the option is not dropped
