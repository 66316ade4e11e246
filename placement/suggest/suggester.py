"""The whole request: table -> hyperparameter draws -> criterion data -> search -> table;
and the ask/tell object for sequential use (measure, suggest, measure)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from placement import budget, distributed
from placement.errors import PlacementError
from placement.progress import Reporter
from placement.suggest import criteria, hyper
from placement.suggest.config import SuggestConfig
from placement.suggest.kernel import for_bounds
from placement.suggest.search import batch_search, grid_points, plan_request
from placement.suggest.table import check_bounds, check_points, frame_to_arrays, normalise_points, prepare, \
    suggestions_frame


def suggest_arrays(X, y, bounds, cfg: SuggestConfig, pending=None, names=None, target=None):
    """Return (suggested points (k, d), info dict) in the original units. pending: points
    already suggested but not yet measured (array (p, d), DataFrame or CSV path); the batch
    is chosen as if they had been measured (criteria.py: their predictive mean as value);
    target: the points where the predictions matter (same forms; e.g. every site that could
    be measured), over which the variances are averaged instead of over the box (at most
    ``cfg.grid`` of them: a seeded random subset of more); names: the input columns, to pick
    them from a pending or target table by name."""
    reporter = Reporter("suggest", "", cfg.progress)  # each stage's note names its unit
    try:
        # each process by itself (no sharded work), by its own clock: placement.distributed
        with distributed.alone(), budget.scope(cfg.max_seconds, progress=reporter):
            return _suggest_arrays(X, y, bounds, cfg, pending, names, target)
    finally:
        reporter.close()


def _suggest_arrays(X, y, bounds, cfg: SuggestConfig, pending=None, names=None, target=None):
    also = None
    if bounds is None and np.ndim(X) == 2:  # the default box takes in the pending and target points too
        d = np.shape(X)[1]
        also = np.concatenate([check_points(pending, d, names), check_points(target, d, names, "target")])
    b, Xn, yn, (y_mean, y_sd) = prepare(X, y, bounds, cfg, also)
    Pn = normalise_points(pending, b, names)
    Tn = None if target is None else target_points(normalise_points(target, b, names, "target"), cfg.grid, cfg.seed)
    span = b[:, 1] - b[:, 0]
    d = Xn.shape[1]
    kernel = for_bounds(cfg.kernel, b, cfg.alpha, cfg.period)
    crit = criteria.criterion(cfg.criterion)
    planned = None
    if getattr(cfg, "approx", "exact") == "exact":  # memory planned before any work: one error if it cannot fit
        planned = plan_request(cfg, Xn.shape[0], len(Pn), d, kernel, crit)
    prior = hyper.make_prior(cfg.ell_prior, Xn, cfg.noise_sd)
    if cfg.approx == "hsgp":  # the same steps with the Hilbert-space GP (suggest/hsgp.py)
        from placement.suggest import hsgp

        hsgp.check(kernel.name, cfg.sampler, cfg.hsgp_m, cfg.hsgp_c, d)
        basis = hsgp.make_basis(Xn, cfg.hsgp_m, cfg.hsgp_c)
        ell, eta, sigma, ess = hsgp.hsgp_draws(Xn, yn, kernel.name, basis, cfg.num_hyper, cfg.seed, cfg.sampler, prior)
    else:
        ell, eta, sigma, ess = hyper.hyper_draws(Xn, yn, kernel, cfg.num_hyper, cfg.seed, cfg.sampler, prior)
    G = grid_points(d, cfg.grid, cfg.seed) if Tn is None else Tn
    draws = crit.draws(ell, eta, sigma)
    z = criteria.fantasy_normals(cfg.num_fantasies, len(draws[1]), cfg.k, cfg.seed)
    data = criteria.crit_data(Xn, yn, G, draws, z, kernel, Pn) if cfg.approx == "exact" \
        else hsgp.crit_data(Xn, yn, G, draws, z, kernel, basis, Pn)
    found = batch_search(cfg.criterion, kernel, data, int(cfg.k), d, cfg.restarts, cfg.steps,
                         cfg.learning_rate, cfg.seed, max_memory=planned["limit"] if planned else cfg.max_memory)
    Bn, after = found.batch, found.value
    before = crit.sign * float(crit.now(kernel, data))
    if crit.draws is criteria._identity and not len(Pn):
        mean, sd = criteria.batch_mixture(kernel, data, Bn)
    else:  # the criterion's data hold other draws or pending points: predict from the data in hand
        mean, sd = criteria.mixture_predictive(kernel, Xn, yn, Bn, (ell, eta, sigma)) if cfg.approx == "exact" \
            else hsgp.mixture_predictive(kernel, basis, Xn, yn, Bn, (ell, eta, sigma))
    info = {"criterion": cfg.criterion, "before": before, "after": crit.sign * after, "hyper_ess": ess,
            "pred_mean": mean * y_sd + y_mean, "pred_sd": sd * y_sd, "bounds": b, "y_scale": (y_mean, y_sd),
            "hyper": (ell, eta, sigma), "Xn": Xn, "yn": yn, "kernel": kernel, "pending": Pn * span + b[:, 0],
            "cut_short": found.cut_short, "search_group": found.group, "search_bytes": found.memory,
            "memory": planned,
            "approx": cfg.approx, "target_points": None if Tn is None else len(Tn)}
    return Bn * span + b[:, 0], info


def target_points(Tn, num: int, seed: int):
    """The integration points from the user's target points (normalised): all of them, or a
    seeded random subset of ``num`` when there are more (the cost grows with their number)."""
    if len(Tn) == 0:
        raise PlacementError("target holds no points; give at least one, or leave target unset (the whole box).")
    if len(Tn) <= num:
        return Tn
    return Tn[np.sort(np.random.default_rng(seed).choice(len(Tn), num, replace=False))]


def suggest(df, k: int = 5, x_columns=None, y_column: str = "y", bounds=None, criterion: str | None = None,
            kernel: str = "matern52", seed: int = 0, pending=None, target=None, **options):
    """Python API: a DataFrame of k suggested points (input columns, pred_mean, pred_sd,
    <criterion>_before, <criterion>_after) for the observations in ``df``; ``pending``:
    points suggested earlier and not yet measured; ``target``: the points where the
    predictions matter, whose variances the criterion averages instead of the box's (each an
    array, DataFrame or CSV path)."""
    X, y, names = frame_to_arrays(df, x_columns, y_column)
    if criterion is not None:
        options["criterion"] = criterion
    cfg = SuggestConfig(k=k, kernel=kernel, seed=seed, **options)
    pts, info = suggest_arrays(X, y, bounds, cfg, pending, names, target)
    out = suggestions_frame(pts, names, info)
    out.attrs["cut_short"] = info["cut_short"]  # "max_seconds" when the time budget ended the search
    return out


class AskTellState(NamedTuple):
    X: np.ndarray  # (n, d) measured inputs
    y: np.ndarray  # (n,) their values
    pending: np.ndarray  # (p, d) suggested, not yet measured


def tell_state(state: AskTellState, X, y, atol: float, names=None) -> AskTellState:
    """Add measurements; pending points within atol (per column) of a measured one leave the
    pending list (the nearest pending point per measurement)."""
    d = state.X.shape[1]
    Xt = check_points(X, d, names, "measured")
    yt = np.asarray(y, dtype=np.float64).reshape(-1)
    if yt.shape[0] != Xt.shape[0] or not np.isfinite(yt).all():
        raise PlacementError(f"tell needs one finite y per point; got {yt.shape[0]} values for {Xt.shape[0]} point(s).")
    keep = np.ones(len(state.pending), bool)
    for x in Xt:
        close = np.nonzero(keep & np.all(np.abs(state.pending - x) <= atol, axis=1))[0]
        if len(close):
            keep[close[np.argmin(np.abs(state.pending[close] - x).sum(1))]] = False
    return AskTellState(np.concatenate([state.X, Xt]), np.concatenate([state.y, yt]), state.pending[keep])


class Suggester:
    """Ask/tell: ``ask(k)`` suggests k points given the data and the points still pending
    (and adds them to the pending list); ``tell(X, y)`` adds measurements and removes the
    pending points they answer (within 1e-6 of the box's span per column). The box is fixed
    when the object is made (bounds, default the range of the first data, pending and target points), and so are the points
    where the predictions matter (``target``, as in ``suggest``)."""

    def __init__(self, df, x_columns=None, y_column: str = "y", bounds=None, pending=None, target=None, **options):
        X, y, self.names = frame_to_arrays(df, x_columns, y_column)
        self.target = None if target is None else check_points(target, X.shape[1], self.names, "target")
        pending = check_points(pending, X.shape[1], self.names)
        self.bounds = check_bounds(bounds, X, np.concatenate([pending, np.zeros((0, X.shape[1])) if self.target is None
                                                              else self.target]))
        self.options = options
        SuggestConfig(**options)  # check the settings now
        self.state = AskTellState(X, y, pending)

    def ask(self, k: int = 5, **options):
        cfg = SuggestConfig(**{**self.options, **options, "k": k})
        pts, info = suggest_arrays(self.state.X, self.state.y, self.bounds, cfg, self.state.pending,
                                   target=self.target)
        self.state = self.state._replace(pending=np.concatenate([self.state.pending, pts]))
        return suggestions_frame(pts, self.names, info)

    def tell(self, X, y):
        atol = 1e-6 * (self.bounds[:, 1] - self.bounds[:, 0])
        self.state = tell_state(self.state, X, y, atol, self.names)
        return self

    @property
    def pending(self):
        import pandas as pd

        return pd.DataFrame(self.state.pending, columns=self.names)
