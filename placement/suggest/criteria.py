"""Criteria of a candidate batch B (k, d), differentiable in B, to be minimised.

expected_total_variance: domain-averaged variance of the mixture predictive after adding
  B, *including* Var over hyperparameters of E[f | theta], with the hyperparameter
  posterior updated by fantasised observations at B (fixed normal draws, so fantasies move
  smoothly with B; the draws are reweighted by the fantasies' likelihood). Every draw
  sources the same number of fantasies (their count is a multiple of the draws').
integrated_variance: posterior-averaged variance at fixed hyperparameters.
max_variance; mutual_information (expected log-det information gain).
ek_variance: EK-style (Zhu & Stein 2006): per draw, the plug-in variance after the batch
  plus the hyperparameter-uncertainty correction tr(I^-1 Var(d f_hat / d theta)), where
  f_hat = lambda(theta)^T y is the kriging predictor on data + batch and I the Fisher
  information of data + batch plus the prior's curvature; domain-averaged.
hedged_variance: log of the integrated variance, averaged over the draws with each length
  scale also halved and doubled (HEDGE), so no single length scale dominates.

The data covariance is factorised once per draw (crit_data); a batch updates it by rank-k
Schur complements, O(n^2 k) per draw (ek_variance refactorises data + batch: O((n+k)^3)).
Pending points (suggested, not yet measured) join the data with their predictive mean
under each draw as the value ("kriging believer": the means stay put, the variances fall
as they will once the points are measured, and the hyperparameters do not move).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from placement import budget, gpjax
from placement.errors import PlacementError
from placement.suggest.kernel import kmat

JITTER = 1e-9  # added to sigma^2 on the covariance's diagonal in the criteria
HEDGE = (0.5, 1.0, 2.0)  # hedged_variance: length-scale factors per draw


class CritData(NamedTuple):
    """Everything a criterion reads besides the batch: runtime arrays, so one compiled
    search serves every data set of the same shapes. The data covariance is factorised once
    per hyperparameter draw, before the search (crit_data); a batch is scored through
    rank-k (Schur complement) updates of these, O(n^2 k) per draw."""

    X: jax.Array  # (n, d) normalised inputs (pending points included)
    y: jax.Array  # (M, n) standardised outputs per draw (pending: that draw's predictive mean)
    G: jax.Array  # (g, d) integration points in [0, 1]^d
    ell: jax.Array  # (M, d) hyperparameter draws
    eta: jax.Array  # (M,)
    sigma: jax.Array  # (M,)
    z: jax.Array  # (J, k) fixed normal draws for the fantasies
    Kinv: jax.Array  # (M, n, n) (K_nn + (sigma^2 + JITTER) I)^-1 per draw
    alpha: jax.Array  # (M, n) Kinv y
    WG: jax.Array  # (M, n, g) Kinv K_nG
    WGt: jax.Array  # (M, g, n) its transpose, stored: products keep their operands' layout
    mean_G: jax.Array  # (M, g) posterior mean at G from the data in hand
    var_G: jax.Array  # (M, g) posterior variance at G (not floored)


def _factor(kernel, X, G, y, l, e, s):
    K = kmat(kernel, X, X, l, e) + (s**2 + JITTER) * jnp.eye(X.shape[0])
    _, Kinv = gpjax.chol_inverse(K)
    KG = kmat(kernel, X, G, l, e)
    alpha = Kinv @ y
    WG = Kinv @ KG
    return Kinv, alpha, WG, WG.T, KG.T @ alpha, e**2 - jnp.sum(KG * WG, 0)


@functools.lru_cache(maxsize=16)
def _factoriser(kernel):
    """Jitted per-draw factorisation, one draw at a time (lax.map: no (M, n, n, d) temporaries)."""
    return jax.jit(lambda X, G, Y, ell, eta, sigma: jax.lax.map(
        lambda a: _factor(kernel, X, G, *a), (Y, ell, eta, sigma)))


def _batch_pred(kernel, data: CritData, B):
    """Per draw: mean (M, k) and covariance (M, k, k) of noisy observations at B given the
    data, and K_nB (M, n, k). approx=hsgp data (suggest/hsgp.py) score B on their own."""
    if hasattr(data, "batch_pred"):
        return data.batch_pred(kernel, B)

    def one(l, e, s, Kinv, alpha):
        Kb = kmat(kernel, data.X, B, l, e)
        C = kmat(kernel, B, B, l, e) - gpjax.quad_form(Kinv, Kb) + (s**2 + JITTER) * jnp.eye(B.shape[0])
        return Kb.T @ alpha, 0.5 * (C + C.T), Kb

    return jax.vmap(one)(data.ell, data.eta, data.sigma, data.Kinv, data.alpha)


def _update(kernel, data: CritData, B, C_b, Kb):
    """Per draw: Q = K_GB - K_Gn Kinv K_nB (M, g, k), R = Q C_B^-1 (M, g, k) and the
    posterior variance at G after adding B (M, g): var_G - diag(Q C_B^-1 Q^T)."""
    if hasattr(data, "update"):
        return data.update(kernel, B, C_b, Kb)

    def one(l, e, WG, WGt, C, Kb, vG):
        Q = kmat(kernel, data.G, B, l, e) - gpjax.transposed_product(WG, WGt, Kb)
        R = jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(C), True), Q.T).T
        return R, jnp.maximum(vG - jnp.sum(R * Q, 1), 1e-12)

    return jax.vmap(one)(data.ell, data.eta, data.WG, data.WGt, C_b, Kb, data.var_G)


def _etv(kernel, B, data: CritData):
    M = data.eta.shape[0]
    logw = jnp.full(M, -jnp.log(M))
    mu_b, C_b, Kb = _batch_pred(kernel, data, B)  # (M, k), (M, k, k)
    J = data.z.shape[0]
    src = jnp.arange(J) % M  # J is a multiple of M (fantasy_normals): every draw sources J / M fantasies
    fant = mu_b[src] + jnp.einsum("jab,jb->ja", jnp.linalg.cholesky(C_b[src]), data.z)  # (J, k)
    ll = jax.vmap(lambda m, C: jax.vmap(lambda f: gpjax.mvn_logpdf(f, m, C))(fant))(mu_b, C_b)  # (M, J)
    W = jax.nn.softmax(logw[:, None] + ll, axis=0)  # (M, J): posterior weights given each fantasy
    R, var = _update(kernel, data, B, C_b, Kb)  # (M, g, k), (M, g)
    mean = data.mean_G[:, :, None] + jnp.einsum("mgk,mjk->mgj", R, fant[None] - mu_b[:, None, :])  # (M, g, J)
    m = jnp.einsum("mj,mgj->gj", W, mean)
    second = jnp.einsum("mj,mg->gj", W, var) + jnp.einsum("mj,mgj->gj", W, mean**2)
    return jnp.mean(second - m**2)


def _etv_now(kernel, data: CritData):
    mean, var = data.mean_G, jnp.maximum(data.var_G, 1e-12)
    return jnp.mean(jnp.mean(var + mean**2, 0) - jnp.mean(mean, 0) ** 2)


def _var_after(kernel, B, data: CritData):
    _, C_b, Kb = _batch_pred(kernel, data, B)
    return _update(kernel, data, B, C_b, Kb)[1]  # (M, g) per-draw variance at fixed hyperparameters


def _ivar(kernel, B, data):
    return jnp.mean(_var_after(kernel, B, data))


def _mvar(kernel, B, data):
    return jnp.max(jnp.mean(_var_after(kernel, B, data), 0))


def _neg_mi(kernel, B, data):
    _, C_b, _ = _batch_pred(kernel, data, B)
    logdet = jax.vmap(lambda C, s: jnp.linalg.slogdet(C / (s**2 + JITTER))[1])(C_b, data.sigma)
    return -0.5 * jnp.mean(logdet)


def _hedged(kernel, B, data):
    return jnp.mean(jnp.log(jnp.mean(_var_after(kernel, B, data), 1)))


def _var_now(data):
    return jnp.maximum(data.var_G, 1e-12)


def ek_terms(kernel, D, G, theta):
    """(plug-in variance (g,), correction (g,)) at G for design D (N, d) at unconstrained
    theta = (log ell (d), log eta, log sigma): the kriging variance, and
    tr(I^-1 V) with V_pq = (d lambda/d theta_p)^T K (d lambda/d theta_q), lambda = K^-1 k_G,
    I the Fisher information of noisy observations at D plus minus the prior's Hessian."""
    from placement.suggest.hyper import _log_prior

    d = D.shape[1]
    N = D.shape[0]

    def K_of(t):
        return kmat(kernel, D, D, jnp.exp(t[:d]), jnp.exp(t[d])) + (jnp.exp(2.0 * t[d + 1]) + JITTER) * jnp.eye(N)

    def kG_of(t):
        return kmat(kernel, D, G, jnp.exp(t[:d]), jnp.exp(t[d]))

    K, kG = K_of(theta), kG_of(theta)
    L = jnp.linalg.cholesky(K)
    solve = lambda A: jax.scipy.linalg.cho_solve((L, True), A)  # noqa: E731
    lam = solve(kG)  # (N, g)
    var = jnp.maximum(jnp.exp(2.0 * theta[d]) - jnp.sum(kG * lam, 0), 1e-12)
    dK = jax.jacfwd(K_of)(theta)  # (N, N, p)
    dk = jax.jacfwd(kG_of)(theta)  # (N, g, p)
    P = jnp.moveaxis(solve(dK.reshape(N, -1)).reshape(N, N, -1), 2, 0)  # (p, N, N): K^-1 dK_p
    F = 0.5 * jnp.einsum("pij,qji->pq", P, P) - jax.hessian(_log_prior)(theta)
    U = jnp.moveaxis(dk, 2, 0) - jnp.einsum("pij,jg->pig", jnp.moveaxis(dK, 2, 0), lam)  # (p, N, g)
    V = jnp.moveaxis(solve(jnp.moveaxis(U, 0, 1).reshape(N, -1)).reshape(N, U.shape[0], -1), 1, 0)  # K^-1 U_p
    Finv = jnp.linalg.inv(0.5 * (F + F.T))
    corr = jnp.einsum("pq,png,qng->g", Finv, U, V)
    return var, jnp.maximum(corr, 0.0)


