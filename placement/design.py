"""Design-mode problems whose expected objective is known in closed form, and the closed forms.

- ``linear_gaussian``: y = phi(X) beta + N(0, noise^2), phi(x) = (1, x, x^2), beta ~ N(0, s^2 I).
  For q = a . beta the posterior covariance S(X) = (I / s^2 + phi^T phi / noise^2)^-1 does not
  depend on y, so the expected posterior variance of q is a^T S(X) a (``linear_expected_variance``)
  and the expected information gain about beta is 1/2 log det(I + s^2 phi^T phi / noise^2)
  (``linear_eig``); about some coordinates alone, 1/2 log det(s^2 I) / det(S_idx) (``linear_eig_subset``).
- ``tight_gp``: the seed's GP (Matern52 on [0, 10], grid-averaged predictive variance) with
  log-normal priors of width ``prior_sd`` around fixed hyperparameters (default: the seed's
  true ell = 5, eta = 8, sigma = 0.02). As the priors tighten, the expected integrated
  variance tends to the fixed-hyperparameter IMSE (``gp_imse``), which does not depend on y.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pymc as pm
import pytensor.tensor as pt

from placement.kernels import Matern52
from placement.predictive import kernel_of_r2
from placement.problems import domain_points

LINEAR_A = (1.0, 0.0, 1.0 / 3.0)  # q = a . beta: the mean of beta0 + beta1 x + beta2 x^2 over [-1, 1]


def features(X):
    """phi(x) = (1, x, x^2), (n, 3); works on NumPy, JAX and PyTensor arrays."""
    return [X * 0 + 1.0, X, X**2]


def linear_gaussian(n: int = 4, prior_sd: float = 1.0, noise: float = 0.3, a=LINEAR_A, x0=None,
                    split: bool = False) -> pm.Model:
    """The linear-Gaussian model (``split``: the coefficients as three scalar variables b0, b1,
    b2, so that some can be the parameters of interest and the rest nuisance). Deterministics: ``post_var`` = (q - E[q | y, X])^2, whose
    posterior mean is Var(q | y, X) = a^T S(X) a; ``q_sq`` = q^2, whose expected posterior mean
    is the prior's E[q^2] at every design; ``q_times_mean`` = q E[q | y, X], whose posterior
    mean E[q | y, X]^2 depends on y and has expectation s^2 |a|^2 - a^T S(X) a
    (``linear_expected_sq_mean``); ``sq_mean`` = E[q | y, X]^2 itself, a function of (y, X) alone,
    so its gradient in predictive mode is all pathwise (df/dX + df/dy dy/dX, no score term) and
    has the same expectation; ``q`` = a . beta."""
    X0 = np.linspace(-0.6, 0.6, n) if x0 is None else np.asarray(x0, dtype=np.float64)
    a = np.asarray(a, dtype=np.float64)
    with pm.Model() as model:
        Xd = pm.Data("X", X0)
        yd = pm.Data("y", np.zeros_like(X0))
        Phi = pt.stack([pt.ones_like(Xd), Xd, pt.square(Xd)], axis=1)
        if split:
            beta = pt.stack([pm.Normal(f"b{i}", 0.0, prior_sd) for i in range(3)])
        else:
            beta = pm.Normal("beta", 0.0, prior_sd, shape=3)
        pm.Normal("y_obs", pt.dot(Phi, beta), noise, observed=yd)
        prec = pt.eye(3) / prior_sd**2 + pt.dot(Phi.T, Phi) / noise**2
        mean = pt.linalg.solve(prec, pt.dot(Phi.T, yd) / noise**2, assume_a="pos")
        q = pt.dot(a, beta)
        pm.Deterministic("q", q)
        pm.Deterministic("post_var", pt.square(q - pt.dot(a, mean)))
        pm.Deterministic("q_sq", pt.square(q))
        pm.Deterministic("q_times_mean", q * pt.dot(a, mean))
        pm.Deterministic("sq_mean", pt.square(pt.dot(a, mean)))
    return model


def linear_posterior_cov(X, prior_sd: float = 1.0, noise: float = 0.3):
    """S(X) = (I / s^2 + phi^T phi / noise^2)^-1 (JAX)."""
    Phi = jnp.stack(features(jnp.asarray(X)), axis=1)
    return jnp.linalg.inv(jnp.eye(3) / prior_sd**2 + Phi.T @ Phi / noise**2)


def linear_expected_variance(X, prior_sd: float = 1.0, noise: float = 0.3, a=LINEAR_A):
    """E_y[Var(a . beta | y, X)] = a^T S(X) a (JAX, differentiable in X)."""
    a = jnp.asarray(a)
    return a @ linear_posterior_cov(X, prior_sd, noise) @ a


def linear_expected_sq_mean(X, prior_sd: float = 1.0, noise: float = 0.3, a=LINEAR_A):
    """E_y[E[q | y, X]^2] = Var(q) - E_y[Var(q | y, X)] = s^2 |a|^2 - a^T S(X) a (JAX)."""
    a = jnp.asarray(a)
    return prior_sd**2 * a @ a - linear_expected_variance(X, prior_sd, noise, a)


def linear_eig(X, prior_sd: float = 1.0, noise: float = 0.3):
    """Expected information gain about beta: 1/2 log det(I + s^2 phi^T phi / noise^2) (JAX)."""
    Phi = jnp.stack(features(jnp.asarray(X)), axis=1)
    return 0.5 * jnp.linalg.slogdet(jnp.eye(3) + prior_sd**2 * Phi.T @ Phi / noise**2)[1]


def linear_eig_subset(X, idx, prior_sd: float = 1.0, noise: float = 0.3):
    """Expected information gain about beta[idx] alone (the rest nuisance): the log ratio of the
    prior and posterior covariance determinants of those coordinates, 1/2 log det(s^2 I) / det(S_idx) (JAX)."""
    idx = np.asarray(idx)
    S = linear_posterior_cov(X, prior_sd, noise)[np.ix_(idx, idx)]
    return 0.5 * (idx.size * np.log(prior_sd**2) - jnp.linalg.slogdet(S)[1])


def tight_gp(n: int = 10, ell: float = 5.0, eta: float = 8.0, sigma: float = 0.02, prior_sd: float = 0.01,
             kernel: Callable = Matern52, domain=(0.0, 10.0), grid: int = 40, x0=None) -> pm.Model:
    """A 1-d GP like the seed's with log-normal priors of sd ``prior_sd`` (log scale) around
    (ell, eta, sigma). Deterministics: ``integrated_variance`` (mean predictive variance of f
    over ``grid`` domain midpoints), ``pred_mu``, ``pred_var``."""
    X0 = np.linspace(domain[0], domain[1], n) if x0 is None else np.asarray(x0, dtype=np.float64)
    G = domain_points(domain, grid)[:, None]
    with pm.Model() as model:
        Xd = pm.Data("X", X0)
        yd = pm.Data("y", np.zeros_like(X0))
        Xm = Xd[:, None]
        ell_ = pm.LogNormal("ell", mu=np.log(ell), sigma=prior_sd)
        eta_ = pm.LogNormal("eta", mu=np.log(eta), sigma=prior_sd)
        sigma_ = pm.LogNormal("sigma", mu=np.log(sigma), sigma=prior_sd)
        cov = eta_**2 * kernel(1, ls=ell_)
        gp = pm.gp.Marginal(cov_func=cov)
        gp.marginal_likelihood("y_obs", X=Xm, y=yd, sigma=sigma_)
        L = pt.linalg.cholesky(cov(Xm) + sigma_**2 * pt.eye(X0.shape[0]))
        Kxg = cov(Xm, pt.as_tensor(G))
        V = pt.linalg.solve_triangular(L, Kxg, lower=True)
        alpha = pt.linalg.solve_triangular(L, yd, lower=True)
        gvar = eta_**2 - pt.sum(pt.square(V), axis=0)
        pm.Deterministic("pred_mu", pt.dot(V.T, alpha))
        pm.Deterministic("pred_var", gvar)
        pm.Deterministic("integrated_variance", gvar.mean())
    return model


def gp_imse(X, ell: float = 5.0, eta: float = 8.0, sigma: float = 0.02, kernel: str = "matern52",
            domain=(0.0, 10.0), grid: int = 40):
    """Fixed-hyperparameter IMSE: mean over the domain midpoints of the GP predictive
    variance eta^2 - k_gX (K + sigma^2 I)^-1 k_Xg (JAX, differentiable in X; 1-d)."""
    X = jnp.asarray(X)
    G = jnp.asarray(domain_points(domain, grid))
    K = eta**2 * kernel_of_r2(kernel, jnp.square((X[:, None] - X[None, :]) / ell)) + sigma**2 * jnp.eye(X.shape[0])
    Kxg = eta**2 * kernel_of_r2(kernel, jnp.square((X[:, None] - G[None, :]) / ell))
    L = jnp.linalg.cholesky(K)
    V = jax.scipy.linalg.solve_triangular(L, Kxg, lower=True)
    return jnp.mean(eta**2 - jnp.sum(V**2, axis=0))


def imse_optimal(n: int = 10, starts: int = 8, seed: int = 0, **kw) -> tuple[np.ndarray, float]:
    """The IMSE-optimal n-point design on the domain by L-BFGS-B on ``gp_imse`` (exact JAX
    gradients), best of ``starts`` starts (the even grid and jittered ones). Returns (X, IMSE)."""
    from scipy.optimize import minimize

    lo, hi = kw.get("domain", (0.0, 10.0))
    fun = jax.jit(jax.value_and_grad(lambda X: gp_imse(X, **kw)))
    rng = np.random.default_rng(seed)
    best = (None, np.inf)
    for s in range(starts):
        x0 = np.linspace(lo, hi, n) if s == 0 else np.sort(rng.uniform(lo, hi, n))
        res = minimize(lambda x: tuple(np.asarray(v, dtype=np.float64) for v in fun(jnp.asarray(x))), x0, jac=True,
                       method="L-BFGS-B", bounds=[(lo, hi)] * n, options={"maxiter": 2000, "gtol": 1e-12})
        if res.fun < best[1]:
            best = (np.sort(res.x), float(res.fun))
    return best
