"""The outer loop: relocate the design along dF/dX with an optax optimizer.

One outer step = estimate F and dF/dX at X (the sampler continues from the previous
step's state), record a trajectory row, check the stopping rules, update X with the
optimizer and project it onto the constraints, then checkpoint. Everything an
uninterrupted run carries from step to step is in ``OuterState``, so a run resumed from
its checkpoint continues exactly as if it had never stopped (the random key of step k
is ``fold_in(key, k)``).
"""

from __future__ import annotations

import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import numpy as np
import optax

from placement import budget
from placement.constraints import Constraints, project
from placement.engine import Engine
from placement.errors import PlacementError
from placement.estimator import GradientEstimate
from placement.io import write_atomic_bytes
from placement.predictive import robust_gradient  # retry.robust_gradient, per fantasy in design mode
from placement.retry import RetryConfig


@dataclass(frozen=True)
class LoopConfig:
    """steps: outer steps at most; direction: minimize | maximize F;
    grad_tol: stop when |dF/dX| falls below this (0 = never);
    patience: stop when F has not changed by more than 2 standard errors for this many
    consecutive steps (0 = never); retry: what counts as sampler trouble and how often to
    retry with safer settings (see placement.retry)."""

    steps: int = 50
    direction: str = "minimize"
    grad_tol: float = 0.0
    patience: int = 0
    retry: RetryConfig = field(default_factory=RetryConfig)
    max_seconds: float = 0.0  # time budget of one step's estimate (0 = none; placement.budget)

    def __post_init__(self):
        if self.direction not in ("minimize", "maximize"):
            raise PlacementError(f"objective.direction must be minimize or maximize; got {self.direction!r}.")
        if self.steps < 1:
            raise PlacementError(f"steps must be at least 1; got {self.steps}.")


class OuterState(NamedTuple):
    step: int  # steps completed
    X: np.ndarray
    opt_state: Any
    sampler_state: Any
    key: Any  # base PRNG key of the run
    rows: list  # trajectory rows so far
    stalled: int  # consecutive steps without a significant change of F
    stop_reason: str | None
    untrusted: int = 0  # consecutive steps whose estimate failed every retry


def _row(step, X, est, seconds, attempts=None):
    d = est.diagnostics
    row = {"step": step, "F": est.F, "F_se": est.F_se, "grad_norm": float(np.linalg.norm(est.grad))}
    for i, x in enumerate(np.asarray(X).reshape(len(X), -1)):
        for j, v in enumerate(x):
            row[f"x{i}" if x.size == 1 else f"x{i}_{j}"] = float(v)
    row.update(rhat_max=d.get("rhat_max"), ess_bulk_min=d.get("ess_bulk_min"), divergences=d.get("divergences", 0),
               step_seconds=seconds)
    if "nuts_ran" in d:
        row["nuts_ran"] = int(d["nuts_ran"])
    if d.get("cut_short"):
        row["cut_short"] = d["cut_short"]  # the step's time budget ended the estimate's extra draws
    if attempts is not None:
        row.update(attempts.summary())
    return row


def best_visited(rows: list, direction: str, shape) -> dict | None:
    """The trusted step whose estimate of F was best (lowest when minimising), as
    {step, F, F_se, X (of ``shape``), se_gap}: se_gap is how many standard errors of their
    difference the last trusted step's F is worse (0 when it is the best; inf when a
    deterministic estimate, MAP's, with no SE, is worse at all). A stochastic
    optimiser at a fixed learning rate wanders near an optimum, so the last design need not be
    the best one visited. The pick is the best of many noisy values, so its F is optimistic:
    by about 2.5 SE when 50 designs are in fact equal. None without a trusted step."""
    ok = [r for r in rows if r.get("trusted", 1) and np.isfinite(r["F"])]
    if not ok:
        return None
    sign = 1.0 if direction == "minimize" else -1.0
    best = min(ok, key=lambda r: sign * r["F"])
    last = ok[-1]
    cols = sorted((tuple(int(i) for i in k[1:].split("_")), v) for k, v in best.items()
                  if k[:1] == "x" and k[1:].replace("_", "").isdigit())  # x2 before x10, whatever the key order
    diff, se = sign * (last["F"] - best["F"]), float(np.hypot(last["F_se"], best["F_se"]))
    gap = 0.0 if best is last or diff <= 0 else (diff / se if se > 0 else np.inf)
    return {"step": int(best["step"]), "F": float(best["F"]), "F_se": float(best["F_se"]),
            "X": np.asarray([v for _, v in cols], dtype=np.float64).reshape(shape), "se_gap": float(gap)}


def initial_state(engine: Engine, X0, optimizer: optax.GradientTransformation, seed: int) -> OuterState:
    key = jax.random.PRNGKey(seed)
    X0 = np.asarray(X0, dtype=np.float64)
    sstate = engine.init(jax.random.fold_in(key, 10**6), X0, engine.jm.y_at(X0))
    return OuterState(0, X0, optimizer.init(X0), sstate, key, [], 0, None)


def outer_step(engine: Engine, state: OuterState, optimizer, constraints: Constraints, cfg: LoopConfig) -> OuterState:
    """One step (see ``step``), without the estimate."""
    return step(engine, state, optimizer, constraints, cfg)[0]


