"""Where to measure next: a jointly chosen batch of k new points from data in hand.

1. Read the table, normalise inputs to [0, 1]^d (bounds default to the data range) and
   standardise y.
2. Hyperparameter posterior of a GP (PyMC model, kernel from the config) by the engine's
   importance sampler; M draws resampled by weight.
3. Criterion of a candidate batch B, differentiable in B:
   expected_total_variance (default): domain-averaged variance of the mixture predictive
   after adding B, *including* Var over hyperparameters of E[f | theta], with the
   hyperparameter posterior updated by fantasised observations at B (fixed normal draws,
   so fantasies move smoothly with B; the existing draws are reweighted by the
   fantasies' likelihood -- the weighted form of the gradient identity, no new NUTS).
   integrated_variance: posterior-averaged variance at fixed hyperparameters (what most
   tools compute). max_variance. mutual_information (expected log-det information gain).
4. Gradient search (adam, projected onto the box) from space-filling Sobol starts.
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
def suggest_model(Xn, yn, kernel_cls):
    """GP on normalised inputs and standardised y; weakly informative priors for that scale."""
    import pymc as pm

    d = Xn.shape[1]
    with pm.Model() as model:
        Xd = pm.Data("X", Xn)
        yd = pm.Data("y", yn)
        ell = pm.InverseGamma("ell", mu=0.3, sigma=0.2, shape=(d,))
        eta = pm.HalfNormal("eta", sigma=1.5)
        sigma = pm.HalfNormal("sigma", sigma=0.5)
        gp = pm.gp.Marginal(cov_func=eta**2 * kernel_cls(d, ls=ell))
        gp.marginal_likelihood("y_obs", X=Xd, y=yd, sigma=sigma)
        pm.Deterministic("eta_sq", eta**2)
    return model


@functools.lru_cache(maxsize=64)
def _hyper_tools(kernel: str, n: int, d: int, sampler: str):
    """Export the hyperparameter model once per (kernel, n, d, sampler) and keep its compiled
    functions: a sequential user (or a benchmark) re-fitting at a data size seen before pays
    no PyMC export and no compilation."""
    from placement.engine import Engine
    from placement.importance import ISConfig
    from placement.kernels import KERNELS
    from placement.laplace import make_laplace
    from placement.model import from_pymc

    if kernel not in KERNELS:
        raise PlacementError(f"unknown kernel {kernel!r}; choose one of {', '.join(sorted(KERNELS))}.")
    placeholder = np.linspace(0.0, 1.0, n * d).reshape(n, d)  # shapes only; data are runtime inputs
    jm = from_pymc(suggest_model(placeholder, np.zeros(n), KERNELS[kernel]), "eta_sq")
    constrain = jax.jit(jax.vmap(jm.constrain))
    if sampler == "map":
        return jm, constrain, make_laplace(jm.logdensity), None
    if sampler == "nuts":
        from placement.nuts import NUTSConfig

        return jm, constrain, None, Engine(jm, NUTSConfig(num_chains=4, num_warmup=500, num_draws=500))
    return jm, constrain, None, Engine(jm, ISConfig(num_samples=4096, adapt_samples=2048))


def hyper_draws(Xn, yn, kernel: str, num: int, seed: int, sampler: str = "bayes"):
    """(ell (M, d), eta (M,), sigma (M,), ess): M draws resampled by weight from the
    importance posterior ("bayes"), M draws thinned evenly from NUTS chains ("nuts", ess is
    the smallest bulk ESS), or the single posterior mode ("map")."""
    if sampler not in SUGGEST_SAMPLERS:
        raise PlacementError(f"sampler must be one of {', '.join(SUGGEST_SAMPLERS)} for suggest; got {sampler!r}.")
    Xn, yn = np.asarray(Xn, dtype=np.float64), np.asarray(yn, dtype=np.float64)
    jm, constrain, laplace, eng = _hyper_tools(kernel, Xn.shape[0], Xn.shape[1], sampler)
    key = jax.random.PRNGKey(seed)
    if sampler == "map":
        lap = laplace(key, jnp.asarray(jm.initial_point), Xn, yn)
        nat = constrain(lap.mode[None, :])
        return (np.asarray(nat["ell"]).reshape(1, -1), np.asarray(nat["eta"]).reshape(1),
                np.asarray(nat["sigma"]).reshape(1), 1.0)
    st = eng.init(key, Xn, yn)
    _, sample = eng.draw(jax.random.fold_in(key, 1), st, Xn, yn)
    W = eng.sample_weights(sample, Xn, yn)
    u = (np.arange(num) + np.random.default_rng(seed).uniform()) / num  # systematic resampling
    idx = np.minimum(np.searchsorted(np.cumsum(W), u), len(W) - 1)
    nat = constrain(jnp.asarray(sample.theta[idx]))
    ell = np.asarray(nat["ell"]).reshape(num, -1)
    ess = float(1.0 / np.sum(W**2))
    if sampler == "nuts":
        from placement.estimator import ess_bulk

        c = sample.chains
        ess = float(np.min(np.asarray(ess_bulk(sample.theta.reshape(c, -1, sample.theta.shape[1]), chain_axis=0, sample_axis=1))))
    return ell, np.asarray(nat["eta"]).reshape(num), np.asarray(nat["sigma"]).reshape(num), ess


# -- criteria ------------------------------------------------------------------------------
class CritData(NamedTuple):
    """Everything a criterion reads besides the batch: runtime arrays, so one compiled
    search serves every data set of the same shapes."""

    X: jax.Array  # (n, d) normalised inputs
    y: jax.Array  # (n,) standardised outputs
    G: jax.Array  # (g, d) integration points in [0, 1]^d
    ell: jax.Array  # (M, d) hyperparameter draws
    eta: jax.Array  # (M,)
    sigma: jax.Array  # (M,)
    z: jax.Array  # (J, k) fixed normal draws for the fantasies


def _post_with(kernel, data: CritData, B, Y):
    """Per hyperparameter draw: predictive mean at G for each column of Y, variance at G,
    after adding the batch B to the data."""
    Xa = jnp.concatenate([data.X, B])

    def one(l, e, s):
        K = gpjax.kernel_matrix(kernel, Xa, Xa, l, e) + (s**2 + 1e-9) * jnp.eye(Xa.shape[0])
        L = jnp.linalg.cholesky(K)
        Kg = gpjax.kernel_matrix(kernel, Xa, data.G, l, e)
        A = jax.scipy.linalg.solve_triangular(L, Kg, lower=True)
        return Kg.T @ jax.scipy.linalg.cho_solve((L, True), Y), jnp.maximum(e**2 - jnp.sum(A * A, 0), 1e-12)

    return jax.vmap(one)(data.ell, data.eta, data.sigma)


def _batch_pred(kernel, data: CritData, B):
    return jax.vmap(lambda l, e, s: gpjax.batch_predictive(kernel, data.X, data.y, B, l, e, s))(data.ell, data.eta, data.sigma)


def _etv(kernel, B, data: CritData):
    M = data.eta.shape[0]
    logw = jnp.full(M, -jnp.log(M))
    mu_b, C_b = _batch_pred(kernel, data, B)  # (M, k), (M, k, k)
    J = data.z.shape[0]
    src = jnp.arange(J) % M
    fant = mu_b[src] + jnp.einsum("jab,jb->ja", jnp.linalg.cholesky(C_b[src]), data.z)  # (J, k)
    ll = jax.vmap(lambda m, C: jax.vmap(lambda f: gpjax.mvn_logpdf(f, m, C))(fant))(mu_b, C_b)  # (M, J)
    W = jax.nn.softmax(logw[:, None] + ll, axis=0)  # (M, J): posterior weights given each fantasy
    Y = jnp.concatenate([jnp.broadcast_to(data.y[:, None], (data.y.shape[0], J)), fant.T])  # (n + k, J)
    mean, var = _post_with(kernel, data, B, Y)  # (M, G, J), (M, G)
    m = jnp.einsum("mj,mgj->gj", W, mean)
    second = jnp.einsum("mj,mg->gj", W, var) + jnp.einsum("mj,mgj->gj", W, mean**2)
    return jnp.mean(second - m**2)


def _fixed_var(kernel, B, data: CritData):
    _, var = _post_with(kernel, data, B, jnp.concatenate([data.y, jnp.zeros(B.shape[0])])[:, None])
    return jnp.mean(var, 0)  # (G,) posterior-averaged variance at fixed hyperparameters


def _ivar(kernel, B, data):
    return jnp.mean(_fixed_var(kernel, B, data))


def _mvar(kernel, B, data):
    return jnp.max(_fixed_var(kernel, B, data))


def _neg_mi(kernel, B, data):
    _, C_b = _batch_pred(kernel, data, B)
    logdet = jax.vmap(lambda C, s: jnp.linalg.slogdet(C / (s**2 + 1e-9))[1])(C_b, data.sigma)
    return -0.5 * jnp.mean(logdet)


_CRITERIA = {"expected_total_variance": _etv, "integrated_variance": _ivar, "max_variance": _mvar,
             "mutual_information": _neg_mi}


def _current(kind, kernel, data: CritData):
    """The criterion's value for the data in hand (no batch)."""
    mean, var = jax.vmap(lambda l, e, s: gpjax.posterior(kernel, data.X, data.y, data.G, l, e, s))(data.ell, data.eta, data.sigma)
    if kind == "expected_total_variance":
        return jnp.mean(jnp.mean(var + mean**2, 0) - jnp.mean(mean, 0) ** 2)
    if kind == "integrated_variance":
        return jnp.mean(var)
    if kind == "max_variance":
        return jnp.max(jnp.mean(var, 0))
    return jnp.asarray(0.0)


