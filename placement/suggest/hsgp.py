"""Hilbert-space GP approximation (pm.gp.HSGP) for `placement suggest` (approx=hsgp).

On the normalised inputs, f(x) = b(x)^T z with z ~ N(0, I) and b(x) = phi(x) * s, where phi
are the m^d Laplacian eigenfunctions of the box [centre - L, centre + L] (pm.gp.HSGP's
``prior_linearized``: products of sin(omega_j (x - centre + L)) / sqrt(L)), s^2 = eta^2
S(omega; ell) the kernel's power spectral density at their frequencies, and the centre and
L as ``problems.hsgp_boundary`` (PyMC's centre, L = c x the largest distance from it to the
[0, 1] box). With P = phi(X)^T phi(X) computed once (n m*^2, m* = m^d), everything per
hyperparameter draw is m* x m*:

- log p(y | theta) = log N(y; 0, B B^T + (sigma^2 + jitter) I), B = phi(X) diag(s): with
  A = I + s P s / s2 (the weights' posterior precision) and z = A^-1 B^T y / s2, it is
  -(|y - B z|^2 / s2 + |z|^2 + n log s2 + log|A| + n log 2 pi) / 2 (a sum of positive
  terms; y^T y / s2 - ... cancels when sigma is small). O(m*^3 + n m*) per draw.
- the criteria: weights' posterior covariance A^-1 and mean per draw (HSGPData); a batch B
  of k points is scored through rank-k updates on it: C_B = b(B) A^-1 b(B)^T + s2 I and
  cov(f_G, f_B) = b(G) A^-1 b(B)^T, O(m*^2 k + g m* k) per draw instead of O(n^2 k + g n k).
- ek_variance in weight space (ek_design): K^-1 = (I - phi M phi^T) / s2 with
  M = diag(s) A^-1 diag(s) / s2, so the kriging weights are phi M phi_G^T and the Fisher
  information and tr(I^-1 V) need only P (+ the batch's rank-k part): O(m*^3) per draw.

Supported kernels: those with a power spectral density in PyMC and here (HSGP_KERNELS);
periodic needs pm.gp.HSGPPeriodic, a different basis, and matern12 / ratquad are left out.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln

from placement import budget, gpjax
from placement.errors import PlacementError

HSGP_KERNELS = ("expquad", "matern32", "matern52")
MAX_BASIS = 4096  # m^d above this: the m* x m* weight posterior per draw is too dear (memory M m*^2 x 8 bytes)
APPROX = ("exact", "hsgp")
HSGP_SAMPLERS = ("bayes", "map")


class Basis(NamedTuple):
    """The HSGP basis on the normalised inputs: centre (d,), half-width L (d,) and the
    frequencies omega (m*, d) = pi j / (2 L), j = 1..m per column (PyMC's order)."""

    centre: jax.Array
    L: jax.Array
    omega: jax.Array


def check(kernel_name: str, sampler: str, m: int, c: float, d: int | None = None) -> None:
    """One PlacementError naming what to change when approx=hsgp cannot work."""
    if kernel_name not in HSGP_KERNELS:
        why = ("its HSGP is pm.gp.HSGPPeriodic, a different basis" if kernel_name == "periodic"
               else "it has no power spectral density here")
        raise PlacementError(f"approx=hsgp does not support the {kernel_name} kernel ({why}); use kernel="
                             f"{' | '.join(HSGP_KERNELS)} or approx=exact.")
    if sampler not in HSGP_SAMPLERS:
        raise PlacementError(f"approx=hsgp works with sampler=importance or map (\"bayes\" or \"map\" in placement.suggest), "
                             f"not {'nuts' if sampler == 'nuts' else sampler}; choose one of them or approx=exact.")
    if not (isinstance(m, (int, np.integer)) and not isinstance(m, bool) and m >= 1):
        raise PlacementError(f"hsgp_m must be a whole number >= 1 (basis functions per input column); got {m!r}.")
    if not (np.isfinite(c) and c > 1.0):
        raise PlacementError(f"hsgp_c must be > 1 (the boundary L = c x the box's half-width; 2 is usual); got {c!r}.")
    if d is not None and float(m) ** d > MAX_BASIS:
        raise PlacementError(f"approx=hsgp with hsgp_m={m} and {d} input columns needs m^d = {int(m) ** d} basis "
                             f"functions (at most {MAX_BASIS}): lower hsgp_m to {int(MAX_BASIS ** (1.0 / d))} or less, "
                             "or use approx=exact (the HSGP pays off for 1-3 inputs).")


def make_basis(Xn, m: int, c: float) -> Basis:
    """The basis for data Xn (n, d) in [0, 1]^d: PyMC's centre (midpoint of the data's range),
    L = c x the largest distance from it to the box's edges (so every batch point is inside)."""
    from pymc.gp.hsgp_approx import calc_eigenvalues

    from placement.problems import hsgp_boundary

    Xn = np.asarray(Xn, dtype=np.float64)
    d = Xn.shape[1]
    centre, L = hsgp_boundary(Xn, np.tile([0.0, 1.0], (d, 1)), float(c))
    omega = np.sqrt(calc_eigenvalues(L, [int(m)] * d))
    return Basis(jnp.asarray(centre), jnp.asarray(L), jnp.asarray(omega))


def features(basis: Basis, X):
    """phi(X) (N, m*): products over columns of sin(omega (x - centre + L)) / sqrt(L)."""
    Xs = X - basis.centre
    return jnp.prod(jnp.sin(basis.omega[None] * (Xs[:, None, :] + basis.L)) / jnp.sqrt(basis.L), axis=-1)


def log_psd(name: str, omega, ell):
    """log S(omega) (m*,) of the unit-variance kernel with length scales ell (d,), as PyMC's
    power_spectral_density."""
    D = omega.shape[-1]
    w2 = jnp.sum(omega**2 * ell**2, axis=-1)
    if name == "expquad":
        return 0.5 * D * jnp.log(2.0 * jnp.pi) + jnp.sum(jnp.log(ell)) - 0.5 * w2
    nu2 = {"matern52": 5.0, "matern32": 3.0}[name]  # 2 nu
    half = (D + nu2) / 2.0
    const = (D * jnp.log(2.0) + 0.5 * D * jnp.log(jnp.pi) + gammaln(half) + 0.5 * nu2 * jnp.log(nu2)
             - jnp.log({5.0: 0.75, 3.0: 0.5}[nu2] * jnp.sqrt(jnp.pi)))
    return const + jnp.sum(jnp.log(ell)) - half * jnp.log(nu2 + w2)


def scales(name: str, basis: Basis, ell, eta):
    """s (m*,) = eta sqrt(S(omega)): the prior sd of each basis function's weight."""
    return eta * jnp.exp(0.5 * log_psd(name, basis.omega, ell))


# -- hyperparameter posterior ---------------------------------------------------------------------
class Stats(NamedTuple):
    """What the hyperparameter density reads: phi(X) (n, m*), P = phi^T phi, the basis."""

    Phi: jax.Array
    P: jax.Array
    basis: Basis


def stats(Xn, basis: Basis) -> Stats:
    Phi = features(basis, jnp.asarray(Xn, dtype=jnp.float64))
    return Stats(Phi, Phi.T @ Phi, basis)


def hsgp_logdensity(name: str, theta, st: Stats, y, prior=None):
    """log p(theta, y | X) of the HSGP model (unconstrained theta = (log ell (d), log eta,
    log sigma), Jacobian included; the same priors as hyper.suggest_model)."""
    from placement.suggest.hyper import ML_JITTER

    d = st.basis.omega.shape[1]
    s = scales(name, st.basis, jnp.exp(theta[:d]), jnp.exp(theta[d]))
    s2 = jnp.exp(2.0 * theta[d + 1]) + ML_JITTER
    n, m = st.Phi.shape
    A = jnp.eye(m) + s[:, None] * st.P * s[None, :] / s2
    L = jnp.linalg.cholesky(A)
    z = jax.scipy.linalg.cho_solve((L, True), s * (st.Phi.T @ y) / s2)
    r = y - st.Phi @ (s * z)
    lml = -0.5 * (r @ r / s2 + z @ z + n * jnp.log(s2) + 2.0 * jnp.sum(jnp.log(jnp.diag(L))) + n * jnp.log(2 * jnp.pi))
    return jnp.where(jnp.isfinite(lml), lml, -jnp.inf) + _prior_logp(theta, prior)


def _prior_logp(theta, prior=None):
    """hyper's log prior (unconstrained, Jacobian included); prior None: its default."""
    from placement.suggest.hyper import _log_prior

    return _log_prior(theta) if prior is None else _log_prior(theta, prior)


def _as_jnp(prior):
    return None if prior is None else type(prior)(*(jnp.asarray(v, dtype=jnp.float64) for v in prior))


def _start(d, prior):
    from placement.suggest.hyper import _initial_theta

    return _initial_theta(d) if prior is None else _initial_theta(d, prior)


def _newton(score, logp, theta, st, y, prior, max_iter=30, tol=1e-8):
    """hyper._newton's ascent (Newton steps with the observed information, eigenvalues floored
    at 1/9, halved until log p does not fall; stops when g^T H^-1 g < tol)."""
    from placement.suggest.hyper import _floored_inverse

    theta = np.asarray(theta, dtype=np.float64)
    lp, g, H = (np.asarray(a) for a in score(jnp.asarray(theta), st, y, prior))
    for _ in range(max_iter):
        if not (np.isfinite(lp) and np.all(np.isfinite(g)) and np.all(np.isfinite(H))):
            break
        step = _floored_inverse(H) @ g
        if not np.all(np.isfinite(step)) or float(g @ step) < tol:
            break
        for _half in range(12):
            new = theta + step
            lp_new = float(logp(jnp.asarray(new), st, y, prior))
            if np.isfinite(lp_new) and lp_new >= lp - 1e-10 * abs(lp):
                break
            step = 0.5 * step
        else:
            break
        theta = new
        lp, g, H = (np.asarray(a) for a in score(jnp.asarray(theta), st, y, prior))
    return theta, float(lp), H


@functools.lru_cache(maxsize=16)
def _tools(name: str):
    logp = functools.partial(hsgp_logdensity, name)

    def score(t, st, y, prior):
        lp, g = jax.value_and_grad(logp)(t, st, y, prior)
        return lp, g, -jax.hessian(logp)(t, st, y, prior)

    many = jax.jit(lambda th, st, y, prior: jax.lax.map(lambda t: logp(t, st, y, prior), th, batch_size=16))
    return jax.jit(score), jax.jit(logp), many


def hsgp_mode(Xn, yn, name: str, basis: Basis, seed: int = 0, prior=None, num_starts: int = 4, jitter: float = 1.5):
    """(mode, covariance, log p): hyper._newton from the default start and three jittered ones
    (as hyper.hyper_mode), on all the data (each step is O(m*^3 + n m*))."""
    from placement.suggest.hyper import _floored_inverse

    score, logp, _ = _tools(name)
    n, d = Xn.shape
    rng = np.random.default_rng(seed)
    theta0 = _start(d, prior)
    pr = _as_jnp(prior)
    st, y = stats(Xn, basis), jnp.asarray(yn, dtype=jnp.float64)
    starts = theta0 + np.concatenate([np.zeros((1, d + 2)), rng.uniform(-jitter, jitter, (num_starts - 1, d + 2))])
    ends = [_newton(score, logp, t, st, y, pr) for t in starts]
    lps = np.array([e[1] if np.isfinite(e[1]) else -np.inf for e in ends])
    theta, lp, H = ends[int(np.argmax(lps))]
    return theta, _floored_inverse(H), float(lp)


def hsgp_draws(Xn, yn, name: str, basis: Basis, num: int, seed: int, sampler: str = "bayes", prior=None):
    """(ell (M, d), eta (M,), sigma (M,), ess) as hyper.hyper_draws, for the HSGP model:
    the mode ("map"), or M draws resampled from Laplace-centred importance sampling ("bayes":
    rounds of 256 draws until the weights' ESS reaches max(4 M, 64) or 4096 draws; a round
    whose ESS is under 10% re-fits the proposal to the weighted draws)."""
    from placement.importance import ISConfig, proposal_from_moments, proposal_logpdf, proposal_sample
    from placement.suggest.hyper import _constrain

    Xn, yn = np.asarray(Xn, dtype=np.float64), np.asarray(yn, dtype=np.float64)
    mode, cov, _ = hsgp_mode(Xn, yn, name, basis, seed, prior)
    if sampler == "map":
        ell, eta, sigma = _constrain(mode[None, :])
        return ell.reshape(1, -1), eta.reshape(1), sigma.reshape(1), 1.0
    _, _, many = _tools(name)
    st, y = stats(Xn, basis), jnp.asarray(yn)
    pr = _as_jnp(prior)
    cfg = ISConfig(pilot="laplace")
    prop = proposal_from_moments(jnp.asarray(mode), jnp.asarray(cov))
    key = jax.random.PRNGKey(seed + 7)
    rnd, cap, target = 256, 4096, max(4 * num, 64)
    thetas, logw, used, last = [], [], 0, None
    while True:
        try:
            key, sub = jax.random.split(key)
            th = proposal_sample(sub, prop, rnd, cfg)
            lw = np.asarray(many(th, st, y, pr)) - np.asarray(proposal_logpdf(prop, th, cfg))
            budget.checkpoint(used + rnd, cap, "hyperparameter draws")
        except budget.OutOfTime:
            if last is None:
                raise budget.nothing_yet(budget.current().max_seconds, "the hyperparameter draws had a first round") \
                    from None
            T, W = last
            break
        thetas.append(np.asarray(th))
        logw.append(np.where(np.isfinite(lw), lw, -np.inf))
        used += rnd
        T, LW = np.concatenate(thetas), np.concatenate(logw)
        W = np.exp(LW - LW.max())
        W /= W.sum()
        ess = 1.0 / np.sum(W**2)
        last = (T, W)
        if used >= cap or ess >= target or budget.current().passed():
            break
        if ess < 0.1 * len(W):
            mean = W @ T
            c = (W[:, None] * (T - mean)).T @ (T - mean)
            new = proposal_from_moments(jnp.asarray(mean), jnp.asarray(c))
            if np.all(np.isfinite(np.asarray(new.chol))):
                prop, thetas, logw = new, [], []
    u = (np.arange(num) + np.random.default_rng(seed).uniform()) / num  # systematic resampling
    idx = np.minimum(np.searchsorted(np.cumsum(W), u), len(W) - 1)
    ell, eta, sigma = _constrain(T[idx])
    return ell.reshape(num, -1), eta.reshape(num), sigma.reshape(num), float(1.0 / np.sum(W**2))


# -- criteria -------------------------------------------------------------------------------------
def _weights(name, basis, P, PtY, l, e, s_):
    """Per draw: scales s, A^-1 and the weights' posterior mean (JITTER as the criteria)."""
    from placement.suggest.criteria import JITTER

    s = scales(name, basis, l, e)
    s2 = s_**2 + JITTER
    A = jnp.eye(P.shape[0]) + s[:, None] * P * s[None, :] / s2
    _, Ainv = gpjax.chol_inverse(A)
    return s, Ainv, Ainv @ (s * PtY) / s2


class HSGPData(NamedTuple):
    """criteria.CritData's counterpart for approx=hsgp: the same first fields (what the search
    and the criteria read), then the weights' posterior per draw. criteria._batch_pred,
    _update and _ek_design hand a batch to the methods below."""

    X: jax.Array  # (n, d) normalised inputs (pending points included)
    y: jax.Array  # (M, n)
    G: jax.Array  # (g, d)
    ell: jax.Array  # (M, d)
    eta: jax.Array  # (M,)
    sigma: jax.Array  # (M,)
    z: jax.Array  # (J, k)
    basis: Basis
    P: jax.Array  # (m*, m*) phi(X)^T phi(X)
    s: jax.Array  # (M, m*) prior sd of the weights
    Ainv: jax.Array  # (M, m*, m*) weights' posterior covariance (z-scale)
    mu: jax.Array  # (M, m*) its mean
    SG: jax.Array  # (M, g, m*) b(G) A^-1
    mean_G: jax.Array  # (M, g)
    var_G: jax.Array  # (M, g)

    def batch_pred(self, kernel, B):
        """As criteria._batch_pred: mean (M, k), covariance (M, k, k) of noisy observations at
        B, and b(B) (M, k, m*) (in the place of K_nB)."""
        from placement.suggest.criteria import JITTER

        phiB = features(self.basis, B)

        def one(s, Ainv, mu, sg):
            bB = phiB * s
            C = bB @ Ainv @ bB.T + (sg**2 + JITTER) * jnp.eye(B.shape[0])
            return bB @ mu, 0.5 * (C + C.T), bB

        return jax.vmap(one)(self.s, self.Ainv, self.mu, self.sigma)

    def update(self, kernel, B, C_b, bB):
        """As criteria._update: R = Q C_B^-1 with Q = b(G) A^-1 b(B)^T (M, g, k), and the
        variance at G after adding B (M, g)."""
        def one(SG, C, bB, vG):
            Q = SG @ bB.T
            R = jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(C), True), Q.T).T
            return R, jnp.maximum(vG - jnp.sum(R * Q, 1), 1e-12)

        return jax.vmap(one)(self.SG, C_b, bB, self.var_G)

    def ek_design(self, kernel, D):
        """criteria._ek_design for the design D (N, d) = the data (first n rows) and a batch."""
        n = self.X.shape[0]
        P = self.P
        if D.shape[0] > n:
            phiB = features(self.basis, D[n:])
            P = P + phiB.T @ phiB
        phiG = features(self.basis, self.G)
        N = D.shape[0]

        def one(l, e, s):
            theta = jnp.concatenate([jnp.log(l), jnp.log(e)[None], jnp.log(s)[None]])
            var, corr = ek_terms(kernel.name, self.basis, P, N, phiG, theta)
            return jnp.mean(var + corr)

        return jnp.mean(jax.vmap(one)(self.ell, self.eta, self.sigma))