def step(engine: Engine, state: OuterState, optimizer, constraints: Constraints,
         cfg: LoopConfig) -> tuple[OuterState, GradientEstimate]:
    """One step: estimate at state.X (retrying with safer sampler settings on trouble),
    record, maybe stop, else update and project X. An estimate that fails every retry is
    recorded as untrusted and X stays where it is; the sampler starts afresh next step.
    Returns the new state and the estimate made at ``state.X`` (on the last step of a run,
    the final design: X does not move once a stopping rule fires)."""
    t0 = time.perf_counter()
    X = state.X
    k = jax.random.fold_in(state.key, state.step)
    y = engine.jm.y_at(X)
    with budget.scope(cfg.max_seconds):
        sstate, est, attempts = robust_gradient(engine, k, state.sampler_state, X, y, cfg.retry)
    rows = state.rows + [_row(state.step, X, est, 0.0, attempts)]
    stalled, untrusted = state.stalled, 0
    if not attempts.trusted:
        untrusted = state.untrusted + 1
        sstate = engine.init(jax.random.fold_in(k, 2000), X, y)
    else:
        prev = next((r for r in reversed(rows[:-1]) if r.get("trusted", 1)), None)
        if prev is not None:
            same = abs(est.F - prev["F"]) <= 2.0 * np.hypot(est.F_se, prev["F_se"])
            stalled = stalled + 1 if same else 0
    stop = None
    if attempts.trusted and cfg.grad_tol > 0 and rows[-1]["grad_norm"] < cfg.grad_tol:
        stop = "grad_tol"
    elif attempts.trusted and cfg.patience > 0 and stalled >= cfg.patience:
        stop = "patience"
    elif cfg.retry.max_untrusted > 0 and untrusted >= cfg.retry.max_untrusted:
        stop = "sampler_trouble"
    elif state.step + 1 >= cfg.steps:
        stop = "steps"
    sign = 1.0 if cfg.direction == "minimize" else -1.0
    X_new, opt_state, refused = X, state.opt_state, None
    if stop is None and attempts.trusted:
        updates, opt_state = optimizer.update(sign * est.grad, state.opt_state, X)
        X_new, refused = project(np.asarray(optax.apply_updates(X, updates)), X, constraints)
    rows[-1]["projection"] = refused or ""  # why the step was refused (X stays put), else ""
    rows[-1]["step_seconds"] = time.perf_counter() - t0
    return OuterState(state.step + 1, X_new, jax.device_get(opt_state), jax.device_get(sstate), state.key, rows,
                      stalled, stop, untrusted), est


def save_checkpoint(path: Path, state: OuterState, fingerprint: str = "") -> None:
    """Write the whole outer state atomically (readers see the previous or the new one).
    The trajectory rows are stored as they are: as part of a pytree their keys (the CSV
    columns) would come back sorted."""
    fields = state._asdict()
    rows = fields.pop("rows")
    blob = {"state": jax.device_get(fields), "rows": rows, "fingerprint": fingerprint}
    write_atomic_bytes(path, pickle.dumps(blob, protocol=pickle.HIGHEST_PROTOCOL))


def load_checkpoint(path: Path) -> tuple[OuterState, str]:
    """The saved state and the configuration fingerprint it was written with."""
    try:
        with open(path, "rb") as fh:
            blob = pickle.load(fh)
        fields = dict(blob["state"])
        if "rows" in blob:
            fields["rows"] = blob["rows"]
        return OuterState(**fields), blob["fingerprint"]
    except Exception as e:  # noqa: BLE001 - corrupt or foreign bytes make pickle raise almost anything
        raise PlacementError(f"cannot read the checkpoint {path} ({type(e).__name__}: {e}); delete it to start "
                             "over.") from None


def run_loop(engine: Engine, state: OuterState, optimizer, constraints: Constraints, cfg: LoopConfig,
             on_step: Callable[[OuterState, GradientEstimate], None] | None = None) -> OuterState:
    """Run outer steps until a stopping rule fires. ``on_step(state, estimate)`` sees every
    new state and the estimate behind its last row (checkpoints, progress, output files): the
    command line and the Python API both run this function."""
    while state.stop_reason is None:
        state, est = step(engine, state, optimizer, constraints, cfg)
        if on_step is not None:
            on_step(state, est)
    return state


def row_text(row: dict) -> str:
    """A trajectory row in a few words, for progress bars and logs."""
    return f"F={row['F']:.5g}+-{row['F_se']:.2g} |g|={row['grad_norm']:.2g} {row['step_seconds']:.2f}s/step"


class Progress:
    """Outer steps' progress, as an ``on_step`` callback: a ``progress.Reporter`` counting steps,
    so a tqdm bar on a terminal or in a notebook, and a plain line at the first step, then at
    most every ``interval`` seconds, and at the last step when stderr is not a terminal (logs,
    batch jobs). ``enabled``: True shows one or the other, None the bar on a terminal or
    in a notebook and nothing elsewhere, False nothing."""

    def __init__(self, total: int, initial: int = 0, enabled: bool | None = True, desc: str = "placement run",
                 interval: float = 5.0):
        from placement.progress import Reporter, resolve

        mode = "auto" if enabled else "off"
        if enabled is None:
            mode = "bar" if resolve("auto") == "bar" else "off"
        self.total, self.n = total, initial
        self.reporter = Reporter(desc, "steps", mode, delay=0.0, interval=interval, leave=True)

    def __call__(self, state: OuterState, est=None) -> None:
        self.n += 1
        self.reporter(self.n, self.total, row_text(state.rows[-1]), force=self.n >= self.total)

    def close(self) -> None:
        self.reporter.close()
