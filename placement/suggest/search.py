"""Gradient search for the batch: projected adam on [0, 1]^(k x d) from scrambled Sobol
starts, successive halving; and the integration points.

The compiled program is ``run(batches, adam states, data, steps)``: a function of the
search state and a runtime step count, so a caller may run it in chunks (the second
phase does, to stop at convergence)."""

from __future__ import annotations

import functools
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from placement import budget, memory
from placement.suggest.criteria import CritData, criterion


@functools.lru_cache(maxsize=32)
def _searcher(kind: str, kernel, lr: float):
    """Jitted ``(batches (R, k, d), adam states, data, steps) -> (batches, states, values)``:
    projected adam from each batch for ``steps`` steps (a runtime value, so may be 0: the
    values at the batches), and ``init(batches)``, fresh adam states. Compiled once per
    (criterion, kernel, lr) and shapes; data and steps are runtime inputs, so every phase
    and every chunk of the search shares one compilation."""
    opt = optax.adam(lr)
    fn = functools.partial(criterion(kind).value, kernel)

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
CALL_SECONDS = 0.5  # aim of one compiled call: Ctrl-C, SIGTERM and max_seconds act between calls


class SearchResult(NamedTuple):
    """The best batch (k, d) in [0, 1]^d, its criterion value, why the search ended early
    (None, or "max_seconds"), the starts searched at once and the peak bytes XLA planned."""

    batch: np.ndarray
    value: float
    cut_short: str | None
    group: int
    memory: int | None


class _Pace:
    """Steps per compiled call, so that a call takes about CALL_SECONDS: the first call runs
    one step and is timed, later calls run as many as fit (the fori_loop's step count is a
    runtime value, so any split of the steps is the same computation)."""

    def __init__(self):
        self.per_step = None

    def steps(self, left: int) -> int:
        if self.per_step is None:
            return min(1, left)
        return int(min(left, max(1, CALL_SECONDS // max(self.per_step, 1e-9))))

    def timed(self, call, n: int):
        t = time.perf_counter()
        out = jax.block_until_ready(call())
        self.per_step = (time.perf_counter() - t) / max(n, 1)
        return out


def _shapes(data):
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), data)


def _compile(run, init, data, g: int, k: int, d: int):
    """The search step compiled ahead of time for g starts at once (nothing is allocated);
    kept per shapes, as jit keeps its own compilations."""
    return _compiled(run, init, _shapes(data), g, k, d)


@functools.lru_cache(maxsize=64)
def _compiled(run, init, shapes, g: int, k: int, d: int):
    B = jax.ShapeDtypeStruct((g, k, d), jnp.float64)
    st = jax.eval_shape(init, B)
    return run.lower(B, st, shapes, 0).compile()


def _nbytes(shapes) -> int:
    return sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in jax.tree_util.tree_leaves(shapes))