def _ek_design(kernel, D, data):
    if hasattr(data, "ek_design"):
        return data.ek_design(kernel, D)

    def one(l, e, s):
        var, corr = ek_terms(kernel, D, data.G, jnp.concatenate([jnp.log(l), jnp.log(e)[None], jnp.log(s)[None]]))
        return jnp.mean(var + corr)

    return jnp.mean(jax.vmap(one)(data.ell, data.eta, data.sigma))


def _ek(kernel, B, data):
    return _ek_design(kernel, jnp.concatenate([data.X, B]), data)


def _identity(ell, eta, sigma):
    return ell, eta, sigma


def _hedge_draws(ell, eta, sigma):
    """Each draw once per length-scale factor in HEDGE."""
    c = np.asarray(HEDGE)
    M = eta.shape[0]
    return ((ell[None] * c[:, None, None]).reshape(len(c) * M, -1), np.tile(eta, len(c)), np.tile(sigma, len(c)))


class Criterion(NamedTuple):
    """value(kernel, B, data) -> scalar to minimise; now(kernel, data) -> its value without
    a batch; draws(ell, eta, sigma) -> the hyperparameter draws it averages over."""

    value: Callable
    now: Callable
    draws: Callable = _identity
    sign: float = 1.0  # reported value = sign * minimised value


