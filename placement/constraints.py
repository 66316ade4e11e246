"""Projections applied to the design after every optimizer update.

All functions take and return NumPy arrays of the design's shape, (n,) or (n, d).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from placement.errors import PlacementError


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


def check_design_in_bounds(X: np.ndarray, c: Constraints) -> None:
    lo, hi = _bounds(X, c)
    if np.any(lo >= hi):
        raise PlacementError(f"bounds must have lower < upper; got lower={c.lower}, upper={c.upper}.")
    outside = np.nonzero(np.any(np.atleast_2d((X < lo) | (X > hi)).reshape(len(X), -1), axis=1))[0]
    if outside.size:
        raise PlacementError(
            f"points {outside.tolist()} of the starting design lie outside the bounds "
            f"[{c.lower}, {c.upper}]; move them inside or widen constraints.lower/upper."
        )
    n = len(X)
    bad = [i for i in c.fixed if not (0 <= int(i) < n)]
    if bad:
        raise PlacementError(f"constraints.fixed names points {bad} but the design has {n} points (0..{n - 1}).")


def _bounds(X, c: Constraints):
    lo = -np.inf if c.lower is None else np.asarray(c.lower, dtype=np.float64)
    hi = np.inf if c.upper is None else np.asarray(c.upper, dtype=np.float64)
    return np.broadcast_to(lo, X.shape[1:]) if X.ndim > 1 else lo, np.broadcast_to(hi, X.shape[1:]) if X.ndim > 1 else hi


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


def _space_1d(x, delta, lo, hi):
    """Nearest ordering-preserving configuration with gaps >= delta inside [lo, hi]."""
    order = np.argsort(x, kind="stable")
    k = np.arange(len(x)) * delta
    z = _pav(x[order] - k) + k
    n = len(x)
    z = np.clip(z, lo + k, hi - (n - 1) * delta + k) if np.isfinite(lo) and np.isfinite(hi) else z
    out = np.empty_like(x)
    out[order] = z
    return out


def _space_nd(X, delta, iters=50):
    """Push pairs closer than delta apart symmetrically (a few sweeps)."""
    X = X.copy()
    for _ in range(iters):
        diff = X[:, None, :] - X[None, :, :]
        dist = np.linalg.norm(diff, axis=-1) + np.eye(len(X)) * 1e9
        i, j = np.nonzero(np.triu(dist < delta, 1))
        if i.size == 0:
            break
        for a, b in zip(i, j):
            d = X[a] - X[b]
            nd = np.linalg.norm(d)
            u = d / nd if nd > 0 else np.eye(X.shape[1])[0]
            push = 0.5 * (delta - nd) + 1e-12
            X[a] += push * u
            X[b] -= push * u
    return X


def project(X_new: np.ndarray, X_old: np.ndarray, c: Constraints) -> np.ndarray:
    """Apply max step, fixed points, spacing and bounds (in that order) to an updated design."""
    X = np.array(X_new, dtype=np.float64)
    if c.max_step is not None:
        step = (X - X_old).reshape(len(X), -1)
        norm = np.linalg.norm(step, axis=1, keepdims=True)
        scale = np.minimum(1.0, c.max_step / np.maximum(norm, 1e-300))
        X = X_old + (step * scale).reshape(X.shape)
    fixed = np.asarray(list(c.fixed), dtype=int)
    lo, hi = _bounds(X, c)
    if c.min_spacing > 0:
        if X.ndim == 1:
            X = _space_1d(X, c.min_spacing, float(lo), float(hi))
        else:
            X = _space_nd(X, c.min_spacing)
    X = np.clip(X, lo, hi)
    if fixed.size:
        X[fixed] = X_old[fixed]
    return X