def crit_data(Xn, yn, G, hyper, z) -> CritData:
    ell, eta, sigma = hyper
    f = lambda a: jnp.asarray(a, dtype=jnp.float64)  # noqa: E731
    return CritData(f(Xn), f(yn), f(G), f(ell).reshape(f(eta).shape[0], -1), f(eta).reshape(-1), f(sigma).reshape(-1), f(z))


def make_criterion(kind, kernel, Xn, yn, G, hyper, z):
    """criterion(B (k, d)) -> scalar to minimise, and current() -> its value without a batch."""
    if kind not in _CRITERIA:
        raise PlacementError(f"unknown criterion {kind!r}; choose one of {', '.join(CRITERIA)}.")
    data = crit_data(Xn, yn, G, hyper, z)
    return (lambda B: _CRITERIA[kind](kernel, B, data)), (lambda: _current(kind, kernel, data))


@functools.lru_cache(maxsize=32)
def _searcher(kind: str, kernel: str, steps: int, lr: float):
    """Jitted ``(starts (R, k, d), data) -> (batches, values)``: projected adam from each start.
    Compiled once per (criterion, kernel, steps, lr) and shapes; data are runtime inputs."""
    opt = optax.adam(lr)
    fn = functools.partial(_CRITERIA[kind], kernel)

    def run(B0, data):
        def body(carry, _):
            B, st = carry
            v, g = jax.value_and_grad(fn)(B, data)
            upd, st = opt.update(g, st, B)
            return (jnp.clip(optax.apply_updates(B, upd), 0.0, 1.0), st), v

        (B, _), _ = jax.lax.scan(body, (B0, opt.init(B0)), None, length=steps)
        return B, fn(B, data)

    return jax.jit(jax.vmap(run, in_axes=(0, None)))