CRITERIA_TABLE = {
    "expected_total_variance": Criterion(_etv, _etv_now),
    "integrated_variance": Criterion(_ivar, lambda kernel, data: jnp.mean(_var_now(data))),
    "max_variance": Criterion(_mvar, lambda kernel, data: jnp.max(jnp.mean(_var_now(data), 0))),
    "mutual_information": Criterion(_neg_mi, lambda kernel, data: jnp.asarray(0.0), sign=-1.0),
    "ek_variance": Criterion(_ek, lambda kernel, data: _ek_design(kernel, data.X, data)),
    "hedged_variance": Criterion(_hedged, lambda kernel, data: jnp.mean(jnp.log(jnp.mean(_var_now(data), 1))),
                                 _hedge_draws),
}
CRITERIA = tuple(CRITERIA_TABLE)


def criterion(kind: str) -> Criterion:
    if kind not in CRITERIA_TABLE:
        raise PlacementError(f"unknown criterion {kind!r}; choose one of {', '.join(CRITERIA)}.")
    return CRITERIA_TABLE[kind]


def fantasy_normals(num_fantasies: int, num_draws: int, k: int, seed: int):
    """(J, k) standard normals for the fantasies, J = num_fantasies rounded up to a multiple
    of num_draws, so every hyperparameter draw sources the same number of fantasies."""
    J = int(num_draws) * -(-int(num_fantasies) // int(num_draws))
    return np.random.default_rng(seed).normal(size=(J, int(k)))


def crit_data(Xn, yn, G, hyper, z, kernel="matern52", pending=None) -> CritData:
    """The criteria's runtime arrays, with the data covariance factorised once per draw.
    pending (p, d): points to be measured, joined to the data at their predictive mean."""
    ell, eta, sigma = hyper
    f = lambda a: jnp.asarray(a, dtype=jnp.float64)  # noqa: E731
    X, y, G, eta, sigma = f(Xn), f(yn), f(G), f(eta).reshape(-1), f(sigma).reshape(-1)
    ell = f(ell).reshape(eta.shape[0], -1)
    Y = jnp.broadcast_to(y, (eta.shape[0], y.shape[0]))
    if pending is not None and len(pending):
        P = f(pending).reshape(-1, X.shape[1])
        mean_P, _ = _mixture_fn(kernel)(X, y, P, ell, eta, sigma)  # (M, p) each draw's predictive mean
        X, Y = jnp.concatenate([X, P]), jnp.concatenate([Y, mean_P], 1)
    return CritData(X, Y, G, ell, eta, sigma, f(z), *_factorised(kernel, X, G, Y, ell, eta, sigma))


FACTOR_WORK = 9e9  # draws x n^3 per compiled call of the factorisation: about 1 s on one CPU core


def _factorised(kernel, X, G, Y, ell, eta, sigma):
    """The per-draw factorisations, in compiled calls of about a second (m draws each, the last
    padded by repeating its first draw): Ctrl-C, SIGTERM and max_seconds act between calls
    (n = 1000 points and 32 draws took 3.5 s as one call). Below n ~ 650 one call does all."""
    fac = _factoriser(kernel)
    M, n = int(eta.shape[0]), int(X.shape[0])
    m = int(min(M, max(1, 1 << int(np.log2(max(1.0, FACTOR_WORK / float(n) ** 3))))))
    if m >= M:
        return fac(X, G, Y, ell, eta, sigma)
    return budget.over_chunks(lambda j: fac(X, G, Y[j], ell[j], eta[j], sigma[j]), M, m,
                              "hyperparameter draws' data covariances factorised")


def make_criterion(kind, kernel, Xn, yn, G, hyper, z, pending=None):
    """criterion(B (k, d)) -> scalar to minimise, and current() -> its value without a batch
    (hyper: the posterior draws; the criterion's own expansion of them is applied here)."""
    c = criterion(kind)
    data = crit_data(Xn, yn, G, c.draws(*(np.asarray(h) for h in hyper)), z, kernel, pending)
    return jax.jit(lambda B: c.value(kernel, B, data)), jax.jit(lambda: c.now(kernel, data))


def batch_mixture(kernel, data: CritData, B):
    """mixture_predictive at the batch B from the factorisations in data (no new n x n
    work): mean and sd of f at B under the equal mixture over the draws."""
    mean, var = _batch_mixture_fn(kernel)(data, jnp.asarray(B, dtype=jnp.float64))
    mean, var = np.asarray(mean), np.asarray(var)
    return mean.mean(0), np.sqrt(var.mean(0) + mean.var(0))


@functools.lru_cache(maxsize=16)
def _batch_mixture_fn(kernel):
    def fn(data, B):
        mu, C, _ = _batch_pred(kernel, data, B)
        var = jnp.diagonal(C, axis1=1, axis2=2) - (data.sigma**2 + JITTER)[:, None]
        return mu, jnp.maximum(var, 1e-12)

    return jax.jit(fn)


def mixture_predictive(kernel, Xn, yn, Gn, hyper):
    """Mean and sd at Gn of the equal mixture over the hyperparameter draws (one draw at a
    time, so no (M, n, n) temporaries)."""
    ell, eta, sigma = (jnp.asarray(h, dtype=jnp.float64) for h in hyper)
    X, y, G = (jnp.asarray(a, dtype=jnp.float64) for a in (Xn, yn, Gn))
    mean, var = _mixture_fn(kernel)(X, y, G, ell.reshape(eta.shape[0], -1), eta, sigma)
    mean, var = np.asarray(mean), np.asarray(var)
    return mean.mean(0), np.sqrt(var.mean(0) + mean.var(0))


def _posterior(kernel, X, y, G, l, e, s):
    K = kmat(kernel, X, X, l, e) + (s**2 + JITTER) * jnp.eye(X.shape[0])
    L = jnp.linalg.cholesky(K)
    Kg = kmat(kernel, X, G, l, e)
    A = jax.scipy.linalg.solve_triangular(L, Kg, lower=True)
    mean = Kg.T @ jax.scipy.linalg.cho_solve((L, True), y)
    return mean, jnp.maximum(e**2 - jnp.sum(A * A, axis=0), 1e-12)


@functools.lru_cache(maxsize=16)
def _mixture_fn(kernel):
    return jax.jit(lambda X, y, G, ell, eta, sigma: jax.lax.map(
        lambda a: _posterior(kernel, X, y, G, *a), (ell, eta, sigma)))