def ek_terms(name, basis, P, N, phiG, theta):
    """(plug-in variance (g,), correction (g,)) of criteria.ek_terms with K the HSGP's
    covariance phi Lambda phi^T + s2 I of N points whose phi^T phi is P (module docstring)."""
    from placement.suggest.criteria import JITTER

    d = basis.omega.shape[1]
    m = P.shape[0]

    def lam_of(t):  # Lambda = s^2 (m*,)
        return scales(name, basis, jnp.exp(t[:d]), jnp.exp(t[d])) ** 2

    def parts(t):
        s = jnp.sqrt(lam_of(t))
        s2 = jnp.exp(2.0 * t[d + 1]) + JITTER
        A = jnp.eye(m) + s[:, None] * P * s[None, :] / s2
        _, Ainv = gpjax.chol_inverse(A)
        return s, s2, Ainv, (s[:, None] * Ainv * s[None, :]) / s2  # M

    def a_of(t):  # kriging weights lambda = phi a, a = M phi_G^T (m*, g)
        return parts(t)[3] @ phiG.T

    s, s2, Ainv, M = parts(theta)
    bG = phiG * s
    var = jnp.maximum(jnp.sum((bG @ Ainv) * bG, 1), 1e-12)
    Lam = s**2
    dLam = jax.jacfwd(lam_of)(theta)  # (m*, p)
    p = theta.shape[0]
    a_s = jnp.zeros(p).at[d + 1].set(2.0 * (s2 - JITTER))  # d s2 / d theta
    I_m = jnp.eye(m)
    MP = M @ P
    E = jnp.einsum("ij,jp->pij", I_m - MP, dLam) - a_s[:, None, None] * M[None]  # (p, m*, m*)
    EP = E @ P
    trEP = jnp.trace(EP, axis1=1, axis2=2)
    T = (jnp.einsum("pij,qji->pq", EP, EP) + a_s[None, :] * trEP[:, None] + a_s[:, None] * trEP[None, :]
         + N * jnp.outer(a_s, a_s)) / s2**2
    F = 0.5 * T - jax.hessian(_prior_logp)(theta)  # the default prior, as criteria.ek_terms
    Finv = jnp.linalg.inv(0.5 * (F + F.T))
    da = jax.jacfwd(a_of)(theta)  # (m*, g, p)
    H = P @ (Lam[:, None] * P) + s2 * P  # phi^T K phi
    corr = jnp.einsum("pq,mgp,mn,ngq->g", Finv, da, H, da)
    return var, jnp.maximum(corr, 0.0)


