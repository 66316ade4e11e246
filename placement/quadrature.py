"""Deterministic quadrature over a few unconstrained parameters (``sampler=quadrature``).

Offered for models with at most ``max_params`` (4) unconstrained parameters whose posterior
is one connected region around the Laplace mode: unimodal, skewed, heavy-tailed (tails
decaying like exp(-|u|) in the unconstrained coordinates), with shoulders or lobes inside
the searched box. Not for well-separated modes (the grid is laid out around the one mode the
Laplace fit finds), nor for tails that still carry mass ``max_sds`` sds out (``edge_mass``
then says so).

The grid, laid out afresh at every design X from a Laplace fit (mode m, covariance C):

* axes: the coordinate axes scaled by the Laplace marginal sds, or the principal axes of C
  when two parameters are correlated beyond ``max_corr`` (``axes="auto"``). Long tails of
  positive parameters run along the coordinate axes, and a rotated box puts far corners
  where the model overflows.
* reach, per axis and side: the log density along lines through the mode (and through
  points ``offsets`` sds away in the other axes); the half-axis ends where every line has
  fallen ``drop`` nats below the mode (at most ``max_sds`` sds out).
* stretch: u_k = m_k + a_k sinh(t_k), a_k = ``scale`` sd_k, t_k uniform from
  -asinh(R-/a_k) to asinh(R+/a_k) on 4 j + 1 nodes (trapezoid weights a_k cosh t_k): dense
  at the mode and still reaching the far tails.
* nodes per axis: ``allocate``, once per problem at the first design: from ``start_points``
  per axis, double the axis whose halving moves dF/dX most, within ``budget`` nodes (the
  seed problem gets 33 x 33 x 65: its small noise lobe is a narrow ridge in log sigma).
  The grid's shape then stays fixed, so everything compiles once.
* levels: ``Sample.twos`` marks, per node and axis, the half- and quarter-resolution
  sub-grids; the estimator (``placement.estimator.quadrature_se``) turns the per-axis
  differences between levels into the standard error.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from placement.errors import PlacementError
from placement.estimator import Sample, axis_differences, quadrature_levels, shared_logdensity, shared_terms
from placement.laplace import Laplace, make_laplace
from placement.samplers import Sampler, register

AXES = ("auto", "coordinate", "principal")


@dataclass(frozen=True)
class QuadConfig:
    """Settings for ``sampler=quadrature`` (documented in conf/sampler/quadrature.yaml)."""

    points: int | tuple | None = None  # nodes per axis (4 j + 1, >= 9), one or per axis; None: allocate
    budget: int = 80_000  # most grid nodes when allocating
    start_points: int = 17  # nodes per axis of the allocation's first grid
    axes: str = "auto"  # "auto" | "coordinate" | "principal"
    max_corr: float = 0.9  # auto: principal axes when a Laplace correlation exceeds this
    scale: float = 4.0  # sinh scale a_k, in Laplace sds
    drop: float = 36.0  # nats below the mode where each half-axis ends
    max_sds: float = 60.0  # the farthest reach, in sds
    line_points: int = 48  # log density evaluations per half-line of the reach search
    offsets: float = 2.0  # lines also through +-offsets sds in the other axes (0: through the mode only)
    max_params: int = 4

    def __post_init__(self):
        if isinstance(self.points, list):  # from yaml / the command line
            object.__setattr__(self, "points", tuple(self.points))

    def safer(self, level: int):
        """Retry settings: a wider box (drop +12 nats and twice max_sds per level), twice the nodes."""
        f = 2**level
        points = None if self.points is None else tuple(int((n - 1) * f + 1) for n in np.atleast_1d(self.points))
        new = replace(self, drop=self.drop + 12.0 * level, max_sds=self.max_sds * f, budget=self.budget * f, points=points)
        nodes = f"budget={new.budget}" if points is None else f"points={list(points)}"
        return new, f"wider grid (drop={new.drop:g}, max_sds={new.max_sds:g}), {nodes}"


def check_supported(p: int, cfg: QuadConfig) -> None:
    """Raise a clear error if a model with p parameters or these settings cannot be gridded."""
    if p > cfg.max_params:
        raise PlacementError(
            f"sampler=quadrature integrates over at most {cfg.max_params} parameters; this model has {p}. "
            "Use sampler=importance or sampler=nuts."
        )
    n = np.atleast_1d(np.asarray(cfg.start_points if cfg.points is None else cfg.points))
    if n.size not in (1, p) or np.any(n < 9) or np.any((n - 1) % 4):
        raise PlacementError(
            f"sampler.points (and start_points) must be 4 j + 1 and >= 9 (9, 13, 17, 33, ...), one number or "
            f"one per parameter ({p}); got {n.tolist()}."
        )
    if cfg.axes not in AXES:
        raise PlacementError(f"sampler.axes must be one of {', '.join(AXES)} (got {cfg.axes!r}).")
    if not (cfg.drop > 0 and cfg.max_sds > 0 and cfg.scale > 0 and cfg.line_points >= 2):
        raise PlacementError("sampler.drop, max_sds and scale must be > 0 and line_points >= 2.")


# -- the grid -----------------------------------------------------------------------------------
class Grid(NamedTuple):
    theta: np.ndarray  # (N, p) nodes, C order over ``shape``
    log_q: np.ndarray  # (N,) minus the log cell volume: log weights are log p - log_q
    twos: np.ndarray  # (N, p) int8: index along the axis even -> 1, multiple of 4 -> 2, else 0
    edge: np.ndarray  # (N,) bool: the outermost layer
    shape: tuple  # nodes per axis
    axes: str  # "coordinate" or "principal"
    reach: np.ndarray  # (p, 2) sds to each end of each axis
    open: np.ndarray  # (p, 2) bool: the density had not fallen ``drop`` nats at max_sds


def grid_axes(cov: np.ndarray, cfg: QuadConfig) -> tuple[np.ndarray, str]:
    """B (p, p) whose columns are the axis directions, one Laplace sd long, and their kind."""
    cov = 0.5 * (cov + cov.T)
    sd = np.sqrt(np.maximum(np.diag(cov), 1e-24))
    kind = cfg.axes
    if kind == "auto":
        corr = cov / np.outer(sd, sd)
        off = np.abs(corr - np.diag(np.diag(corr)))
        kind = "principal" if off.size and off.max() > cfg.max_corr else "coordinate"
    if kind == "coordinate":
        return np.diag(sd), kind
    evals, evecs = np.linalg.eigh(cov)
    return evecs * np.sqrt(np.maximum(evals, 1e-24)), kind


def line_layout(mode: np.ndarray, B: np.ndarray, cfg: QuadConfig) -> tuple[np.ndarray, np.ndarray]:
    """Points of the reach search, (p, 2, L, K, p), and their K distances in sds.

    Axis k, side (-, +), line l through mode + sum_{i != k} B[:, i] o_li (o in
    {-offsets, 0, offsets}), distance d: theta = that point +- d B[:, k]. The distances are
    sinh-spaced up to max_sds (dense near the mode)."""
    p = mode.shape[0]
    d = np.sinh(np.linspace(0.0, np.arcsinh(cfg.max_sds), int(cfg.line_points) + 1)[1:])
    offs = [0.0] if cfg.offsets <= 0 else [-cfg.offsets, 0.0, cfg.offsets]
    lines = np.asarray(list(itertools.product(offs, repeat=p - 1)), dtype=np.float64).reshape(-1, p - 1) if p > 1 else np.zeros((1, 0))
    pts = np.empty((p, 2, len(lines), d.size, p))
    for k in range(p):
        others = [i for i in range(p) if i != k]
        base = mode[None, :] + lines @ B[:, others].T  # (L, p)
        for side, sign in enumerate((-1.0, 1.0)):
            pts[k, side] = base[:, None, :] + sign * d[None, :, None] * B[:, k][None, None, :]
    return pts, d


def reach_from_lines(logp_lines: np.ndarray, d: np.ndarray, logp_mode: float, drop: float):
    """Reach (p, 2) in sds: per axis and side, the first distance beyond which every line stays
    ``drop`` nats below the mode (non-finite log densities count as -inf); and open (p, 2):
    some line was still above that at the last distance."""
    lp = np.where(np.isfinite(logp_lines), logp_lines, -np.inf)  # (p, 2, L, K)
    high = (lp > logp_mode - drop).any(axis=2)  # (p, 2, K)
    K = d.size
    last = np.where(high.any(-1), K - 1 - np.argmax(high[..., ::-1], axis=-1), -1)
    return d[np.minimum(last + 1, K - 1)], last >= K - 1


def sinh_grid(mode: np.ndarray, B: np.ndarray, reach: np.ndarray, shape: tuple, scale: float):
    """theta (N, p), log_q (N,), twos (N, p), edge (N,) of the tensor grid with ``shape`` nodes
    per axis, u_k = scale sinh(t_k) sds along B[:, k], t_k uniform on [-asinh(R-/a), asinh(R+/a)]."""
    p = mode.shape[0]
    t_axes = [np.linspace(-np.arcsinh(reach[k, 0] / scale), np.arcsinh(reach[k, 1] / scale), shape[k]) for k in range(p)]
    idx = np.indices(shape).reshape(p, -1).T  # (N, p), C order
    T = np.stack([t_axes[k][idx[:, k]] for k in range(p)], axis=1)
    theta = mode[None, :] + (scale * np.sinh(T)) @ B.T
    log_q = -np.sum(np.log(scale * np.cosh(T)), axis=1)
    twos = ((idx % 2 == 0).astype(np.int8) + (idx % 4 == 0).astype(np.int8))
    edge = np.any((idx == 0) | (idx == np.asarray(shape)[None, :] - 1), axis=1)
    return theta, log_q, twos, edge


def layout(fit: Laplace, line_logp: Callable, shape: tuple, cfg: QuadConfig) -> Grid:
    """The grid for a Laplace fit: axes, reach search (``line_logp(points (M, p)) -> (M,)``),
    nodes (``shape`` per axis)."""
    mode, cov = np.asarray(fit.mode, dtype=np.float64), np.asarray(fit.cov, dtype=np.float64)
    B, kind = grid_axes(cov, cfg)
    pts, d = line_layout(mode, B, cfg)
    lp = np.asarray(line_logp(pts.reshape(-1, mode.shape[0]))).reshape(pts.shape[:-1])
    reach, open_ = reach_from_lines(lp, d, float(fit.logp), cfg.drop)
    return Grid(*sinh_grid(mode, B, reach, shape, float(cfg.scale)), tuple(shape), kind, reach, open_)


def padded_levels(evaluated, grid: Grid, size: int):
    """``quadrature_levels`` of a grid from its evaluated terms (logp, f, df, s), the arrays
    padded to ``size`` nodes that weigh nothing (log_q = +inf, in no level, not on the edge),
    so grids of several shapes share one compiled size."""
    N, p = grid.theta.shape
    extra = max(size - N, 0)

    def pad(a, fill=0.0):  # on the host: no compiled op per pilot shape
        a = np.asarray(a)
        a = a.reshape(N, -1) if a.ndim > 1 else a
        return np.concatenate([a, np.full((extra, *a.shape[1:]), fill, a.dtype)])

    logp, f, df, s = evaluated
    return quadrature_levels(pad(logp), pad(f), pad(df), pad(s), pad(grid.log_q, np.inf),
                             pad(grid.twos, 0), pad(grid.edge, False))


# -- nodes per axis -----------------------------------------------------------------------------
def fixed_shape(p: int, cfg: QuadConfig) -> tuple:
    return tuple(int(n) for n in np.broadcast_to(np.atleast_1d(cfg.points), (p,)))


def doubled(shape: tuple, j: int) -> tuple:
    """``shape`` with axis j at twice the resolution (n -> 2 n - 1: still 4 j + 1, nested)."""
    return tuple(2 * n - 1 if i == j else n for i, n in enumerate(shape))


def pilot_size(cfg: QuadConfig) -> int:
    """The size every grid ``allocate`` evaluates is padded to (one compiled shape): the most
    nodes of a grid that can still double an axis within the budget, budget * n / (2 n - 1)
    with n >= start_points."""
    n = int(cfg.start_points)
    return int(cfg.budget * n // (2 * n - 1))


def refine_axis(Q) -> int:
    """The axis whose halving moves dF/dX most (L2 over the gradient's components)."""
    d1, _ = axis_differences(Q)
    return int(np.argmax(np.nan_to_num(np.linalg.norm(d1[:, 1:], axis=1), nan=np.inf)))


def allocate(estimate_Q: Callable, p: int, cfg: QuadConfig) -> tuple:
    """Nodes per axis for a problem: from ``start_points`` per axis, double the axis whose
    halving moves dF/dX most (``estimate_Q(shape) -> Levels.Q``) while the grid stays within
    ``budget`` nodes. Only grids of at most ``pilot_size`` nodes are evaluated."""
    shape = (int(cfg.start_points),) * p
    while min(np.prod(doubled(shape, j)) for j in range(p)) <= cfg.budget:
        grown = doubled(shape, refine_axis(estimate_Q(shape)))
        if np.prod(grown) > cfg.budget:
            break
        shape = grown
    return shape


# -- the sampler --------------------------------------------------------------------------------
class QuadState(NamedTuple):
    fit: Laplace  # the last Laplace fit; its mode warm-starts the next
    shape: tuple  # nodes per axis, fixed per problem


class QuadInfo(NamedTuple):
    points: tuple  # nodes per axis (C order of the draws)
    axes: str  # "coordinate" or "principal"
    reach_open: bool  # some half-axis had not fallen ``drop`` nats at max_sds (edge_mass tells how much that matters)
    laplace_converged: bool


@register(QuadConfig)
def build(jm, cfg: QuadConfig) -> Sampler:
    """``sampler=quadrature``: the grid at each design, around a Laplace fit warm-started from
    the last mode. ``init`` fits cold and, the first time, allocates the nodes per axis (kept
    for this sampler: a re-initialised state reuses them)."""
    p = jm.ndim
    check_supported(p, cfg)
    laplace = make_laplace(jm.logdensity)  # one compiled fit: cold in init, warm-started in draw
    vlogp = shared_logdensity(jm)  # chunked: planned memory, the budget between chunks
    terms = shared_terms(jm)  # compiled once per model, shared with the engine
    theta0 = jnp.asarray(jm.initial_point)
    allocated: dict = {}

    def grid_at(fit, X, y, shape):
        return layout(fit, lambda P: vlogp(np.asarray(P), X, y), shape, cfg)

    def pilot_Q(fit, X, y, shape):
        g = grid_at(fit, X, y, shape)
        return padded_levels(terms(jnp.asarray(g.theta), X, y), g, pilot_size(cfg)).Q

    def init(key, X, y):
        fit = laplace(key, theta0, X, y)
        if "shape" not in allocated:
            allocated["shape"] = (fixed_shape(p, cfg) if cfg.points is not None
                                  else allocate(lambda shape: pilot_Q(fit, X, y, shape), p, cfg))
        return QuadState(fit, allocated["shape"])

    def draw(key, state, X, y):
        fit = laplace(key, state.fit.mode, X, y)  # re-centred, warm-started from the last mode
        g = grid_at(fit, X, y, state.shape)
        info = QuadInfo(g.shape, g.axes, bool(g.open.any()), bool(fit.converged))
        return QuadState(fit, state.shape), Sample(g.theta, g.log_q, None, g.twos, info, g.edge)

    return Sampler("quadrature", init, draw)
