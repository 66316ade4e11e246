"""The Laplace fit (importance pilot, quadrature grids, sampler=map) on a Gaussian posterior,
where it is exact: mode = posterior mean, covariance = posterior covariance (tests/conjugate.py)."""

import jax
import jax.numpy as jnp
import numpy as np

from conjugate import build, features_np
from placement.laplace import make_laplace
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

