"""Projections applied to the design after every optimizer update.

A design X has shape (n,) or (n, d); X_old is the design before the update. The constraints:

    bounds     lower <= X <= upper, per column
    spacing    |X_i - X_j| >= min_spacing for every pair, fixed points included
    fixed      X_i == X_old_i bit for bit, i in fixed
    max_step   |X_i - X_old_i| <= max_step for every point

``project`` returns a ``Projection``: a design that satisfies all of them (up to a float
tolerance of 1e-9 times the design's scale, checked by ``verify``), or X_old unchanged with a
one-line reason why the step was refused. Order of work:

1. Spacing and bounds, fixed points held where they are.
   1-D (also d = 1): the exact Euclidean projection. Fixed points cut the line into segments.
   Swapping two free points never brings them closer to their proposals, so the free points
   keep their order and each segment takes a contiguous run of them; a dynamic programme over
   segments picks the runs with the least total squared move. Inside a segment with bounds
   [L, U], m points z_0 < ... < z_{m-1} with gaps >= delta are exactly y_k = z_k - k delta
   non-decreasing in [L, U - (m-1) delta], and the nearest such y is the isotonic regression
   of x_k - k delta clipped to that interval.
   d > 1: push-apart sweeps (a pair closer than min_spacing moves apart along the line joining
   it, a free point taking the whole push from a fixed one), clipped to the bounds every
   sweep. A heuristic, hence verified afterwards; when it gets stuck, the step shrinks
   instead, X_old + t (X_new - X_old) clipped to the bounds, as for max_step below.
2. Step length: each point's move is clipped to max_step on its own (what the option
   promises). If that breaks spacing, the whole move shrinks, X_old + t (X - X_old), with the
   largest t that bisection finds to satisfy everything.
3. ``verify``; anything still violated refuses the step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from placement.errors import PlacementError

_SWEEPS = 2000  # d > 1 push-apart sweeps at most
_STALL = 100  # ... and stop early when the total overlap has not shrunk for this many sweeps


@dataclass(frozen=True)
class Constraints:
    """Box bounds, minimum spacing, fixed points and maximum step length.

    lower, upper: scalars or one value per column (None = unbounded).
    min_spacing: smallest allowed distance between two points (0 = none).
    fixed: indices of points that never move.
    max_step: largest displacement of one point in one outer step (None = no limit).
    """

    lower: object = None
    upper: object = None
    min_spacing: float = 0.0
    fixed: tuple = field(default_factory=tuple)
    max_step: float | None = None


class Projection(NamedTuple):
    """X: the projected design, or X_old itself when refused; refused: None or why not."""

    X: np.ndarray
    refused: str | None


def check_design_in_bounds(X: np.ndarray, c: Constraints) -> None:
    """Reject a starting design that no projection can repair: bounds with lower >= upper,
    points outside the bounds, unknown fixed indices, fixed points closer than min_spacing,
    and (one input column) free points that cannot fit min_spacing apart between the bounds
    and the fixed points. Free points closer than min_spacing are fine otherwise: the first
    projection moves them apart."""
    X = np.asarray(X, dtype=np.float64)
    P = X.reshape(len(X), -1)
    lo, hi = _bounds(P, c)
    if np.any(lo >= hi):
        raise PlacementError(f"bounds must have lower < upper; got lower={c.lower}, upper={c.upper}.")
    outside = np.nonzero(np.any((P < lo) | (P > hi), axis=1))[0]
    if outside.size:
        raise PlacementError(
            f"points {outside.tolist()} of the starting design lie outside the bounds "
            f"[{c.lower}, {c.upper}]; move them inside or widen constraints.lower/upper."
        )
    n = len(X)
    bad = [i for i in c.fixed if not (0 <= int(i) < n)]
    if bad:
        raise PlacementError(f"constraints.fixed names points {bad} but the design has {n} points (0..{n - 1}).")
    why = _fixed_too_close(P, _fixed(c, n), c.min_spacing, _tol(P))
    if why:
        raise PlacementError(f"{why} in the starting design; lower constraints.min_spacing, move one of "
                             f"them, or drop one from constraints.fixed.")
    if c.min_spacing > 0 and P.shape[1] == 1:  # 1-D: whether the free points fit at all is exact
        free = np.ones(n, dtype=bool)
        free[_fixed(c, n)] = False
        _, why = _project_1d(P[:, 0], free, c.min_spacing, float(lo[0]), float(hi[0]))
        if why:
            raise PlacementError(f"{why}, so no step could ever be taken; lower constraints.min_spacing or "
                                 "widen constraints.lower/upper.")


def verify(X: np.ndarray, X_old: np.ndarray, c: Constraints) -> str | None:
    """The first constraint that X violates (as a message), or None when X satisfies all.

    X, X_old: (n,) or (n, d). Tolerance: 1e-9 times max(1, largest |coordinate|), except for
    fixed points, which must equal X_old exactly."""
    X, X_old = np.asarray(X, dtype=np.float64), np.asarray(X_old, dtype=np.float64)
    if X.shape != X_old.shape:
        return f"the design has shape {X.shape} but the previous one {X_old.shape}"
    n = len(X)
    P, P_old = X.reshape(n, -1), X_old.reshape(n, -1)
    bad = np.nonzero(~np.all(np.isfinite(P), axis=1))[0]
    if bad.size:
        return f"point {bad[0]} has non-finite coordinates {P[bad[0]].tolist()}"
    tol = _tol(P, P_old)
    lo, hi = _bounds(P, c)
    out = np.nonzero(np.any((P < lo - tol) | (P > hi + tol), axis=1))[0]
    if out.size:
        return f"point {out[0]} at {_fmt(P[out[0]])} lies outside the bounds [{c.lower}, {c.upper}]"
    for i in _fixed(c, n):
        if P[i].tobytes() != P_old[i].tobytes():  # bit for bit: -0.0 is not 0.0
            return f"fixed point {i} moved from {_fmt(P_old[i])} to {_fmt(P[i])}"
    if c.min_spacing > 0 and n > 1:
        dist = _pairwise(P)
        iu = np.triu_indices(n, 1)
        close = np.nonzero(dist[iu] < c.min_spacing - tol)[0]
        if close.size:
            i, j = iu[0][close[0]], iu[1][close[0]]
            return f"points {i} and {j} are {dist[i, j]:.6g} apart, closer than min_spacing={c.min_spacing:g}"
    if c.max_step is not None:
        move = np.linalg.norm(P - P_old, axis=1)
        far = np.nonzero(move > c.max_step + tol)[0]
        if far.size:
            return f"point {far[0]} moved {move[far[0]]:.6g}, more than max_step={c.max_step:g}"
    return None


def project(X_new: np.ndarray, X_old: np.ndarray, c: Constraints) -> Projection:
    """Nearest design to X_new that satisfies every constraint (see the module docstring), or
    X_old with the reason the step is refused. X_new, X_old: (n,) or (n, d)."""
    X_old = np.array(X_old, dtype=np.float64)
    X_new = np.array(X_new, dtype=np.float64)
    if X_new.shape != X_old.shape:
        raise PlacementError(f"the updated design has shape {X_new.shape} but the design {X_old.shape}.")
    if verify(X_new, X_old, c) is None:
        return Projection(X_new, None)
    n = len(X_old)
    P_new, P_old = X_new.reshape(n, -1), X_old.reshape(n, -1)
    if not np.all(np.isfinite(P_new)):
        return Projection(X_old, "the optimizer proposed non-finite coordinates")
    fixed = _fixed(c, n)
    lo, hi = _bounds(P_old, c)
    tol = _tol(P_new, P_old)  # the same round-off allowance as verify's bounds check
    out = [i for i in fixed if np.any((P_old[i] < lo - tol) | (P_old[i] > hi + tol))]
    if out:
        return Projection(X_old, f"fixed point {out[0]} at {_fmt(P_old[out[0]])} lies outside the bounds")
    why = _fixed_too_close(P_old, fixed, c.min_spacing, _tol(P_old))
    if why:
        return Projection(X_old, why)
    free = np.ones(n, dtype=bool)
    free[fixed] = False
    Y = P_new.copy()
    Y[fixed] = P_old[fixed]
    if P_old.shape[1] == 1:
        y, why = _project_1d(Y[:, 0], free, c.min_spacing, float(lo[0]), float(hi[0]))
        Y = None if y is None else y[:, None]
    else:
        Y0 = Y
        Y, why = _push_apart(Y0, free, c.min_spacing, lo, hi)
        if why is not None:  # the push got stuck: fall back to a shorter step towards the proposal
            Y, why_short = _shrink(np.clip(Y0, lo, hi), P_old, c, free)
            why = None if why_short is None else f"{why}, and no shorter step works either ({why_short})"
    if why is None:
        Y, why = _limit_step(Y, P_old, c, free)
    if why is None and (bad := verify(Y, P_old, c)) is not None:
        why = f"no design found that satisfies every constraint ({bad})"
    if why is not None:
        return Projection(X_old, why)
    return Projection(Y.reshape(X_old.shape), None)


def _bounds(P: np.ndarray, c: Constraints):
    """Lower and upper bound per column of P (n, d), each (d,)."""
    d = P.shape[1:]
    lo = -np.inf if c.lower is None else np.asarray(c.lower, dtype=np.float64)
    hi = np.inf if c.upper is None else np.asarray(c.upper, dtype=np.float64)
    return np.broadcast_to(lo, d).astype(np.float64), np.broadcast_to(hi, d).astype(np.float64)


def _fixed(c: Constraints, n: int) -> np.ndarray:
    idx = sorted({int(i) for i in c.fixed})
    bad = [i for i in idx if not (0 <= i < n)]
    if bad:
        raise PlacementError(f"constraints.fixed names points {bad} but the design has {n} points (0..{n - 1}).")
    return np.asarray(idx, dtype=int)


def _tol(*arrays) -> float:
    scale = max(float(np.max(np.abs(a[np.isfinite(a)]), initial=0.0)) for a in arrays)
    return 1e-9 * max(1.0, scale)


def _fmt(x) -> str:
    return np.array2string(np.asarray(x), precision=6)


def _pairwise(P: np.ndarray) -> np.ndarray:
    return np.linalg.norm(P[:, None, :] - P[None, :, :], axis=-1)


def _fixed_too_close(P, fixed, delta, tol) -> str | None:
    if delta <= 0 or fixed.size < 2:
        return None
    dist = _pairwise(P[fixed])
    np.fill_diagonal(dist, np.inf)
    a, b = np.unravel_index(np.argmin(dist), dist.shape)
    if dist[a, b] < delta - tol:
        a, b = sorted((fixed[a], fixed[b]))
        return f"fixed points {a} and {b} are {dist.min():.6g} apart, closer than min_spacing={delta:g}"
    return None


def _pav(y):
    """Pool-adjacent-violators: the closest non-decreasing sequence to y (least squares)."""
    vals, wts, lens = [], [], []
    for v in y:
        vals.append(float(v)); wts.append(1.0); lens.append(1)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            w = wts[-2] + wts[-1]
            v = (vals[-2] * wts[-2] + vals[-1] * wts[-1]) / w
            lens[-2] += lens[-1]
            vals[-2], wts[-2] = v, w
            vals.pop(); wts.pop(); lens.pop()
    return np.repeat(vals, lens)


def _fit(x, L, U, delta):
    """Nearest z to sorted x with gaps >= delta inside [L, U] (x must fit): (z, squared move)."""
    k = np.arange(len(x)) * delta
    z = np.clip(_pav(x - k), L, U - k[-1]) + k
    return z, float(np.sum((z - x) ** 2))


def _project_1d(x, free, delta, lo, hi):
    """Exact projection of x (n,) onto bounds + spacing with x[~free] held: (z, None) or (None, why)."""
    z = x.copy()
    idx = np.nonzero(free)[0]
    if idx.size == 0:
        return z, None
    if delta <= 0:
        z[idx] = np.clip(x[idx], lo, hi)
        return z, None
    walls = np.concatenate([[-np.inf], np.sort(x[~free]), [np.inf]])
    L = np.maximum(lo, walls[:-1] + delta)  # segment s holds free points strictly between walls s and s+1
    U = np.minimum(hi, walls[1:] - delta)
    span = np.where(U >= L, np.minimum((U - L) / delta, idx.size), -1.0)
    cap = (np.floor(span + 1e-12) + 1).astype(int)  # how many points fit in each segment (at most all)
    order = idx[np.argsort(x[idx], kind="stable")]
    xs = x[order]
    p, S = xs.size, L.size
    if S == 1 and cap[0] >= p:  # no fixed points: one segment
        z[order] = _fit(xs, L[0], U[0], delta)[0]
        return z, None
    # O(S p^3) at worst: 0.15 s for a hundred free points, about a second for two hundred
    best = np.full((S + 1, p + 1), np.inf)  # best[s, k]: least squared move with the first k points in segments < s
    best[0, 0] = 0.0
    take = np.zeros((S + 1, p + 1), dtype=int)
    for s in range(S):
        for k in range(p + 1):
            for k0 in range(max(0, k - cap[s]), k + 1):
                if not np.isfinite(best[s, k0]):
                    continue
                cost = best[s, k0] + (_fit(xs[k0:k], L[s], U[s], delta)[1] if k > k0 else 0.0)
                if cost < best[s + 1, k]:
                    best[s + 1, k], take[s + 1, k] = cost, k0
    if not np.isfinite(best[S, p]):
        where = f"the bounds [{lo:g}, {hi:g}]" + (" and the fixed points" if S > 1 else "")
        return None, f"min_spacing={delta:g}: the {p} free points do not fit between {where}"
    k = p
    for s in range(S, 0, -1):
        k0 = take[s, k]
        if k > k0:
            z[order[k0:k]] = _fit(xs[k0:k], L[s - 1], U[s - 1], delta)[0]
        k = k0
    return z, None


def _push_apart(P, free, delta, lo, hi):
    """Sweeps pushing pairs closer than delta apart, fixed points never moving, clipped to the
    bounds every sweep: (P, None), or (None, why) when pairs are still too close."""
    P = P.copy()
    P[free] = np.clip(P[free], lo, hi)
    if delta <= 0 or free.sum() == 0:
        return P, None
    n, d = P.shape
    target = delta * (1 + 1e-10)  # a hair past delta, so float rounding cannot leave a pair short
    best, stall = np.inf, 0
    for _ in range(_SWEEPS):
        dist = _pairwise(P)
        ii, jj = np.nonzero(np.triu(dist < delta, 1))
        if ii.size == 0:
            return P, None
        overlap = float(np.sum(delta - dist[ii, jj]))
        stall = 0 if overlap < best * (1 - 1e-9) else stall + 1
        best = min(best, overlap)
        if stall >= _STALL:
            break
        for a, b in zip(ii, jj):
            v = P[a] - P[b]
            nd = np.linalg.norm(v)
            if nd >= delta or not (free[a] or free[b]):
                continue
            if nd > 0:
                u = v / nd
            else:  # coincident: a direction that differs from pair to pair
                u = np.random.default_rng([int(a), int(b)]).normal(size=d)
                u /= np.linalg.norm(u)
            gap = target - nd
            if free[a] and free[b]:
                P[a] += 0.5 * gap * u
                P[b] -= 0.5 * gap * u
            elif free[a]:
                P[a] += gap * u
            else:
                P[b] -= gap * u
        P[free] = np.clip(P[free], lo, hi)
    dist = _pairwise(P)
    np.fill_diagonal(dist, np.inf)
    a, b = np.unravel_index(np.argmin(dist), dist.shape)
    return None, (f"min_spacing={delta:g}: pushing points apart inside the bounds left points {min(a, b)} "
                  f"and {max(a, b)} {dist[a, b]:.6g} apart")


def _limit_step(Y, P_old, c, free):
    """Y (feasible but for max_step) with every move at most max_step: (Y', None) or (None, why)."""
    if c.max_step is None:
        return Y, None
    move = np.where(free[:, None], Y - P_old, 0.0)
    norm = np.linalg.norm(move, axis=1)
    if np.all(norm <= c.max_step):
        return Y, None
    ratio = c.max_step / np.maximum(norm, 1e-300)
    Z = _moved(P_old, move * np.minimum(1.0, ratio)[:, None], free)  # each point on its own
    if verify(Z, P_old, c) is None:
        return Z, None
    Z, why = _shrink(Y, P_old, c, free, float(min(1.0, ratio.min())))
    return Z, None if why is None else f"max_step={c.max_step:g}: no shorter step satisfies every constraint ({why})"


def _shrink(Y, P_old, c, free, t_max=1.0):
    """X_old + t (Y - X_old) for the largest t <= t_max that bisection finds to satisfy every
    constraint: (Z, None), or (None, the constraint that the shortest step tried breaks)."""
    move = np.where(free[:, None], Y - P_old, 0.0)
    Z = _moved(P_old, t_max * move, free)
    why = verify(Z, P_old, c)
    if why is None:
        return Z, None
    if (why_old := verify(P_old, P_old, c)) is not None:
        return None, f"the current design breaks it too: {why_old}"
    t_ok, t_bad = 0.0, t_max
    for _ in range(60):
        t = 0.5 * (t_ok + t_bad)
        why_t = verify(_moved(P_old, t * move, free), P_old, c)
        if why_t is None:
            t_ok = t
        else:
            t_bad, why = t, why_t
    if t_ok == 0.0:
        return None, why
    return _moved(P_old, t_ok * move, free), None


def _moved(P_old, move, free):
    """P_old + move for the free points; fixed points keep P_old's bits (-0.0 + 0.0 would not)."""
    return np.where(free[:, None], P_old + move, P_old)