def plan_search(kind, kernel, shapes: CritData, k: int, d: int, restarts: int, lr: float, limit: int):
    """(starts at once g, compiled step, its peak bytes beyond the data) for a search over
    criterion data of these shapes (ShapeDtypeStructs: planned before the data exist). The
    data stay resident while the search runs, so the step gets ``limit`` less their bytes;
    g is the largest number of starts at once (<= restarts // 4) whose step fits."""
    init, run = _searcher(kind, kernel, float(lr))
    keep = max(1, max(int(restarts), 1) // 4)
    resident = _nbytes(shapes)
    n, M, J = int(shapes.X.shape[0]), int(shapes.ell.shape[0]), int(shapes.z.shape[0])
    return memory.fit_batch(
        lambda g: _compiled(run, init, shapes, g, k, d), keep, max(0, limit - resident),
        lambda b: f"the batch search (n={n} points, {M} hyperparameter draws, {J} fantasies, k={k}; one start "
                  f"at a time, beside {memory.human(resident)} of criterion data)",
        "Lower search.num_hyper, search.num_fantasies or search.grid, use sampler=map, or raise max_memory.",
        resident)


def crit_shapes(n: int, d: int, M: int, J: int, k: int, g: int) -> CritData:
    """The shapes of criteria.crit_data's arrays for n points (pending included) in d inputs,
    M hyperparameter draws, J fantasies of k points and g integration points."""
    S = lambda *s: jax.ShapeDtypeStruct(s, jnp.float64)  # noqa: E731
    return CritData(S(n, d), S(M, n), S(g, d), S(M, d), S(M), S(M), S(J, k), S(M, n, n), S(M, n), S(M, n, g),
                    S(M, g, n), S(M, g), S(M, g))


# Peak bytes of the work before the search, in n x n float64 matrices (n the data points, p
# = inputs + 2 hyperparameters): the largest of the hyperparameter mode's Newton step on all
# the data (the closed-form score: dK/dtheta, K^-1 dK/dtheta and forward-over-reverse Hessian
# tangents, p^2 + 4p + 2 matrices by XLA's memory analysis at p = 3, 4, 6, 10), the importance
# rounds' log densities (4 at a time, 2 matrices each) and NUTS's 4 chains; and the
# factorisation's temporaries beside its outputs (7 + 1.7 d matrices). tests/test_long_work.py
# checks both bounds against XLA's analysis of those compiled programs.
def hyper_matrices(d: int) -> float:
    p = d + 2
    return p * p + 5.0 * p + 4.0


def factor_matrices(d: int) -> float:
    return 8.0 + 2.0 * d


def plan_request(cfg, n: int, p: int, d: int, kernel, crit) -> dict:
    """Memory of a whole suggest request, planned before any of it runs; one PlacementError
    naming the first stage that cannot fit, its size and what to change. Stages: the
    hyperparameter posterior (n x n work, cannot be split), the criterion data (an n x n
    inverse per draw, resident during the search) and the search (fewer starts at once when
    the preferred group does not fit: ``plan_search``). Returns the planned bytes per stage
and ``limit``, max_memory in bytes, resolved once (auto is a share of the memory available
before the request made its data), for the search to use.
    (approx=hsgp data are not n x n; only the search is planned for them, by batch_search.)"""
    from placement.errors import PlacementError

    limit = memory.limit(cfg.max_memory)
    M0 = 1 if cfg.sampler == "map" else int(cfg.num_hyper)
    M = len(crit.draws(np.ones((M0, d)), np.ones(M0), np.ones(M0))[1])
    J = M * -(-int(cfg.num_fantasies) // M)
    N, g = n + p, int(cfg.grid)
    hyper_bytes = int(8 * hyper_matrices(d) * n * n)
    if hyper_bytes > limit:
        raise PlacementError(
            f"the hyperparameter posterior (n={n} points in {d} inputs: n x n matrices for each of the {d + 2} "
            f"hyperparameters) needs {memory.human(hyper_bytes)} but max_memory allows {memory.human(limit)}. "
            f"Use fewer data points (e.g. every other row; the memory grows as n^2) or raise max_memory.")
    shapes = crit_shapes(N, d, M, J, int(cfg.k), g)
    data_bytes = _nbytes(shapes)
    crit_bytes = data_bytes + int(8 * factor_matrices(d) * N * N)
    if crit_bytes > limit:
        raise PlacementError(
            f"the criterion data (n={N} points, {M} hyperparameter draws: an n x n inverse per draw, {g} grid "
            f"points) need {memory.human(crit_bytes)} but max_memory allows {memory.human(limit)}. Lower "
            f"search.num_hyper (the memory grows with it), use sampler=map (one draw), use fewer data points, "
            f"or raise max_memory.")
    group, _, search_bytes = plan_search(cfg.criterion, kernel, shapes, int(cfg.k), d, cfg.restarts,
                                         cfg.learning_rate, limit)
    return {"limit": limit, "hyperparameters": hyper_bytes, "criterion_data": crit_bytes,
            "search": None if search_bytes is None else data_bytes + search_bytes, "search_group": group}


def _padded(B, g: int):
    """B (m, k, d) in groups of g starts, the last padded by repeating its first start."""
    return [B[idx] for idx, _ in budget.chunk_indices(B.shape[0], g)]


def _advance(call, B, st, data, steps: int, pace: _Pace, tick):
    """``steps`` adam steps from (B, st) in calls of pace.steps(); ``tick(B, st, v, n)`` after
    each call (progress, deadline; Ctrl-C and SIGTERM take effect there)."""
    v = None
    while steps > 0:
        n = pace.steps(steps)
        B, st, v = pace.timed(lambda: call(B, st, data, n), n)
        steps -= n
        tick(B, st, v, n)
    return B, st, v


def batch_search(kind, kernel, data: CritData, k: int, d: int, restarts: int, steps: int, lr: float, seed: int,
                 max_memory=None) -> SearchResult:
    """Projected adam on [0, 1]^(k x d) from scrambled Sobol starts; the best batch and value.

    Successive halving: every start runs the first quarter of the steps, the best quarter of
    the starts (at least one, ``keep``) run the rest with a fresh adam state, so the search
    costs about (restarts + 3 keep) / 4 full runs instead of ``restarts``. The second phase
    checks every SEARCH_CHUNK steps and stops early once a check improves no kept start by
    more than SEARCH_RTOL (relative); each start's best batch so far is kept.

    Long work: the starts go through in groups of g <= keep (the last group padded by
    repeating its first start), g the largest whose compiled step fits in ``max_memory``
    (``placement.memory``; an error naming the sizes when one start does not fit). Steps run
    in compiled calls of about CALL_SECONDS; between calls ``placement.budget.checkpoint``
    reports progress and ends the search when the time budget is spent: the best batch so
    far is returned with ``cut_short="max_seconds"`` (an error if no batch was scored yet)."""
    from scipy.stats import qmc

    restarts, steps = max(int(restarts), 1), int(steps)
    starts = qmc.Sobol(d=k * d, scramble=True, seed=seed).random(restarts).reshape(-1, k, d)
    keep = max(1, restarts // 4)
    first = steps // 4 if keep < restarts else steps
    init, run = _searcher(kind, kernel, float(lr))
    n = int(data.X.shape[0])
    g, call, need = plan_search(kind, kernel, _shapes(data), k, d, restarts, lr, memory.limit(max_memory))
    clean = lambda v: np.where(np.isfinite(np.asarray(v)), np.asarray(v), np.inf)  # noqa: E731
    total = restarts * first + keep * (steps - first)
    best = {"B": None, "v": np.inf, "done": 0}

    def tick(B, st, v, m, label):
        v = clean(v)
        i = int(np.argmin(v))
        if v[i] < best["v"]:  # finite values only: a batch whose criterion is not finite is no answer
            best.update(B=np.asarray(B)[i], v=float(v[i]))
        best["done"] += m * len(v)
        budget.checkpoint(min(best["done"], total), total, f"start-steps, {label}, best {best['v']:.4g}")

    pace = _Pace()
    try:
        parts = []
        for i, B0 in enumerate(_padded(jnp.asarray(starts), g)):
            B, _, v = _advance(call, B0, init(B0), data, first, pace,
                               lambda B, st, v, m: tick(B, st, v, m, f"starts {i * g + 1}-{(i + 1) * g}/{restarts}"))
            parts.append((np.asarray(B), clean(v)))
        Bs = np.concatenate([p[0] for p in parts])[:restarts]
        vals = np.concatenate([p[1] for p in parts])[:restarts]
        if first < steps:
            order = np.argsort(vals, kind="stable")[:keep]
            Bs, vals = Bs[order], vals[order]
            groups = [(B, init(B)) for B in _padded(jnp.asarray(Bs), g)]
            left = steps - first
            while left > 0:
                m = min(SEARCH_CHUNK, left)
                out = [_advance(call, B, st, data, m, pace, lambda B, st, v, n: tick(B, st, v, n, "refining"))
                       for B, st in groups]
                groups = [(B, st) for B, st, _ in out]
                left -= m
                B = np.concatenate([np.asarray(o[0]) for o in out])[:keep]
                v = np.concatenate([clean(o[2]) for o in out])[:keep]
                gain = np.max((vals - v) / np.maximum(np.abs(v), 1e-300)) if np.all(np.isfinite(vals)) else np.inf
                better = v < vals
                Bs, vals = np.where(better[:, None, None], B, Bs), np.where(better, v, vals)
                if not gain > SEARCH_RTOL:
                    break
        i = int(np.argmin(vals))
        return SearchResult(Bs[i], float(vals[i]), None, g, need)
    except budget.OutOfTime:
        if best["B"] is None:
            raise budget.nothing_yet(budget.current().max_seconds, "the search scored a first batch") from None
        return SearchResult(best["B"], best["v"], "max_seconds", g, need)
    except Exception as e:
        if memory.is_oom(e):
            raise memory.oom_error(e, f"the batch search (n={n} points, k={k})",
                                   "Lower search.num_hyper or search.num_fantasies, or use sampler=map.") from None
        raise


def grid_points(d: int, num: int, seed: int = 0):
    """Integration points: num evenly spaced for d = 1, else num scrambled Sobol points
    (a fixed number whatever d, so the cost per point does not grow with d)."""
    if d == 1:
        return np.linspace(0, 1, num)[:, None]
    from scipy.stats import qmc

    return qmc.Sobol(d=d, scramble=True, seed=seed).random(num)
