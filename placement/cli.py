"""Command line: ``placement <command> [hydra overrides]``. Parsing and wiring only."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

from placement import budget, distributed
from placement.errors import PlacementError

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
COMMANDS = {
    "gradient": "compute F and dF/dX with standard errors at one design",
    "run": "relocate the design along dF/dX (outer loop with warm-started sampler)",
    "suggest": "propose k new measurement locations from a CSV: placement suggest data=FILE k=5",
    "summarize": "collect a multirun folder into one table and plot: placement summarize DIR",
}

log = logging.getLogger("placement")


class _Terminated(BaseException):
    """SIGTERM, turned into an exception so the run ends like an interrupt (outputs are
    written atomically, so whatever was last written is whole)."""


_on_sigterm = budget.stop_handler(_Terminated)  # recorded too: raised again at the next checkpoint if lost


EXIT_INTERRUPT = 130  # SIGINT / Ctrl-C (128 + 2, as shells report it)
EXIT_TERMINATED = 143  # SIGTERM (128 + 15): a scheduler's or `timeout`'s stop


def _interrupted(cmd: str, e: BaseException, run_dir: Path, discard: list[Path]) -> None:
    """Stop on Ctrl-C or SIGTERM. ``run`` keeps its folder (checkpoint.pkl is whole: written
    atomically after each step) and says how to resume; ``gradient`` and ``suggest`` write
    their results only at the end, so a folder they created is removed."""
    code = EXIT_TERMINATED if isinstance(e, _Terminated) else EXIT_INTERRUPT
    what = "terminated (SIGTERM)" if code == EXIT_TERMINATED else "interrupted"
    if cmd == "run" and (run_dir / "checkpoint.pkl").exists():
        print(f"{what}; the last completed step is saved. Continue with: placement {cmd} "
              f"resume=true hydra.run.dir={run_dir} (and the same overrides)", file=sys.stderr)
    else:
        _discard(discard)
        print(f"{what}; nothing was written.", file=sys.stderr)
    sys.exit(code)


def _usage() -> str:
    lines = ["usage: placement <command> [key=value ...]", "", "commands:"]
    lines += [f"  {name:10s} {doc}" for name, doc in COMMANDS.items()]
    lines += ["", "Overrides are Hydra-style: sampler=nuts sampler.num_chains=8 seed=3 kernel=matern32",
              "`placement <command> --cfg job` prints the resolved config; `--help` lists the groups."]
    return "\n".join(lines)


def _fail(msg: str, discard: list[Path]) -> None:
    print(f"error: {msg}", file=sys.stderr)
    _discard(discard)  # no half-written output
    sys.exit(2)


def _discard(folders: list[Path]) -> None:
    """Remove the run folder this command made (``folders[0]``), then the folders above it that
    Hydra made for it (the rest, deepest first) while they are empty."""
    if folders:
        shutil.rmtree(folders[0], ignore_errors=True)
    for parent in folders[1:]:
        try:
            parent.rmdir()
        except OSError:  # not empty (another run's folder), or gone
            break


def _existing_above(cmd: str, overrides: list[str]) -> Path:
    """Before Hydra makes anything: the deepest folder on the way to this command's run folder
    that exists already (the run folder itself when it exists and its path has no ${...}).
    A command that stops with nothing written removes only what came after."""
    spec = next((a.split("=", 1)[1] for a in reversed(overrides) if a.lstrip("+").startswith("hydra.run.dir=")), None)
    if spec is None:
        import yaml

        spec = str(yaml.safe_load(Path(CONF_DIR, f"{cmd}.yaml").read_text())["hydra"]["run"]["dir"])
    head = spec.split("$", 1)[0]  # the part before the first ${...}: fixed folders
    p = Path(os.path.normpath(Path.cwd() / head))
    while not p.exists():
        p = p.parent
    return p


def _made_for(run_dir: Path, existed: Path) -> list[Path]:
    """run_dir and the folders above it up to (not including) ``existed``, deepest first: what
    Hydra made for this run. Only run_dir when ``existed`` is not above it (a sweep's folder);
    nothing when run_dir is ``existed``: it was there before."""
    run_dir = Path(os.path.normpath(run_dir.absolute()))
    if run_dir == existed:
        return []
    if existed not in run_dir.parents:
        return [run_dir]
    return [run_dir, *[p for p in run_dir.parents if existed in p.parents]]


def _enable_compile_cache(cfg) -> None:
    """Persistent XLA cache in $PLACEMENT_CACHE (default ~/.cache/placement/jax), one subdirectory
    per host CPU and jax/jaxlib version; see placement/runtime.py for why."""
    if cfg.get("compile_cache", True):
        from placement.runtime import enable_compile_cache

        enable_compile_cache(min_compile_time_secs=0.0)


def _run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def _gradient(cfg) -> None:
    import numpy as np
    from hydra.utils import instantiate

    from placement import budget
    from placement.api import build_problem, gradient
    from placement.io import write_json
    from placement.progress import Reporter
    from placement.settings import retry_config

    t0 = time.perf_counter()
    _enable_compile_cache(cfg)
    sampler_cfg = instantiate(cfg.sampler)
    kernel = instantiate(cfg.kernel)
    problem = build_problem(cfg.problem, kernel, cfg.objective.name, objective_options=cfg.objective)
    X = None if cfg.get("X") is None else list(cfg.X)
    retry = retry_config(cfg.get("retry"))
    reporter = Reporter("gradient", "draws", "auto")
    try:
        with budget.scope(cfg.get("max_seconds"), progress=reporter):
            est = gradient(problem, sampler=sampler_cfg, X=X, seed=int(cfg.seed), retry=retry,
                           gradient_check=str(cfg.get("gradient_check", "error")))
    finally:
        reporter.close()
    seconds = time.perf_counter() - t0
    d = est.diagnostics
    problems = list(d.get("warnings", []))
    Xused = problem.jm.X if X is None else np.asarray(X, dtype=float)
    result = {
        "X": Xused,
        "F": est.F,
        "F_se": est.F_se,
        "grad": est.grad,
        "grad_se": est.grad_se,
        "rhat_max": d.get("rhat_max"),
        "ess_bulk_min": d.get("ess_bulk_min"),
        "divergences": d.get("divergences", 0),
        "seconds": seconds,
        "trusted": not problems,
        "warnings": problems,
        "attempts": d.get("attempts", 1),
        "actions": d.get("actions", ""),
        "sampler": d.get("sampler"),
        "objective": problem.jm.objective_name,
        "y_mode": problem.y_mode,
        **_fantasy_fields(problem),
        "cut_short": d.get("cut_short"),  # "max_seconds": the time budget ended the extra draws
        "diagnostics": d,
        "versions": _versions(),  # and the devices used, as in result.json and suggest.json
    }
    budget.raise_pending()  # a Ctrl-C or SIGTERM that Python dropped still stops the command here
    out = write_json(_run_dir() / "gradient.json", result)
    print(_table(Xused, est))
    print(f"y_mode={_mode_text(problem)}  sampler={d.get('sampler')}  draws={d.get('num_draws')}  relative SE={d.get('rel_se', float('nan')):.3g}  "
          f"seconds={seconds:.2f}  -> {out}")
    if d.get("cut_short"):
        print(f"WARNING: cut short by max_seconds={cfg.max_seconds}: the estimate uses the draws made by then.",
              file=sys.stderr)
    if problem.fantasies is not None and problem.fantasies.measured:
        k = problem.fantasies.measured
        print(f"note: points 0-{k - 1} are measured (their y kept, held fixed by placement run); their rows are not "
              "a direction to move them.", file=sys.stderr)
    if d.get("target_note"):
        print(f"WARNING: {d['target_note']}", file=sys.stderr)
    if d.get("note"):
        print(f"note: {d['note']}", file=sys.stderr)
    if d.get("sampler") == "nuts":
        print("note: NUTS standard errors cannot see posterior regions the chains rarely visit; on the "
              "seed problem this under-states the error. Cross-check with sampler=importance.", file=sys.stderr)
    if d.get("actions"):
        print(f"sampler trouble ({d.get('trouble')}); retried: {d['actions']}", file=sys.stderr)
    for p in problems:
        print(f"WARNING: {p}", file=sys.stderr)
    if problems:
        print("WARNING: the gradient above is NOT trustworthy (see warnings).", file=sys.stderr)


def _table(X, est) -> str:
    import numpy as np

    X = np.asarray(X)
    rows = [f"F = {est.F:.6f} +- {est.F_se:.2g}   |dF/dX| = {np.linalg.norm(est.grad):.4g}", "",
            f"{'i':>3} {'X':>22} {'dF/dX':>12} {'+- se':>10}"]
    g = est.grad.reshape(len(X), -1)
    se = est.grad_se.reshape(len(X), -1)
    for i in range(len(X)):
        x = np.atleast_1d(X[i])
        xs = ", ".join(f"{v:.4g}" for v in x)
        for j in range(g.shape[1]):
            rows.append(f"{i:>3} {xs if j == 0 else '':>22} {g[i, j]:>12.5f} {se[i, j]:>10.5f}")
    return "\n".join(rows)


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("placement", "jax", "jaxlib", "numpyro", "blackjax", "optax", "pymc", "pytensor", "hydra-core", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    import jax

    out["devices"] = ", ".join(f"{d.platform}:{d.id}" for d in jax.devices())
    return out


def _fantasy_fields(problem) -> dict:
    """Predictive mode's fantasies for result.json / gradient.json (nothing in other modes)."""
    fa = problem.fantasies
    return {} if fa is None else {"fantasies": int(fa.u.shape[0]), "measured": int(fa.measured), "fantasy_draw": fa.detail}


def _mode_text(problem) -> str:
    fa = problem.fantasies
    if fa is None:
        return problem.y_mode
    held = f", first {fa.measured} points measured (held fixed)" if fa.measured else ""
    return f"{problem.y_mode} ({fa.u.shape[0]} fantasies{held})"


def _run(cfg) -> None:
    import hashlib

    import numpy as np
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from placement import plots, settings
    from placement.api import build_problem, check_design, make_engine, posterior_of, predictive_summary
    from placement.constraints import check_design_in_bounds
    from placement.errors import PlacementError
    from placement.inference_data import write_netcdf
    from placement.predictive import check_measured_design, hold_measured
    from placement.io import write_atomic, write_csv, write_json
    from placement.loop import Progress, best_visited, initial_state, load_checkpoint, row_text, run_loop, save_checkpoint
    from placement.problems import domain_points

    t0 = time.perf_counter()
    run_dir = _run_dir()
    ckpt = run_dir / "checkpoint.pkl"
    resolved = OmegaConf.to_container(cfg, resolve=True)
    # What must match for a resume: everything but the step budget (steps may grow) and the
    # time and memory budgets (they change how the work is cut, not what is computed).
    same = {k: v for k, v in resolved.items() if k not in ("resume", "steps", "max_seconds", "max_memory")}
    same["optimizer"] = {k: v for k, v in resolved["optimizer"].items() if k != "steps"}
    fingerprint = hashlib.sha256(json_dumps(same).encode()).hexdigest()
    if ckpt.exists() and not cfg.resume:
        raise PlacementError(f"{run_dir} already holds a run (checkpoint.pkl); pass resume=true to continue it "
                             "or choose another hydra.run.dir.")
    for stale in run_dir.glob(".*.tmp") if distributed.is_main() else ():  # left by a SIGKILL mid-write
        stale.unlink(missing_ok=True)
    _enable_compile_cache(cfg)
    sampler_cfg = instantiate(cfg.sampler)
    kernel = instantiate(cfg.kernel)
    steps = int(cfg.steps)
    loop_cfg = settings.loop_config(cfg)
    if cfg.get("max_seconds"):
        import dataclasses

        from placement.budget import check_seconds

        check_seconds(cfg.max_seconds)
        loop_cfg = dataclasses.replace(loop_cfg, max_seconds=float(cfg.max_seconds))
    optimizer = instantiate(cfg.optimizer)
    problem = build_problem(cfg.problem, kernel, cfg.objective.name, objective_options=cfg.objective)
    jm = problem.jm
    domain = (cfg.problem.get("args") or {}).get("domain")
    constraints = hold_measured(settings.constraints_from(cfg.constraints, domain), problem.fantasies)
    X0 = jm.X if cfg.get("X0") is None else check_design(list(cfg.X0), jm)
    check_measured_design(problem.fantasies, jm.X, X0)
    check_design_in_bounds(np.asarray(X0), constraints)
    engine = make_engine(problem, sampler_cfg, gradient_check=str(cfg.get("gradient_check", "error")))
    resuming = bool(cfg.resume and ckpt.exists())
    distributed.check_same("run states to resume from (give every process the same hydra.run.dir, on a shared "
                           "file system)", np.asarray([resuming]),
                           np.frombuffer(ckpt.read_bytes() if resuming else b"", dtype=np.uint8))
    if resuming:
        state, saved_fp = load_checkpoint(ckpt)
        if saved_fp != fingerprint:
            raise PlacementError("the checkpoint was written with a different configuration; resume with the same "
                                 "overrides (only steps may change) or start a new run directory.")
        state = state._replace(stop_reason=None) if state.step < steps and state.stop_reason == "steps" else state
        print(f"resuming {run_dir} after step {state.step}", file=sys.stderr)
    else:
        state = initial_state(engine, X0, optimizer, int(cfg.seed))
    write_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    tty = sys.stderr.isatty()
    bar = Progress(steps, initial=state.step, enabled=None if tty else False)
    last = {}

    def on_step(state, est):  # the loop is placement.loop.run_loop, as in placement.relocate
        save_checkpoint(ckpt, state, fingerprint)
        write_csv(run_dir / "trajectory.csv", state.rows)
        last["estimate"] = est
        bar(state)
        if not tty and (state.step % 10 == 0 or state.stop_reason):
            print(f"step {state.rows[-1]['step']}: {row_text(state.rows[-1])}", file=sys.stderr)

    try:
        state = run_loop(engine, state, optimizer, constraints, loop_cfg, on_step=on_step)
    finally:
        bar.close()
    final = state.rows[-1]
    X_final = np.asarray(state.X)
    result = {
        "X": X_final, "X0": np.asarray(X0), "F": final["F"], "F_se": final["F_se"], "grad_norm": final["grad_norm"],
        "steps": state.step, "stop_reason": state.stop_reason, "objective": cfg.objective.name,
        "y_mode": problem.y_mode,
        **_fantasy_fields(problem),
        "direction": cfg.objective.direction, "seconds": time.perf_counter() - t0,
        "step_seconds_median": float(np.median([r["step_seconds"] for r in state.rows])),
        "untrusted_steps": [r["step"] for r in state.rows if not r.get("trusted", 1)],
        "retried_steps": [r["step"] for r in state.rows if r.get("attempts", 1) > 1],
        "settings": resolved, "versions": _versions(),
        "best": best_visited(state.rows, cfg.objective.direction, X_final.shape),
    }
    est = last.get("estimate")  # made at the final design: X does not move on the last step
    if est is not None and est.sample is not None and est.diagnostics.get("sampler") != "map":
        idata = posterior_of(engine, est, X_final, engine.jm.y_at(X_final))
        result["posterior"] = str(write_netcdf(idata, run_dir / "posterior.nc"))
    if cfg.plots:
        plots.points_over_steps(state.rows, run_dir / "points.png")
        plots.objective_band(state.rows, run_dir / "objective.png", cfg.objective.name)
        pred = None
        if domain is not None and np.ndim(jm.X) == 1:
            import jax

            pred = predictive_summary(engine, state.sampler_state, X_final, jax.random.fold_in(state.key, 10**7))
        if pred is not None:
            grid = domain_points(domain, int(cfg.problem.args.grid))
            y_shown = engine.y_at(X_final) if problem.y_mode == "predictive" else jm.y_at(X_final)  # fantasy 0's
            plots.predictive(grid, pred[0], pred[1], X_final, y_shown, run_dir / "predictive.png", X0=np.asarray(X0))
    result["seconds"] = time.perf_counter() - t0
    budget.raise_pending()
    out = write_json(run_dir / "result.json", result)
    print(f"{cfg.objective.name} ({cfg.objective.direction}, y_mode={_mode_text(problem)}): F = {final['F']:.6g} +- {final['F_se']:.2g} after "
          f"{state.step} steps ({STOP_TEXT.get(state.stop_reason, state.stop_reason)}); {result['seconds']:.1f} s -> {out}")
    print("final X:", np.array2string(X_final, precision=4, max_line_width=100))
    best = result["best"]
    if best is not None and best["se_gap"] == np.inf:
        print(f"note: step {best['step']} had a better F = {best['F']:.6g} (no Monte Carlo error; its design is "
              "result.json's best.X).", file=sys.stderr)
    elif best is not None and best["se_gap"] > 2:
        print(f"note: step {best['step']} had a better F = {best['F']:.6g} +- {best['F_se']:.2g} ({best['se_gap']:.1f} SE "
              "better than the last trusted step's; its design is result.json's best.X). It is the best of many noisy "
              "values, so somewhat optimistic: check it with placement gradient X=[...] before preferring it.",
              file=sys.stderr)
    if result["retried_steps"]:
        print(f"note: sampler trouble at steps {result['retried_steps']}; retried with safer settings "
              "(see the actions column of trajectory.csv).", file=sys.stderr)
    if result["untrusted_steps"]:
        print(f"WARNING: the estimate at steps {result['untrusted_steps']} failed every retry; X was not moved "
              "there (trusted=0 in trajectory.csv).", file=sys.stderr)
    if state.stop_reason == "sampler_trouble":
        print(f"error: stopped after {loop_cfg.retry.max_untrusted} consecutive untrusted steps; the outputs are "
              "complete up to there. Try sampler=importance, a larger sampler.num_warmup, or tighter constraints.",
              file=sys.stderr)
        sys.exit(3)


def json_dumps(obj) -> str:
    import json

    return json.dumps(obj, sort_keys=True, default=str)


def _suggest(cfg) -> None:
    import pandas as pd

    from omegaconf import OmegaConf

    from placement.errors import PlacementError
    from placement.gpjax import KERNEL_CLASSES
    from placement.io import write_atomic, write_json
    from placement.suggest import SuggestConfig, read_table, suggest_arrays, suggestions_frame

    t0 = time.perf_counter()
    _enable_compile_cache(cfg)
    plain = lambda v: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v  # noqa: E731
    x_columns = plain(cfg.x_columns)
    if x_columns is not None and not isinstance(x_columns, list):
        x_columns = [x_columns]
    if x_columns is not None and not all(isinstance(c, (str, int, float)) for c in x_columns):
        raise PlacementError(f"x_columns must be a list of column names, e.g. x_columns=[a,b]; got {x_columns!r}.")
    if not isinstance(cfg.y_column, (str, int, float)):
        raise PlacementError(f"y_column must be one column name; got {plain(cfg.y_column)!r}.")
    X, y, names = read_table(cfg.data, None if x_columns is None else [str(c) for c in x_columns], str(cfg.y_column))
    kname = next((n for n, c in KERNEL_CLASSES.items() if c == cfg.kernel._target_.rsplit(".", 1)[-1]), "matern52")
    kopts = {o: plain(cfg.kernel[o]) for o in ("alpha", "period") if o in cfg.kernel}
    pending = cfg.get("pending", None)
    scfg = SuggestConfig(k=cfg.k, criterion=str(cfg.criterion), kernel=kname, seed=cfg.seed,
                         sampler=_suggest_mode(cfg.sampler), ell_prior=str(cfg.get("ell_prior", "fixed")),
                         noise_sd=cfg.get("noise_sd", 0.5), max_seconds=cfg.get("max_seconds") or 0.0,
                         max_memory=plain(cfg.get("max_memory")), progress="auto",
                         approx=str(cfg.get("approx", "exact")), hsgp_m=cfg.get("hsgp_m", 40),
                         hsgp_c=cfg.get("hsgp_c", 2.0), **kopts, **{k: v for k, v in cfg.search.items()})
    target = cfg.get("target", None)
    pts, info = suggest_arrays(X, y, plain(cfg.bounds), scfg, None if pending is None else str(pending), names,
                               None if target is None else str(target))
    out = suggestions_frame(pts, names, info)
    run_dir = _run_dir()
    budget.raise_pending()  # a Ctrl-C or SIGTERM that Python dropped still stops the command here
    write_atomic(run_dir / "suggestions.csv", out.to_csv(index=False))
    seconds = time.perf_counter() - t0
    write_json(run_dir / "suggest.json", {"suggestions": pts, "criterion": scfg.criterion, "before": info["before"],
                                          "after": info["after"], "bounds": info["bounds"], "seconds": seconds,
                                          "hyper_ess": info["hyper_ess"], "pending": info["pending"],
                                          "target_points": info["target_points"],
                                          "cut_short": info["cut_short"], "versions": _versions()})
    from placement.plots import suggestion_plot

    suggestion_plot(X, y, pts, info, info["kernel"], run_dir / "suggestions.png", names)
    with pd.option_context("display.width", 120, "display.precision", 4):
        print(out.to_string(index=False))
    print(f"{scfg.criterion}: {info['before']:.4g} now -> {info['after']:.4g} after the batch (normalised units); "
          f"{seconds:.1f} s -> {run_dir / 'suggestions.csv'}")
    if info["cut_short"]:
        print(f"WARNING: cut short by max_seconds={scfg.max_seconds:g}: the best batch the search had found by then "
              "(cut_short in suggest.json).", file=sys.stderr)


def _suggest_mode(sampler_cfg) -> str:
    from placement.errors import PlacementError

    target = str(sampler_cfg.get("_target_", ""))
    if target.endswith("MAPConfig"):
        return "map"
    if target.endswith("ISConfig"):
        return "bayes"
    if target.endswith(".NUTSConfig"):
        return "nuts"
    raise PlacementError("placement suggest supports sampler=importance (fully Bayesian, the default), "
                         "sampler=nuts (fully Bayesian by NUTS) or sampler=map.")


TASKS = {"gradient": _gradient, "run": _run, "suggest": _suggest}
STOP_TEXT = {"steps": "all steps done", "grad_tol": "|dF/dX| below grad_tol", "patience": "F settled for `patience` steps",
             "sampler_trouble": "stopped: sampler trouble"}  # result.json's stop_reason, in words


class _ErrorsOnly:
    """Another process's stderr: its progress and warnings repeat process 0's, so only an error
    (a line starting "error", Hydra's "Error executing job", a traceback) and what follows it pass,
    each line marked with the process."""

    STARTS = ("error", "Error executing job", "Traceback", "interrupted", "terminated")

    def __init__(self, stream, mark: str):
        self.stream, self.mark, self.open, self.pending = stream, mark, False, ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self.open = self.open or line.startswith(self.STARTS)
            if self.open:
                self.stream.write(f"{self.mark}{line}\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name):  # encoding, fileno, buffer, ...: the real stream's
        return getattr(self.stream, name)


def _join_processes(cmd: str, rest: list[str]) -> tuple[list[str], str | None] | None:
    """Join the other processes of one computation when the environment asks for it
    (``placement.distributed.initialize_from_env``). In process 0, or alone: None. In another
    process: the overrides that keep its files out of the way (Hydra's own files and log off;
    its run folder a scratch folder unless hydra.run.dir names one, which it then only reads:
    ``run resume=true``), and its printed results off (process 0 prints them); and the scratch
    folder to remove at the end, if one was made."""
    if not distributed.requested():
        return None
    if any(a in ("-m", "--multirun", "hydra.mode=MULTIRUN") or a.startswith("hydra.sweeper") for a in rest):
        raise PlacementError("a sweep (-m) runs its jobs one by one, each in its own process; several processes "
                             "computing one estimate (PLACEMENT_COORDINATOR / PLACEMENT_DISTRIBUTED) take one "
                             "command. Unset those variables for a sweep, or give each job its own processes.")
    if cmd == "suggest":  # computed by one process: rank 0 alone, without joining; the others have nothing to do
        return None if distributed.rank_from_env() == 0 else ([], None)
    if distributed.initialize_from_env() == 1 or distributed.is_main():
        return None
    import tempfile

    from placement.runtime import install_stderr_filter

    install_stderr_filter()  # XLA's own lines on fd 2, as in process 0
    sys.stdout = open(os.devnull, "w")
    sys.stderr = _ErrorsOnly(sys.stderr, f"[process {distributed.index()}] ")
    extra, scratch = ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"], None
    if not any(a.lstrip("+").startswith("hydra.run.dir=") for a in rest):
        scratch = tempfile.mkdtemp(prefix=f"placement-process-{distributed.index()}-")
        extra.append(f"hydra.run.dir={scratch}")
    return extra, scratch


def _override_error(cmd: str, e: Exception) -> str:
    """One line for an override Hydra could not apply (an unknown key, an option that does not
    exist, a value it cannot parse), from the error Hydra raised while composing the config,
    before any work or output folder."""
    from hydra.errors import HydraException

    if not isinstance(e, HydraException):  # OmegaConf's own: the first line says it
        return str(e).splitlines()[0]
    options = list(getattr(e, "options", None) or [])
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if options:  # "Could not find 'sampler/importanse'" and the list of options
        group = (getattr(e, "missing_cfg_file", "") or "").rpartition("/")[0] or "the group"
        return f"{lines[0]}; {group} is one of {', '.join(options)}."
    unknown = re.search(r"Could not override '([^']+)'\.\s*To append", str(e)) or \
        re.search(r"Key '([^']+)' is not in struct", str(e))
    if unknown:  # Hydra's advice (append it with +key=) would hide a typo
        return (f"unknown setting {unknown.group(1)!r}: check its spelling (placement {cmd} --cfg job lists "
                "every setting).")
    return " ".join(ln for ln in lines if not ln.startswith(("full_key", "object_type")))


_BAD_NUMBER = re.compile(r"(?:invalid literal for int\(\) with base 10|could not convert string to float): '(.*)'")


def _bad_number(e: ValueError, overrides: list[str]) -> str | None:
    """One line for a setting given a value that is not a number where one is needed (an int()
    or float() of the config that failed on a value the command line gave); None otherwise."""
    m = _BAD_NUMBER.search(str(e))
    keys = [a.partition("=")[0].lstrip("+~") for a in overrides if m and a.partition("=")[2] == m.group(1)]
    return f"{keys[0]}={m.group(1)!r} is not a number; give a number there." if keys else None


def _hydra_raises():
    """Hydra's errors raised to the caller (HYDRA_FULL_ERROR) instead of printed as several
    lines with exit code 1, for the duration of one ``hydra.main`` call."""
    from placement.runtime import env_restored

    return env_restored("HYDRA_FULL_ERROR", "1")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "summarize":
        from placement.summarize import main as summarize_main

        return summarize_main(rest)
    if cmd not in TASKS:
        print(f"error: unknown command {cmd!r}.\n\n{_usage()}", file=sys.stderr)
        return 2

    import hydra
    from hydra.errors import HydraException, InstantiationException
    from omegaconf import DictConfig
    from omegaconf.errors import OmegaConfBaseException

    try:
        worker = _join_processes(cmd, rest)
    except PlacementError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if worker is not None and cmd == "suggest":  # one process computes a suggestion: rank 0's
        return 0
    overrides, scratch = worker or ([], None)
    rest = rest + overrides

    existed = _existing_above(cmd, rest)

    def task(cfg: DictConfig) -> None:
        from placement.runtime import quiet_console_logging

        quiet_console_logging()  # third-party INFO off the terminal (kept in the run's .log)
        run_dir = _run_dir()
        created = not any(p.name not in (".hydra",) and not p.name.endswith(".log") for p in run_dir.iterdir()) if run_dir.exists() else True
        created = created and distributed.is_main()  # another process's folder is process 0's to remove
        discard = _made_for(run_dir, existed) if created else []
        try:
            from placement import memory

            with memory.scope(cfg.get("max_memory")):  # what gradient/run plan their batches for
                TASKS[cmd](cfg)
        except PlacementError as e:
            _fail(str(e), discard)
        except InstantiationException as e:  # a config class refused its settings (__post_init__)
            cause = e.__cause__
            while cause is not None and not isinstance(cause, PlacementError):
                cause = cause.__cause__
            _fail(str(cause) if cause is not None else f"configuration: {str(e).splitlines()[-1]}", discard)
        except OmegaConfBaseException as e:  # e.g. a mandatory key left at ???
            _fail(f"configuration: {str(e).splitlines()[0]} (set it on the command line, e.g. data=FILE).",
                  discard)
        except (KeyboardInterrupt, _Terminated) as e:
            _interrupted(cmd, e, run_dir, discard)
        except ValueError as e:  # a number setting given text, e.g. steps=abc
            problem = _bad_number(e, rest)
            if problem is None:
                raise
            _fail(problem, discard)
        except Exception as e:  # an allocation failure that planning did not foresee: one message, no traceback
            from placement.memory import is_oom, oom_error

            if not is_oom(e):
                raise
            _fail(str(oom_error(e, f"placement {cmd}", "Set a smaller problem or batch, or raise max_memory.")),
                  discard)

    budget.clear_stop()
    sigint = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGTERM, _on_sigterm)
    if sigint is signal.default_int_handler:  # Ctrl-C recorded too (budget._PENDING); not when ignored
        signal.signal(signal.SIGINT, budget._on_sigint)
    sys.argv = [f"placement-{cmd}"] + rest
    try:
        with _hydra_raises():
            hydra.main(config_path=CONF_DIR, config_name=cmd, version_base="1.3")(task)()
    except (HydraException, OmegaConfBaseException) as e:  # the task catches its own: a bad override
        print(f"error: {_override_error(cmd, e)}", file=sys.stderr)
        return 2
    except SystemExit as e:  # an error or an interrupt in one of several processes: the others are not waited for
        if distributed.multi() and e.code not in (0, None):
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
            distributed.exit_now(e.code if isinstance(e.code, int) else 1)
        raise
    except (KeyboardInterrupt, _Terminated) as e:  # before the task started: nothing was written
        print("interrupted before any work was done.", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(e, _Terminated) else EXIT_INTERRUPT
    finally:
        signal.signal(signal.SIGINT, sigint)
        budget.clear_stop()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
