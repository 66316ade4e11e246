"""Where to measure next: a jointly chosen batch of k new points from data in hand.

1. Read the table, normalise inputs to [0, 1]^d (bounds default to the data range) and
   standardise y.
2. Hyperparameter posterior of a GP (PyMC model, kernel from the config; its log density
   in closed form, tested against the PyMC export) by Laplace-centred importance
   sampling; M draws resampled by weight. The mode by Newton's method with the closed-form
   observed information; above 200 points on a subset first, then polished on all the data.
3. Criterion of a candidate batch B, differentiable in B:
   expected_total_variance (default): domain-averaged variance of the mixture predictive
   after adding B, *including* Var over hyperparameters of E[f | theta], with the
   hyperparameter posterior updated by fantasised observations at B (fixed normal draws,
   so fantasies move smoothly with B; the existing draws are reweighted by the
   fantasies' likelihood -- the weighted form of the gradient identity, no new NUTS).
   integrated_variance: posterior-averaged variance at fixed hyperparameters (what most
   tools compute). max_variance. mutual_information (expected log-det information gain).
   The data covariance is factorised once per draw; a batch updates it by rank-k Schur
   complements, O(n^2 k) per draw and evaluation.
4. Gradient search (adam, projected onto the box) from space-filling Sobol starts,
   successive halving (all starts a quarter of the steps, the best quarter the rest).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from placement import gpjax
from placement.errors import PlacementError

SUGGEST_SAMPLERS = ("bayes", "nuts", "map")
CRITERIA = ("expected_total_variance", "integrated_variance", "max_variance", "mutual_information")


@dataclass(frozen=True)
class SuggestConfig:
    k: int = 5
    criterion: str = "expected_total_variance"
    kernel: str = "matern52"
    num_hyper: int = 32
    num_fantasies: int = 16
    grid: int = 256
    restarts: int = 8
    steps: int = 150
    learning_rate: float = 0.02
    seed: int = 0
    sampler: str = "bayes"  # "bayes": posterior by importance sampling; "nuts": by NUTS; "map": the mode only

    def __post_init__(self):
        """Coerce and check every setting up front, so a bad override fails in milliseconds
        with one message instead of deep inside the search."""
        def num(name, cast, low, what):
            v = getattr(self, name)
            try:
                if isinstance(v, bool) or (cast is int and float(v) != int(float(v))):
                    raise ValueError
                v = cast(float(v)) if cast is int else cast(v)
            except (TypeError, ValueError, OverflowError):
                raise PlacementError(f"{name} must be {what}; got {v!r}.") from None
            if not np.isfinite(v) or v < low:
                raise PlacementError(f"{name} must be {what}; got {v!r}.")
            object.__setattr__(self, name, v)

        num("k", int, 1, "a whole number >= 1 (k must be at least 1)")
        num("num_hyper", int, 1, "a whole number >= 1")
        num("num_fantasies", int, 1, "a whole number >= 1")
        num("grid", int, 2, "a whole number >= 2")
        num("restarts", int, 1, "a whole number >= 1")
        num("steps", int, 1, "a whole number >= 1")
        num("seed", int, 0, "a whole number >= 0")
        num("learning_rate", float, 1e-12, "a positive number")
        if self.criterion not in CRITERIA:
            raise PlacementError(f"unknown criterion {self.criterion!r}; choose one of {', '.join(CRITERIA)}.")
        if self.sampler not in SUGGEST_SAMPLERS:
            raise PlacementError(f"sampler must be one of {', '.join(SUGGEST_SAMPLERS)} for suggest; got {self.sampler!r}.")
        from placement.kernels import KERNELS

        if self.kernel not in KERNELS:
            raise PlacementError(f"unknown kernel {self.kernel!r}; choose one of {', '.join(sorted(KERNELS))}.")


# -- input ------------------------------------------------------------------------------
def read_table(path, x_columns=None, y_column: str = "y"):
    """Read a CSV into (X (n, d), y (n,), x column names) with clear errors."""
    import pandas as pd

    p = Path(str(path))
    if not p.exists():
        raise PlacementError(f"data file {p} does not exist; give data=path/to/file.csv.")
    try:
        df = pd.read_csv(p)
    except Exception as e:  # pandas raises many types for unreadable files
        raise PlacementError(f"cannot read {p} as CSV ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}).") from None
    return frame_to_arrays(df, x_columns, y_column, source=str(p))


def frame_to_arrays(df, x_columns=None, y_column: str = "y", source: str = "the table"):
    if df is None or len(df.columns) == 0:
        raise PlacementError(f"{source} has no columns; it needs input columns and a '{y_column}' column.")
    if y_column not in df.columns:
        raise PlacementError(f"{source} has no column {y_column!r} (columns: {', '.join(map(str, df.columns))}); "
                             "set y_column=NAME.")
    x_columns = [c for c in df.columns if c != y_column] if not x_columns else list(x_columns)
    missing = [c for c in x_columns if c not in df.columns]
    if missing or not x_columns:
        raise PlacementError(f"{source} lacks input columns {missing or '(none left besides y)'} "
                             f"(columns: {', '.join(map(str, df.columns))}); set x_columns=[...].")
    try:
        X = df[x_columns].to_numpy(dtype=np.float64)
        y = df[y_column].to_numpy(dtype=np.float64)
    except (ValueError, TypeError):
        raise PlacementError(f"{source}: columns {x_columns + [y_column]} must hold numbers only.") from None
    bad = ~np.isfinite(X).all(axis=1) | ~np.isfinite(y)
    if bad.any():
        raise PlacementError(f"{source}: rows {np.nonzero(bad)[0][:10].tolist()} contain NaN, empty or infinite "
                             "values; remove or fill them.")
    if len(y) < 2:
        raise PlacementError(f"{source} has {len(y)} observation(s); at least two are needed to fit the GP.")
    _, counts = np.unique(X, axis=0, return_counts=True)
    if (counts > 1).any():
        raise PlacementError(f"{source} has duplicate input rows; average repeated measurements into one row.")
    return X, y, [str(c) for c in x_columns]


def check_bounds(bounds, X):
    """bounds: None (data range) or [[lo, hi], ...] per column (or [lo, hi] when d = 1)."""
    d = X.shape[1]
    if bounds is None:
        lo, hi = X.min(0), X.max(0)
        if np.any(hi <= lo):
            raise PlacementError("an input column is constant, so the data range is empty; give bounds=[[lo,hi],...].")
        return np.stack([lo, hi], 1)
    try:
        b = np.atleast_2d(np.asarray(bounds, dtype=np.float64))
    except (TypeError, ValueError):
        b = None
    if b is None or b.shape != (d, 2):
        raise PlacementError(f"bounds must be one [lo, hi] pair of numbers per input column ({d} column(s)), "
                             f"e.g. bounds=[[0,1]]; got {bounds!r}.")
    if not np.isfinite(b).all():
        raise PlacementError(f"bounds must be finite numbers; got {b.tolist()}.")
    if np.any(b[:, 0] >= b[:, 1]):
        raise PlacementError(f"bounds need lo < hi in every column; got {b.tolist()}.")
    return b


# -- hyperparameters ----------------------------------------------------------------------
# Priors of suggest_model; the closed form below (_log_prior, _lml) is tested against the
# PyMC model's exported log density.
ELL_MU, ELL_SD, ETA_SD, SIGMA_SD = 0.3, 0.2, 1.5, 0.5
ML_JITTER = 1e-6  # pm.gp.Marginal's default jitter on the marginal likelihood's covariance
SUBSET = 200  # above this many points the mode search starts on a random subset of this size


def suggest_model(Xn, yn, kernel_cls):
    """GP on normalised inputs and standardised y; weakly informative priors for that scale."""
    import pymc as pm

    d = Xn.shape[1]
    with pm.Model() as model:
        Xd = pm.Data("X", Xn)
        yd = pm.Data("y", yn)
        ell = pm.InverseGamma("ell", mu=ELL_MU, sigma=ELL_SD, shape=(d,))
        eta = pm.HalfNormal("eta", sigma=ETA_SD)
        sigma = pm.HalfNormal("sigma", sigma=SIGMA_SD)
        gp = pm.gp.Marginal(cov_func=eta**2 * kernel_cls(d, ls=ell))
        gp.marginal_likelihood("y_obs", X=Xd, y=yd, sigma=sigma)
        pm.Deterministic("eta_sq", eta**2)
    return model


def _log_prior(theta):
    """log prior of suggest_model on the unconstrained scale theta = (log ell (d), log eta,
    log sigma), log-transform Jacobians included."""
    from jax.scipy.special import gammaln

    a = 2.0 + ELL_MU**2 / ELL_SD**2  # InverseGamma(mu, sigma) as PyMC parametrises it
    b = ELL_MU * (ELL_MU**2 + ELL_SD**2) / ELL_SD**2
    u = theta[:-2]
    ig = jnp.sum(a * jnp.log(b) - gammaln(a) - (a + 1.0) * u - b * jnp.exp(-u) + u)

    def half_normal(v, s):
        return 0.5 * jnp.log(2.0 / jnp.pi) - jnp.log(s) - 0.5 * jnp.exp(2.0 * v) / s**2 + v

    return ig + half_normal(theta[-2], ETA_SD) + half_normal(theta[-1], SIGMA_SD)


def _cov(kernel, theta, X):
    d = X.shape[1]
    K = gpjax.kernel_matrix(kernel, X, X, jnp.exp(theta[:d]), jnp.exp(theta[d]))
    return K + (jnp.exp(2.0 * theta[d + 1]) + ML_JITTER) * jnp.eye(X.shape[0])


def hyper_logdensity(kernel, theta, X, y):
    """log p(theta, y | X) of suggest_model (unconstrained theta, Jacobian included)."""
    L = jnp.linalg.cholesky(_cov(kernel, theta, X))
    z = jax.scipy.linalg.solve_triangular(L, y, lower=True)
    lml = -0.5 * jnp.sum(z * z) - jnp.sum(jnp.log(jnp.diag(L))) - 0.5 * y.shape[0] * jnp.log(2.0 * jnp.pi)
    return jnp.where(jnp.isfinite(lml), lml, -jnp.inf) + _log_prior(theta)


def _hyper_score(kernel, theta, X, y):
    """(log p, gradient, observed information, expected information) at theta, the two
    informations with the prior's curvature added, in closed form: one Cholesky and one
    inverse of the n x n covariance and p products with it, instead of reverse- and
    forward-mode passes through the Cholesky (11 s for the Hessian at n = 1000).

    With D_p = dK/dtheta_p, alpha = K^-1 y and W = alpha alpha^T - K^-1, the log marginal
    likelihood's gradient is tr(W D_p) / 2, the expected information F_pq = tr(K^-1 D_p
    K^-1 D_q) / 2 and the observed one (minus the Hessian) (D_p alpha)^T K^-1 (D_q alpha)
    - F_pq - tr(W D_pq) / 2 (the last term by forward-over-reverse differentiation of
    tr(W K(theta)) / 2 at fixed W: n x n memory per direction)."""
    n, d = X.shape
    K = _cov(kernel, theta, X)
    L, Kinv = gpjax.chol_inverse(K)
    alpha = Kinv @ y
    lml = -0.5 * y @ alpha - jnp.sum(jnp.log(jnp.diag(L))) - 0.5 * n * jnp.log(2.0 * jnp.pi)
    kern = lambda t: gpjax.kernel_matrix(kernel, X, X, jnp.exp(t[:d]), jnp.exp(t[d]))  # noqa: E731
    D = jax.jacfwd(kern)(theta[: d + 1])  # (n, n, d + 1): dK / d(log ell, log eta)
    s2 = 2.0 * jnp.exp(2.0 * theta[d + 1])  # dK / d log sigma = s2 I
    W = jnp.outer(alpha, alpha) - Kinv
    grad = 0.5 * jnp.concatenate([jnp.einsum("ij,ijp->p", W, D), (s2 * jnp.trace(W))[None]])
    P = jnp.einsum("ij,jkp->pik", Kinv, D)  # Kinv dK_p
    F = jnp.zeros((d + 2, d + 2))
    F = F.at[: d + 1, : d + 1].set(0.5 * jnp.einsum("pij,qji->pq", P, P))
    cross = 0.5 * s2 * jnp.einsum("pij,ji->p", P, Kinv)
    F = F.at[: d + 1, d + 1].set(cross).at[d + 1, : d + 1].set(cross)
    F = F.at[d + 1, d + 1].set(0.5 * s2**2 * jnp.sum(Kinv * Kinv))
    Da = jnp.concatenate([jnp.einsum("ijp,j->ip", D, alpha), (s2 * alpha)[:, None]], 1)  # (n, p): D_p alpha
    Wc = jax.lax.stop_gradient(W)
    second = jax.hessian(lambda t: 0.5 * jnp.sum(Wc * _cov(kernel, t, X)))(theta)  # tr(W D_pq) / 2
    obs = Da.T @ Kinv @ Da - F - second
    lp, gp_ = jax.value_and_grad(_log_prior)(theta)
    Hp = jax.hessian(_log_prior)(theta)
    sym = lambda A: 0.5 * (A + A.T)  # noqa: E731
    return lml + lp, grad + gp_, sym(obs - Hp), sym(F - Hp)


def _floored_inverse(H):
    """Inverse of a curvature matrix with its eigenvalues floored at 1/9 (as make_laplace)."""
    evals, evecs = np.linalg.eigh(0.5 * (H + H.T))
    evals = np.where(np.isfinite(evals), np.maximum(evals, 1.0 / 9.0), 1.0 / 9.0)
    return (evecs / evals) @ evecs.T


@functools.lru_cache(maxsize=16)
def _closed_tools(kernel: str):
    """Jitted closed-form pieces for one kernel (shapes recompile on their own)."""
    from placement.kernels import KERNELS

    if kernel not in KERNELS:
        raise PlacementError(f"unknown kernel {kernel!r}; choose one of {', '.join(sorted(KERNELS))}.")
    from placement.importance import ISConfig, proposal_logpdf, proposal_sample

    logp = functools.partial(hyper_logdensity, kernel)
    score = jax.jit(functools.partial(_hyper_score, kernel))
    cfg = ISConfig(pilot="laplace")

    @functools.partial(jax.jit, static_argnames=("num",))
    def is_round(key, prop, X, y, num):
        """One round of importance draws: (next key, num draws, their log weights)."""
        key, sub = jax.random.split(key)
        th = proposal_sample(sub, prop, num, cfg)
        lw = jax.lax.map(lambda t: logp(t, X, y), th, batch_size=4) - proposal_logpdf(prop, th, cfg)
        return key, th, lw

    return score, jax.jit(logp), is_round


def _initial_theta(d):
    return np.concatenate([np.full(d, np.log(ELL_MU)), [0.0, np.log(0.3)]])


def _newton(score, logp, theta, X, y, max_iter=30, tol=1e-8):
    """Newton ascent on log p from theta: the observed information where it is positive
    definite, else the expected one (Fisher scoring, always positive definite), eigenvalues
    floored at 1/9; each step halved until log p does not fall. Stops when the Newton
    decrement g^T H^-1 g is under tol. Returns (theta, log p, observed information)."""
    theta = np.asarray(theta, dtype=np.float64)
    lp, g, H, F = (np.asarray(a) for a in score(jnp.asarray(theta), X, y))
    for _ in range(max_iter):
        if not (np.isfinite(lp) and np.all(np.isfinite(g))):
            break
        ok = np.all(np.isfinite(H)) and np.linalg.eigvalsh(H).min() > 0
        step = _floored_inverse(H if ok else F) @ g
        if not np.all(np.isfinite(step)) or float(g @ step) < tol:
            break
        for _half in range(12):  # backtrack until the log density does not fall
            new = theta + step
            lp_new = float(logp(jnp.asarray(new), X, y))
            if np.isfinite(lp_new) and lp_new >= lp - 1e-10 * abs(lp):
                break
            step = 0.5 * step
        else:
            break
        theta = new
        lp, g, H, F = (np.asarray(a) for a in score(jnp.asarray(theta), X, y))
    return theta, float(lp), H


def hyper_mode(Xn, yn, kernel: str, seed: int = 0, num_starts: int = 4, jitter: float = 1.5):
    """(mode, covariance, log p) of the unconstrained hyperparameter posterior.

    Newton's method (_newton: closed-form gradient and observed information) from four
    starts (the default and three jittered by up to +-jitter in every coordinate, as
    make_laplace) on up to SUBSET points; beyond that many, on a random subset of SUBSET
    points, the best end then polished by Newton on all the data (a few n^3 steps from a
    nearby start). The covariance is the inverse of the observed information at the mode,
    eigenvalues floored at 1/9 (as make_laplace)."""
    score, logp, _ = _closed_tools(kernel)
    n, d = Xn.shape
    rng = np.random.default_rng(seed)
    theta0 = _initial_theta(d)
    starts = theta0 + np.concatenate([np.zeros((1, d + 2)), rng.uniform(-jitter, jitter, (num_starts - 1, d + 2))])
    idx = np.arange(n) if n <= SUBSET else np.sort(rng.choice(n, SUBSET, replace=False))
    Xs, ys = jnp.asarray(Xn[idx]), jnp.asarray(yn[idx])
    ends = [_newton(score, logp, t, Xs, ys) for t in starts]
    lps = np.array([e[1] if np.isfinite(e[1]) else -np.inf for e in ends])
    theta, lp, H = ends[int(np.argmax(lps))]
    if n > SUBSET:
        theta, lp, H = _newton(score, logp, theta, jnp.asarray(Xn), jnp.asarray(yn))
    return theta, _floored_inverse(H), float(lp)


def _constrain(theta):
    t = np.exp(np.asarray(theta, dtype=np.float64))
    return t[..., :-2], t[..., -2], t[..., -1]


def _importance(Xn, yn, kernel, mode, cov, seed, num):
    """Self-normalised importance sampling of the hyperparameter posterior with a
    Laplace-centred heavy-tailed proposal (importance.ISConfig's Student-t mixture): draws in
    rounds of 256 (64 above SUBSET points, where each draw costs an n x n Cholesky, so the
    draws stop nearer the target) until the weights' ESS reaches 4 num (at least 64) or 4096
    draws, fewer rounds when the data make each draw dear (at least min(4096, 4096
    (200/n)^3) draws).
    A round whose ESS is under 10% of its draws re-fits the proposal to the weighted draws
    and starts afresh. Returns (theta (N, p), normalised weights (N,))."""
    from placement.importance import proposal_from_moments

    _, _, is_round = _closed_tools(kernel)
    n = Xn.shape[0]
    X, y = jnp.asarray(Xn), jnp.asarray(yn)
    rnd, cap = (256 if n <= SUBSET else 64), 4096
    least = int(min(cap, max(rnd, rnd * np.ceil(cap * min(1.0, (SUBSET / n) ** 3) / rnd))))
    target = max(4 * num, 64)
    prop = proposal_from_moments(jnp.asarray(mode), jnp.asarray(cov))
    key = jax.random.PRNGKey(seed + 7)
    thetas, logw, used = [], [], 0
    while True:
        key, th, lw = is_round(key, prop, X, y, rnd)
        lw = np.asarray(lw)
        thetas.append(np.asarray(th))
        logw.append(np.where(np.isfinite(lw), lw, -np.inf))
        used += rnd
        T, LW = np.concatenate(thetas), np.concatenate(logw)
        W = np.exp(LW - LW.max())
        W /= W.sum()
        ess = 1.0 / np.sum(W**2)
        if used >= cap or (ess >= target and used >= least):
            return T, W
        if ess < 0.1 * len(W):
            mean = W @ T
            c = (W[:, None] * (T - mean)).T @ (T - mean)
            new = proposal_from_moments(jnp.asarray(mean), jnp.asarray(c))
            if np.all(np.isfinite(np.asarray(new.chol))):
                prop, thetas, logw = new, [], []


def hyper_draws(Xn, yn, kernel: str, num: int, seed: int, sampler: str = "bayes"):
    """(ell (M, d), eta (M,), sigma (M,), ess): M draws resampled by weight from the
    importance posterior ("bayes"), M draws thinned evenly from NUTS chains ("nuts", ess is
    the smallest bulk ESS), or the single posterior mode ("map")."""
    if sampler not in SUGGEST_SAMPLERS:
        raise PlacementError(f"sampler must be one of {', '.join(SUGGEST_SAMPLERS)} for suggest; got {sampler!r}.")
    Xn, yn = np.asarray(Xn, dtype=np.float64), np.asarray(yn, dtype=np.float64)
    if sampler == "nuts":
        return _nuts_draws(Xn, yn, kernel, num, seed)
    mode, cov, _ = hyper_mode(Xn, yn, kernel, seed)
    if sampler == "map":
        ell, eta, sigma = _constrain(mode[None, :])
        return ell.reshape(1, -1), eta.reshape(1), sigma.reshape(1), 1.0
    T, W = _importance(Xn, yn, kernel, mode, cov, seed, num)
    u = (np.arange(num) + np.random.default_rng(seed).uniform()) / num  # systematic resampling
    idx = np.minimum(np.searchsorted(np.cumsum(W), u), len(W) - 1)
    ell, eta, sigma = _constrain(T[idx])
    return ell.reshape(num, -1), eta.reshape(num), sigma.reshape(num), float(1.0 / np.sum(W**2))


@functools.lru_cache(maxsize=16)
def _hyper_tools(kernel: str, n: int, d: int):
    """NUTS on the PyMC model, exported once per (kernel, n, d)."""
    from placement.engine import Engine
    from placement.kernels import KERNELS
    from placement.model import from_pymc
    from placement.nuts import NUTSConfig

    if kernel not in KERNELS:
        raise PlacementError(f"unknown kernel {kernel!r}; choose one of {', '.join(sorted(KERNELS))}.")
    placeholder = np.linspace(0.0, 1.0, n * d).reshape(n, d)  # shapes only; data are runtime inputs
    jm = from_pymc(suggest_model(placeholder, np.zeros(n), KERNELS[kernel]), "eta_sq")
    return jm, jax.jit(jax.vmap(jm.constrain)), Engine(jm, NUTSConfig(num_chains=4, num_warmup=500, num_draws=500))


def _nuts_draws(Xn, yn, kernel, num, seed):
    from placement.estimator import ess_bulk

    jm, constrain, eng = _hyper_tools(kernel, Xn.shape[0], Xn.shape[1])
    key = jax.random.PRNGKey(seed)
    st = eng.init(key, Xn, yn)
    _, sample = eng.draw(jax.random.fold_in(key, 1), st, Xn, yn)
    W = eng.sample_weights(sample, Xn, yn)
    u = (np.arange(num) + np.random.default_rng(seed).uniform()) / num
    idx = np.minimum(np.searchsorted(np.cumsum(W), u), len(W) - 1)
    nat = constrain(jnp.asarray(sample.theta[idx]))
    c = sample.chains
    ess = float(np.min(np.asarray(ess_bulk(sample.theta.reshape(c, -1, sample.theta.shape[1]), chain_axis=0, sample_axis=1))))
    return (np.asarray(nat["ell"]).reshape(num, -1), np.asarray(nat["eta"]).reshape(num),
            np.asarray(nat["sigma"]).reshape(num), ess)


# -- criteria ------------------------------------------------------------------------------
JITTER = 1e-9  # added to sigma^2 on the covariance's diagonal in the criteria


class CritData(NamedTuple):
    """Everything a criterion reads besides the batch: runtime arrays, so one compiled
    search serves every data set of the same shapes. The data covariance is factorised once
    per hyperparameter draw, before the search (crit_data); a batch is scored through
    rank-k (Schur complement) updates of these, O(n^2 k) per draw."""

    X: jax.Array  # (n, d) normalised inputs
    y: jax.Array  # (n,) standardised outputs
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


def _factor(kernel, X, y, G, l, e, s):
    K = gpjax.kernel_matrix(kernel, X, X, l, e) + (s**2 + JITTER) * jnp.eye(X.shape[0])
    _, Kinv = gpjax.chol_inverse(K)
    KG = gpjax.kernel_matrix(kernel, X, G, l, e)
    alpha = Kinv @ y
    WG = Kinv @ KG
    return Kinv, alpha, WG, WG.T, KG.T @ alpha, e**2 - jnp.sum(KG * WG, 0)


@functools.lru_cache(maxsize=16)
def _factoriser(kernel):
    """Jitted per-draw factorisation, one draw at a time (lax.map: no (M, n, n, d) temporaries)."""
    return jax.jit(lambda X, y, G, ell, eta, sigma: jax.lax.map(
        lambda a: _factor(kernel, X, y, G, *a), (ell, eta, sigma)))


def _batch_pred(kernel, data: CritData, B):
    """Per draw: mean (M, k) and covariance (M, k, k) of noisy observations at B given the
    data, and K_nB (M, n, k)."""
    def one(l, e, s, Kinv, alpha):
        Kb = gpjax.kernel_matrix(kernel, data.X, B, l, e)
        C = gpjax.kernel_matrix(kernel, B, B, l, e) - gpjax.quad_form(Kinv, Kb) + (s**2 + JITTER) * jnp.eye(B.shape[0])
        return Kb.T @ alpha, 0.5 * (C + C.T), Kb

    return jax.vmap(one)(data.ell, data.eta, data.sigma, data.Kinv, data.alpha)


def _update(kernel, data: CritData, B, C_b, Kb):
    """Per draw: Q = K_GB - K_Gn Kinv K_nB (M, g, k), R = Q C_B^-1 (M, g, k) and the
    posterior variance at G after adding B (M, g): var_G - diag(Q C_B^-1 Q^T)."""
    def one(l, e, WG, WGt, C, Kb, vG):
        Q = gpjax.kernel_matrix(kernel, data.G, B, l, e) - gpjax.transposed_product(WG, WGt, Kb)
        R = jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(C), True), Q.T).T
        return R, jnp.maximum(vG - jnp.sum(R * Q, 1), 1e-12)

    return jax.vmap(one)(data.ell, data.eta, data.WG, data.WGt, C_b, Kb, data.var_G)


def _etv(kernel, B, data: CritData):
    M = data.eta.shape[0]
    logw = jnp.full(M, -jnp.log(M))
    mu_b, C_b, Kb = _batch_pred(kernel, data, B)  # (M, k), (M, k, k)
    J = data.z.shape[0]
    src = jnp.arange(J) % M
    fant = mu_b[src] + jnp.einsum("jab,jb->ja", jnp.linalg.cholesky(C_b[src]), data.z)  # (J, k)
    ll = jax.vmap(lambda m, C: jax.vmap(lambda f: gpjax.mvn_logpdf(f, m, C))(fant))(mu_b, C_b)  # (M, J)
    W = jax.nn.softmax(logw[:, None] + ll, axis=0)  # (M, J): posterior weights given each fantasy
    R, var = _update(kernel, data, B, C_b, Kb)  # (M, g, k), (M, g)
    mean = data.mean_G[:, :, None] + jnp.einsum("mgk,mjk->mgj", R, fant[None] - mu_b[:, None, :])  # (M, g, J)
    m = jnp.einsum("mj,mgj->gj", W, mean)
    second = jnp.einsum("mj,mg->gj", W, var) + jnp.einsum("mj,mgj->gj", W, mean**2)
    return jnp.mean(second - m**2)


def _fixed_var(kernel, B, data: CritData):
    _, C_b, Kb = _batch_pred(kernel, data, B)
    _, var = _update(kernel, data, B, C_b, Kb)
    return jnp.mean(var, 0)  # (G,) posterior-averaged variance at fixed hyperparameters


def _ivar(kernel, B, data):
    return jnp.mean(_fixed_var(kernel, B, data))


def _mvar(kernel, B, data):
    return jnp.max(_fixed_var(kernel, B, data))


def _neg_mi(kernel, B, data):
    _, C_b, _ = _batch_pred(kernel, data, B)
    logdet = jax.vmap(lambda C, s: jnp.linalg.slogdet(C / (s**2 + JITTER))[1])(C_b, data.sigma)
    return -0.5 * jnp.mean(logdet)


_CRITERIA = {"expected_total_variance": _etv, "integrated_variance": _ivar, "max_variance": _mvar,
             "mutual_information": _neg_mi}


def _current(kind, kernel, data: CritData):
    """The criterion's value for the data in hand (no batch)."""
    mean, var = data.mean_G, jnp.maximum(data.var_G, 1e-12)
    if kind == "expected_total_variance":
        return jnp.mean(jnp.mean(var + mean**2, 0) - jnp.mean(mean, 0) ** 2)
    if kind == "integrated_variance":
        return jnp.mean(var)
    if kind == "max_variance":
        return jnp.max(jnp.mean(var, 0))
    return jnp.asarray(0.0)


def crit_data(Xn, yn, G, hyper, z, kernel: str = "matern52") -> CritData:
    """The criteria's runtime arrays, with the data covariance factorised once per draw."""
    ell, eta, sigma = hyper
    f = lambda a: jnp.asarray(a, dtype=jnp.float64)  # noqa: E731
    X, y, G, eta, sigma = f(Xn), f(yn), f(G), f(eta).reshape(-1), f(sigma).reshape(-1)
    ell = f(ell).reshape(eta.shape[0], -1)
    return CritData(X, y, G, ell, eta, sigma, f(z), *_factoriser(kernel)(X, y, G, ell, eta, sigma))


def make_criterion(kind, kernel, Xn, yn, G, hyper, z):
    """criterion(B (k, d)) -> scalar to minimise, and current() -> its value without a batch."""
    if kind not in _CRITERIA:
        raise PlacementError(f"unknown criterion {kind!r}; choose one of {', '.join(CRITERIA)}.")
    data = crit_data(Xn, yn, G, hyper, z, kernel)
    return (lambda B: _CRITERIA[kind](kernel, B, data)), (lambda: _current(kind, kernel, data))


@functools.lru_cache(maxsize=32)
def _searcher(kind: str, kernel: str, lr: float):
    """Jitted ``(batches (R, k, d), adam states, data, steps) -> (batches, states, values)``:
    projected adam from each batch for ``steps`` steps (a runtime value, so may be 0: the
    values at the batches), and ``init(batches)``, fresh adam states. Compiled once per
    (criterion, kernel, lr) and shapes; data and steps are runtime inputs, so every phase
    and every chunk of the search shares one compilation."""
    opt = optax.adam(lr)
    fn = functools.partial(_CRITERIA[kind], kernel)

    def run(B0, st0, data, steps):
        def body(_, carry):
            B, st = carry
            g = jax.grad(fn)(B, data)
            upd, st = opt.update(g, st, B)
            return jnp.clip(optax.apply_updates(B, upd), 0.0, 1.0), st

        B, st = jax.lax.fori_loop(0, steps, body, (B0, st0))
        return B, st, fn(B, data)

    return jax.jit(jax.vmap(opt.init)), jax.jit(jax.vmap(run, in_axes=(0, 0, None, None)))


SEARCH_CHUNK = 10  # the second phase checks for convergence every this many steps
SEARCH_RTOL = 1e-5  # ... and stops when no kept start improved by more than this (relative)


def search(kind, kernel, data: CritData, k: int, d: int, restarts: int, steps: int, lr: float, seed: int):
    """Projected adam on [0, 1]^(k x d) from scrambled Sobol starts; the best batch and value.

    Successive halving: every start runs the first quarter of the steps, the best quarter of
    the starts (at least one) run the rest with a fresh adam state, so the search costs about
    (restarts + 3 keep) / 4 full runs instead of ``restarts``. The starts go through in
    groups of ``keep`` (the last group padded by repeating its first start), so both phases
    run one compiled function. The second phase runs in chunks of SEARCH_CHUNK steps and
    stops early once a chunk improves no kept start by more than SEARCH_RTOL (relative);
    each start's best batch so far is kept."""
    from scipy.stats import qmc

    restarts, steps = max(int(restarts), 1), int(steps)
    starts = qmc.Sobol(d=k * d, scramble=True, seed=seed).random(restarts).reshape(-1, k, d)
    keep = max(1, restarts // 4)
    first = steps // 4 if keep < restarts else steps
    init, run = _searcher(kind, kernel, float(lr))
    clean = lambda v: np.where(np.isfinite(np.asarray(v)), np.asarray(v), np.inf)  # noqa: E731
    groups = -(-restarts // keep)
    pad = np.concatenate([np.arange(restarts), np.full(groups * keep - restarts, (groups - 1) * keep)])
    Bs, vals = [], []
    for i in range(groups):
        B0 = jnp.asarray(starts[pad[i * keep:(i + 1) * keep]])
        B, _, v = run(B0, init(B0), data, first)
        Bs.append(np.asarray(B))
        vals.append(clean(v))
    Bs, vals = np.concatenate(Bs)[:restarts], np.concatenate(vals)[:restarts]
    if first < steps:
        best = np.argsort(vals, kind="stable")[:keep]
        B = jnp.asarray(Bs[best])
        st, left = init(B), steps - first
        Bs, vals = np.asarray(B), vals[best]
        while left > 0:
            B, st, v = run(B, st, data, min(SEARCH_CHUNK, left))
            left -= SEARCH_CHUNK
            v = clean(v)
            gain = np.max((vals - v) / np.maximum(np.abs(v), 1e-300)) if np.all(np.isfinite(vals)) else np.inf
            better = v < vals
            Bs, vals = np.where(better[:, None, None], np.asarray(B), Bs), np.where(better, v, vals)
            if not gain > SEARCH_RTOL:
                break
    best = int(np.argmin(vals))
    return Bs[best], float(vals[best])


def grid_points(d: int, num: int, seed: int = 0):
    """Integration points: num evenly spaced for d = 1, else num scrambled Sobol points
    (a fixed number whatever d, so the cost per point does not grow with d)."""
    if d == 1:
        return np.linspace(0, 1, num)[:, None]
    from scipy.stats import qmc

    return qmc.Sobol(d=d, scramble=True, seed=seed).random(num)


# -- the whole thing --------------------------------------------------------------------
def prepare(X, y, bounds, cfg: SuggestConfig):
    """Every check on the request, before any work: returns (bounds (d, 2), Xn in [0, 1]^d,
    standardised y, (y mean, y sd))."""
    if not isinstance(cfg, SuggestConfig):
        raise PlacementError("cfg must be a SuggestConfig.")
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if X.ndim != 2 or X.shape[0] != y.shape[0]:
        raise PlacementError(f"X must be (n, d) and y (n,) with the same n; got {X.shape} and {y.shape}.")
    if not (np.isfinite(X).all() and np.isfinite(y).all()):
        raise PlacementError("X and y must be finite numbers (no NaN or infinity).")
    b = check_bounds(bounds, X)
    span = b[:, 1] - b[:, 0]
    Xn = (X - b[:, 0]) / span
    if np.any(Xn < -1e-9) or np.any(Xn > 1 + 1e-9):
        raise PlacementError("some data points lie outside the given bounds; widen bounds to include the data.")
    y_mean, y_sd = float(y.mean()), float(y.std()) or 1.0
    return b, np.clip(Xn, 0.0, 1.0), (y - y_mean) / y_sd, (y_mean, y_sd)


def suggest_arrays(X, y, bounds, cfg: SuggestConfig):
    """Return (suggested points (k, d), info dict) in the original units."""
    b, Xn, yn, (y_mean, y_sd) = prepare(X, y, bounds, cfg)
    span = b[:, 1] - b[:, 0]
    d = Xn.shape[1]
    ell, eta, sigma, ess = hyper_draws(Xn, yn, cfg.kernel, cfg.num_hyper, cfg.seed, cfg.sampler)
    G = grid_points(d, cfg.grid, cfg.seed)
    z = np.random.default_rng(cfg.seed).normal(size=(cfg.num_fantasies, int(cfg.k)))
    data = crit_data(Xn, yn, G, (ell, eta, sigma), z, cfg.kernel)
    Bn, after = search(cfg.criterion, cfg.kernel, data, int(cfg.k), d, cfg.restarts, cfg.steps, cfg.learning_rate, cfg.seed)
    before = float(_current(cfg.criterion, cfg.kernel, data))
    if cfg.criterion == "mutual_information":
        after = -after
    mean, sd = batch_mixture(cfg.kernel, data, Bn)
    info = {"criterion": cfg.criterion, "before": before, "after": after, "hyper_ess": ess,
            "pred_mean": mean * y_sd + y_mean, "pred_sd": sd * y_sd, "bounds": b, "y_scale": (y_mean, y_sd),
            "hyper": (ell, eta, sigma), "Xn": Xn, "yn": yn}
    return Bn * span + b[:, 0], info


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


@functools.lru_cache(maxsize=16)
def _mixture_fn(kernel):
    return jax.jit(lambda X, y, G, ell, eta, sigma: jax.lax.map(
        lambda a: gpjax.posterior(kernel, X, y, G, *a), (ell, eta, sigma)))


def suggest(df, k: int = 5, x_columns=None, y_column: str = "y", bounds=None, criterion: str = "expected_total_variance",
            kernel: str = "matern52", seed: int = 0, **options):
    """Python API: a DataFrame of k suggested points (input columns, pred_mean, pred_sd,
    criterion_before, criterion_after) for the observations in ``df``."""
    import pandas as pd

    X, y, names = frame_to_arrays(df, x_columns, y_column)
    cfg = SuggestConfig(k=k, criterion=criterion, kernel=kernel, seed=seed, **options)
    pts, info = suggest_arrays(X, y, bounds, cfg)
    out = pd.DataFrame(pts, columns=names)
    out["pred_mean"] = info["pred_mean"]
    out["pred_sd"] = info["pred_sd"]
    out["criterion_before"] = info["before"]
    out["criterion_after"] = info["after"]
    out.attrs["info"] = info
    return out
