"""The Laplace fit (importance pilot, quadrature grids, sampler=map) on a Gaussian posterior,
where it is exact: mode = posterior mean, covariance = posterior covariance (tests/conjugate.py)."""

import jax
import jax.numpy as jnp
import numpy as np

from conjugate import build, features_np
from placement.laplace import hessian_by_differences, make_laplace
from placement.model import from_pymc


def test_laplace_fit_is_the_gaussian_posterior_of_the_conjugate_model():
    prior_sd, noise = 1.0, 0.5
    jm = from_pymc(build(prior_sd=prior_sd, noise=noise), "f")
    X, y = jnp.asarray(jm.X), jnp.asarray(jm.y)
    Phi = np.asarray(features_np(X))
    S = np.linalg.inv(np.eye(3) / prior_sd**2 + Phi.T @ Phi / noise**2)
    m = S @ Phi.T @ np.asarray(y) / noise**2
    fit = make_laplace(jm.logdensity)(jax.random.key(0), jnp.asarray(jm.initial_point), X, y)
    assert bool(fit.converged)
    np.testing.assert_allclose(np.asarray(fit.mode), m, rtol=0, atol=1e-8)
    np.testing.assert_allclose(np.asarray(fit.cov), S, rtol=1e-7, atol=1e-10)


def test_hessian_by_differences_matches_autodiff_on_a_gp(seed_jm):
    """On the seed GP (curvature varies with theta): within 1e-6 relative of jax.hessian."""
    X, y = jnp.asarray(seed_jm.X), jnp.asarray(seed_jm.y)
    exact_of = jax.jit(jax.hessian(seed_jm.logdensity))
    approx_of = jax.jit(lambda t, X, y: hessian_by_differences(seed_jm.logdensity, t, X, y))
    for shift in (0.0, 0.7, -0.5):
        theta = jnp.asarray(seed_jm.initial_point) + shift
        exact, approx = np.asarray(exact_of(theta, X, y)), np.asarray(approx_of(theta, X, y))
        assert np.max(np.abs(approx - exact)) <= 1e-6 * np.max(np.abs(exact)), (approx, exact)