def crit_data(Xn, yn, G, hyper, z, kernel, basis: Basis, pending=None) -> HSGPData:
    """HSGPData for the draws hyper = (ell, eta, sigma); pending (p, d) join the data at each
    draw's predictive mean (as criteria.crit_data)."""
    ell, eta, sigma = hyper
    f = lambda a: jnp.asarray(a, dtype=jnp.float64)  # noqa: E731
    X, y, G, eta, sigma = f(Xn), f(yn), f(G), f(eta).reshape(-1), f(sigma).reshape(-1)
    ell = f(ell).reshape(eta.shape[0], -1)
    Y = jnp.broadcast_to(y, (eta.shape[0], y.shape[0]))
    if pending is not None and len(pending):
        Pn = f(pending).reshape(-1, X.shape[1])
        mean_P, _ = _posterior_fn(kernel.name)(basis, X, y, Pn, ell, eta, sigma)
        X, Y = jnp.concatenate([X, Pn]), jnp.concatenate([Y, mean_P], 1)
    return HSGPData(X, Y, G, ell, eta, sigma, f(z), basis, *_factoriser(kernel.name)(basis, X, Y, G, ell, eta, sigma))


@functools.lru_cache(maxsize=16)
def _factoriser(name):
    def fn(basis, X, Y, G, ell, eta, sigma):
        Phi = features(basis, X)
        P = Phi.T @ Phi
        PtY = Y @ Phi  # (M, m*)
        phiG = features(basis, G)

        def one(a):
            ptY, l, e, s_ = a
            s, Ainv, mu = _weights(name, basis, P, ptY, l, e, s_)
            bG = phiG * s
            SG = bG @ Ainv
            return s, Ainv, mu, SG, bG @ mu, jnp.sum(SG * bG, 1)

        return (P, *jax.lax.map(one, (PtY, ell, eta, sigma)))

    return jax.jit(fn)


