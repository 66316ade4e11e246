"""Multivariate Student-t mixtures as importance proposals: density, smooth draws from the
unit cube (so randomised quasi-Monte Carlo points map to proposal draws without jumps
inside a component), and a weighted EM fit.

All functions are pure and jit-friendly; shapes: theta (N, p), K components.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammainc, gammaincc, gammaln, ndtri

Array = jax.Array


class Mixture(NamedTuple):
    means: Array  # (K, p)
    chols: Array  # (K, p, p) lower Cholesky factors of the scale matrices
    logw: Array  # (K,) log weights (logsumexp = 0)


def logpdf(mix: Mixture, theta: Array, df: float) -> Array:
    """log q(theta) (N,) of the t(df) mixture."""
    p = theta.shape[-1]

    def one(mean, chol, lw):
        z = jax.scipy.linalg.solve_triangular(chol, (theta - mean).T, lower=True).T
        q = jnp.sum(z**2, axis=-1)
        logdet = jnp.sum(jnp.log(jnp.diag(chol)))
        return (lw + gammaln((df + p) / 2) - gammaln(df / 2) - 0.5 * p * jnp.log(df * jnp.pi)
                - 0.5 * (df + p) * jnp.log1p(q / df) - logdet)

    return jax.scipy.special.logsumexp(jax.vmap(one)(mix.means, mix.chols, mix.logw), axis=0)


def gammaincinv(a: float, v: Array, iters: int = 40) -> Array:
    """x with P(a, x) = v (regularised lower incomplete gamma), smooth in v: Newton steps on
    log x for log P (v < 1/2) or log Q (v >= 1/2), from the larger of the Wilson-Hilferty
    and small-x starts (about 1e-14 relative)."""
    v = jnp.clip(v, 1e-300, 1 - 1e-16)
    lower = v < 0.5
    wh = a * (1 - 1 / (9 * a) + ndtri(v) * jnp.sqrt(1 / (9 * a))) ** 3
    small = jnp.exp((jnp.log(v) + gammaln(a + 1)) / a)  # P <= x^a / Gamma(a + 1): below the root
    logx = jnp.log(jnp.maximum(jnp.maximum(small, wh), 1e-300))
    target = jnp.where(lower, jnp.log(v), jnp.log1p(-v))

    def body(_, logx):
        x = jnp.exp(logx)
        val = jnp.where(lower, jnp.log(gammainc(a, x)), jnp.log(gammaincc(a, x)))
        logpdf_x = (a - 1) * logx - x - gammaln(a)
        slope = jnp.where(lower, 1.0, -1.0) * jnp.exp(logpdf_x + logx - val)
        return logx - jnp.clip((val - target) / slope, -2.0, 2.0)

    return jnp.exp(jax.lax.fori_loop(0, iters, body, logx))


def transform(mix: Mixture, u: Array, df: float) -> Array:
    """Map points u (N, p + 1) of the unit cube to draws (N, p) of the mixture: u[:, 0]
    picks the component (inverse CDF of the weights) and, rescaled within that component's
    interval, the chi-square radius; u[:, 1:] the normals."""
    w = jnp.exp(mix.logw)
    hi = jnp.cumsum(w).at[-1].set(1.0)
    lo = hi - w
    c = jnp.clip(jnp.searchsorted(hi, u[:, 0], side="right"), 0, w.shape[0] - 1)
    v = jnp.clip((u[:, 0] - lo[c]) / w[c], 1e-16, 1 - 1e-16)
    g = gammaincinv(df / 2, v) / (df / 2)
    t = ndtri(jnp.clip(u[:, 1:], 1e-16, 1 - 1e-16)) / jnp.sqrt(g)[:, None]
    return mix.means[c] + jnp.einsum("nij,nj->ni", mix.chols[c], t)


def mc_uniforms(seed, n: int, p: int) -> np.ndarray:
    """Uniforms (n, p + 1) with coordinate 0 stratified in n cells (exact component shares).
    Host side (numpy's generator from ``seed``: nothing compiled for it)."""
    rng = np.random.default_rng(seed)
    u = rng.random((n, p + 1))
    u[:, 0] = rng.permutation((np.arange(n) + u[:, 0]) / n)
    return u


def host_seed(key) -> list[int]:
    """A numpy seed from a JAX key's bits (no compiled call)."""
    return [int(v) for v in np.ravel(np.asarray(jax.random.key_data(key)))]


def sobol_uniforms(seed, groups: int, n: int, p: int) -> np.ndarray:
    """``groups`` independently scrambled Sobol sets of n = 2^m points in [0, 1]^(p + 1),
    group-major (groups * n, p + 1). Host side (scipy's scrambled Sobol)."""
    from scipy.stats import qmc

    m = int(np.log2(n))
    rng = np.random.default_rng(seed)
    return np.concatenate([qmc.Sobol(p + 1, scramble=True, seed=rng).random_base2(m) for _ in range(groups)])


def around(mean: Array, chol: Array, scales, weights) -> Mixture:
    """Components at one mean with scale matrices chol chol^T times scales^2."""
    K = len(scales)
    s = jnp.asarray(scales, dtype=jnp.float64)
    return Mixture(jnp.broadcast_to(mean, (K,) + mean.shape), s[:, None, None] * chol[None],
                   jnp.log(jnp.asarray(weights, dtype=jnp.float64)))


def combine(m1: Mixture, share1: float, m2: Mixture) -> Mixture:
    """The mixture share1 * m1 + (1 - share1) * m2."""
    return Mixture(jnp.concatenate([m1.means, m2.means]), jnp.concatenate([m1.chols, m2.chols]),
                   jnp.concatenate([m1.logw + jnp.log(share1), m2.logw + jnp.log1p(-share1)]))


def pad_components(mix: Mixture, K: int) -> Mixture:
    """The same mixture with K components: zero-weight copies of the first in front. Its density
    is the same, and so are its draws from the same uniforms (a zero weight is an empty interval
    of the component coordinate, and hi(c) = 0 <= u puts u past it), so mixtures of different
    sizes share one compiled shape. Host side (numpy: nothing compiled for it)."""
    mix = Mixture(*(np.asarray(a) for a in mix))
    k = K - mix.logw.shape[0]
    if k <= 0:
        return mix
    rep = lambda a: np.concatenate([np.repeat(a[:1], k, axis=0), a])  # noqa: E731
    return Mixture(rep(mix.means), rep(mix.chols), np.concatenate([np.full(k, -np.inf), mix.logw]))


def weighted_moments(a: Array, theta: Array):
    a = a / jnp.sum(a)
    m = a @ theta
    d = theta - m
    return m, (a[:, None] * d).T @ d


def fit_em(a: Array, theta: Array, K: int, iters: int, jitter: float = 1e-3) -> Mixture:
    """Weighted Gaussian EM with K components to point masses a_i at theta_i.

    Deterministic start: K weighted-quantile bins along the principal axis of the weighted
    covariance. Each covariance gets jitter x the overall variances on its diagonal, so no
    component collapses onto a few heavy draws."""
    N, p = theta.shape
    a = jnp.where(jnp.isfinite(a) & (a > 0), a, 0.0)
    a = a / jnp.sum(a)
    m0, C0 = weighted_moments(a, theta)
    _, vecs = jnp.linalg.eigh(C0)
    order = jnp.argsort((theta - m0) @ vecs[:, -1])
    bin_sorted = jnp.clip(jnp.floor(jnp.cumsum(a[order]) * K - 1e-12), 0, K - 1).astype(jnp.int32)
    R = jax.nn.one_hot(jnp.zeros(N, jnp.int32).at[order].set(bin_sorted), K, dtype=theta.dtype)
    reg = jitter * jnp.diag(jnp.diag(C0))

    def mstep(R):
        ar = a[:, None] * R
        nk = jnp.sum(ar, axis=0) + 1e-300
        means = (ar.T @ theta) / nk[:, None]
        d = theta[None] - means[:, None]
        covs = jnp.einsum("kn,kni,knj->kij", ar.T, d, d) / nk[:, None, None] + reg
        return means, covs, nk

    def estep(means, covs, nk):
        chols = jnp.linalg.cholesky(covs)

        def logn(mean, chol):
            z = jax.scipy.linalg.solve_triangular(chol, (theta - mean).T, lower=True).T
            return -0.5 * jnp.sum(z**2, -1) - jnp.sum(jnp.log(jnp.diag(chol)))

        return jax.nn.softmax(jax.vmap(logn)(means, chols).T + jnp.log(nk)[None], axis=1)

    R = jax.lax.fori_loop(0, iters, lambda _, R: estep(*mstep(R)), R)
    means, covs, nk = mstep(R)
    return Mixture(means, jnp.linalg.cholesky(covs), jnp.log(nk / jnp.sum(nk)))
