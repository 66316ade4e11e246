"""Closed-form GP algebra in JAX for batch design search (``placement suggest``).

The hyperparameter posterior comes from the PyMC model through the engine; given
hyperparameter draws, conditioning on a candidate batch and on fantasised observations
is plain Gaussian algebra, written here so it can be differentiated with respect to the
batch locations. Kernel formulas match ``placement.kernels`` (tested).
``inverse_from_factor`` also serves ``placement.posdef`` (the derivative of a GP's log-determinant
in every exported model).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.lax.linalg import triangular_solve


# Every kernel name and the placement.kernels class (a PyMC covariance) of the same formula; the one
# name table (placement.kernels.KERNELS is built from it). Here, so that code needing the names alone
# (``placement suggest``'s checks) does not import PyMC (about 4 s).
KERNEL_CLASSES = {"matern12": "Matern12", "matern32": "Matern32", "matern52": "Matern52", "expquad": "ExpQuad",
                  "ratquad": "RatQuad", "periodic": "Periodic"}


def _r2(A, B, ls):
    d = (A[:, None, :] - B[None, :, :]) / ls
    return jnp.sum(d * d, axis=-1)


def _safe_r(r2):
    pos = r2 > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, r2, 1.0)), 0.0)


def kernel_matrix(name: str, A, B, ls, eta, alpha=2.0, period=1.0):
    """eta^2 k(A, B) for A (n, d), B (m, d); ls scalar or (d,)."""
    if name == "periodic":
        s = jnp.sin(jnp.pi * (A[:, None, :] - B[None, :, :]) / period) / ls
        return eta**2 * jnp.exp(-2.0 * jnp.sum(s * s, axis=-1))
    r2 = _r2(A, B, ls)
    if name == "expquad":
        k = jnp.exp(-0.5 * r2)
    elif name == "ratquad":
        k = (1.0 + r2 / (2.0 * alpha)) ** (-alpha)
    else:
        r = _safe_r(r2)
        if name == "matern12":
            k = jnp.exp(-r)
        elif name == "matern32":
            r = jnp.sqrt(3.0) * r
            k = (1.0 + r) * jnp.exp(-r)
        elif name == "matern52":
            rr = jnp.sqrt(5.0) * r
            k = (1.0 + rr + 5.0 / 3.0 * r2) * jnp.exp(-rr)
        else:
            raise ValueError(f"unknown kernel {name!r}")
    return eta**2 * k


def posterior(name, X, y, G, ls, eta, sigma, **kw):
    """Predictive mean and variance of f at G given data (X, y) and hyperparameters."""
    K = kernel_matrix(name, X, X, ls, eta, **kw) + (sigma**2 + 1e-9) * jnp.eye(X.shape[0])
    L = jnp.linalg.cholesky(K)
    Kg = kernel_matrix(name, X, G, ls, eta, **kw)
    A = jax.scipy.linalg.solve_triangular(L, Kg, lower=True)
    alpha = jax.scipy.linalg.cho_solve((L, True), y)
    mean = Kg.T @ alpha
    var = eta**2 - jnp.sum(A * A, axis=0)
    return mean, jnp.maximum(var, 1e-12)


def batch_predictive(name, X, y, B, ls, eta, sigma, **kw):
    """Mean (k,) and covariance (k, k) of noisy observations at batch B given (X, y)."""
    K = kernel_matrix(name, X, X, ls, eta, **kw) + (sigma**2 + 1e-9) * jnp.eye(X.shape[0])
    L = jnp.linalg.cholesky(K)
    Kb = kernel_matrix(name, X, B, ls, eta, **kw)
    A = jax.scipy.linalg.solve_triangular(L, Kb, lower=True)
    mean = Kb.T @ jax.scipy.linalg.cho_solve((L, True), y)
    cov = kernel_matrix(name, B, B, ls, eta, **kw) - A.T @ A + (sigma**2 + 1e-9) * jnp.eye(B.shape[0])
    return mean, cov


def mvn_logpdf(x, mean, cov):
    L = jnp.linalg.cholesky(cov)
    z = jax.scipy.linalg.solve_triangular(L, x - mean, lower=True)
    return -0.5 * jnp.sum(z * z) - jnp.sum(jnp.log(jnp.diag(L))) - 0.5 * x.shape[0] * jnp.log(2 * jnp.pi)


def quad_form(Kinv, Kb):
    """Kb^T Kinv Kb for symmetric Kinv (n, n) and Kb (n, k) with one n x n x k product in
    the forward pass and none in the reverse one: V = Kinv Kb is held constant and the
    symmetric form Kb^T V + V^T Kb - Kb^T V has the right value and derivative
    (d = dKb^T V + V^T dKb since Kinv is symmetric)."""
    V = jax.lax.stop_gradient(Kinv @ Kb)
    S = Kb.T @ V
    return S + S.T - jax.lax.stop_gradient(S)


# blocks of at most this size are inverted by one triangular solve (64 and 96 timed alike at
# n = 200-1000; 128 was slower)
_BLOCK = 64


def _triangular_inverse(L):
    """L^-1 for lower-triangular L: [[A, 0], [B, C]]^-1 = [[A^-1, 0], [-C^-1 B A^-1, C^-1]]."""
    n = L.shape[-1]
    if n <= _BLOCK:
        return triangular_solve(L, jnp.eye(n, dtype=L.dtype), left_side=True, lower=True)
    h = n // 2
    Ai, Ci = _triangular_inverse(L[:h, :h]), _triangular_inverse(L[h:, h:])
    M = -(Ci @ (L[h:, :h] @ Ai))
    return jnp.block([[Ai, jnp.zeros((h, n - h), L.dtype)], [M, Ci]])


def _lower_gram(W):
    """W^T W for lower-triangular W = [[A, 0], [M, C]]: [[A^T A + M^T M, M^T C], [C^T M, C^T C]]."""
    n = W.shape[-1]
    if n <= _BLOCK:
        return W.T @ W
    h = n // 2
    A, M, C = W[:h, :h], W[h:, :h], W[h:, h:]
    low = C.T @ M
    return jnp.block([[_lower_gram(A) + M.T @ M, low.T], [low, _lower_gram(C)]])


def inverse_from_factor(L):
    """K^-1 = L^-T L^-1 from the lower Cholesky factor L of K (2-D; symmetric to rounding).

    LAPACK's potri written in blocks: L^-1 by halves, then L^-T L^-1 by halves, so nearly all
    the work is dense matrix products: about 2n^3/3 multiply-adds, where two triangular solves
    against the identity do n^3 (at a lower rate). At n = 500 on one CPU core (16 matrices per
    call) it took 4-5 ms per matrix against 9-11 ms, equal to 1e-13. Inside the recursion,
    halves of up to 64 rows are one triangular solve and one product. One matrix (2-D);
    ``jax.vmap`` it for a batch. A whole matrix of up to 64 rows is ``cho_solve`` against the
    identity, as before: no faster there, and the same bits as before on small models (a
    sweep's job equals the single run bit for bit, tested in tests/test_launchers.py)."""
    if L.ndim != 2:
        raise ValueError(f"inverse_from_factor takes one 2-D factor (vmap it for a batch); got shape {L.shape}")
    if L.shape[-1] <= _BLOCK:
        return jax.scipy.linalg.cho_solve((L, True), jnp.eye(L.shape[-1], dtype=L.dtype))
    return _lower_gram(_triangular_inverse(L))


def chol_inverse(K):
    """(L, K^-1) for a symmetric positive definite K."""
    L = jnp.linalg.cholesky(K)
    Kinv = inverse_from_factor(L)
    return L, 0.5 * (Kinv + Kinv.T)


@jax.custom_vjp
def transposed_product(A, At, Kb):
    """A^T Kb for A (n, g), given At = A^T stored as well (data, not differentiated): the
    forward product is At @ Kb and the reverse one A @ dQ, both in their operands' stored
    layout (XLA on CPU runs a product with a transposed operand about 4x slower)."""
    return At @ Kb


def _tp_fwd(A, At, Kb):
    return At @ Kb, A


def _tp_bwd(A, dQ):
    return None, None, A @ dQ


transposed_product.defvjp(_tp_fwd, _tp_bwd)