@functools.lru_cache(maxsize=16)
def _posterior_fn(name):
    """Per draw: HSGP posterior mean and variance of f at G given (X, y)."""
    def fn(basis, X, y, G, ell, eta, sigma):
        Phi = features(basis, X)
        P, Pty = Phi.T @ Phi, Phi.T @ y
        phiG = features(basis, G)

        def one(a):
            s, Ainv, mu = _weights(name, basis, P, Pty, *a)
            bG = phiG * s
            return bG @ mu, jnp.maximum(jnp.sum((bG @ Ainv) * bG, 1), 1e-12)

        return jax.lax.map(one, (ell, eta, sigma))

    return jax.jit(fn)


def mixture_predictive(kernel, basis: Basis, Xn, yn, Gn, hyper):
    """criteria.mixture_predictive under the HSGP: mean and sd at Gn of the equal mixture."""
    ell, eta, sigma = (jnp.asarray(h, dtype=jnp.float64) for h in hyper)
    X, y, G = (jnp.asarray(a, dtype=jnp.float64) for a in (Xn, yn, Gn))
    mean, var = _posterior_fn(kernel.name)(basis, X, y, G, ell.reshape(eta.shape[0], -1), eta, sigma)
    mean, var = np.asarray(mean), np.asarray(var)
    return mean.mean(0), np.sqrt(var.mean(0) + mean.var(0))