def search(kind, kernel, data: CritData, k: int, d: int, restarts: int, steps: int, lr: float, seed: int):
    """Projected adam on [0, 1]^(k x d) from scrambled Sobol starts; the best batch and value."""
    from scipy.stats import qmc

    starts = qmc.Sobol(d=k * d, scramble=True, seed=seed).random(max(restarts, 1)).reshape(-1, k, d)
    Bs, vals = _searcher(kind, kernel, int(steps), float(lr))(jnp.asarray(starts), data)
    vals = np.where(np.isfinite(np.asarray(vals)), np.asarray(vals), np.inf)
    best = int(np.argmin(vals))
    return np.asarray(Bs[best]), float(vals[best])


def grid_points(d: int, num: int, seed: int = 0):
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
    data = crit_data(Xn, yn, G, (ell, eta, sigma), z)
    Bn, after = search(cfg.criterion, cfg.kernel, data, int(cfg.k), d, cfg.restarts, cfg.steps, cfg.learning_rate, cfg.seed)
    before = float(_current(cfg.criterion, cfg.kernel, data))
    if cfg.criterion == "mutual_information":
        after = -after
    mean, sd = mixture_predictive(cfg.kernel, Xn, yn, Bn, (ell, eta, sigma))
    info = {"criterion": cfg.criterion, "before": before, "after": after, "hyper_ess": ess,
            "pred_mean": mean * y_sd + y_mean, "pred_sd": sd * y_sd, "bounds": b, "y_scale": (y_mean, y_sd),
            "hyper": (ell, eta, sigma), "Xn": Xn, "yn": yn}
    return Bn * span + b[:, 0], info


def mixture_predictive(kernel, Xn, yn, Gn, hyper):
    ell, eta, sigma = (jnp.asarray(h) for h in hyper)
    mean, var = jax.vmap(lambda l, e, s: gpjax.posterior(kernel, jnp.asarray(Xn), jnp.asarray(yn), jnp.asarray(Gn), l, e, s))(ell, eta, sigma)
    mean, var = np.asarray(mean), np.asarray(var)
    return mean.mean(0), np.sqrt(var.mean(0) + mean.var(0))


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
