"""Command line: ``placement <command> [hydra overrides]``. Parsing and wiring only."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from pathlib import Path

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
COMMANDS = {"gradient": "compute F and dF/dX with standard errors at one design"}

log = logging.getLogger("placement")


def _usage() -> str:
    lines = ["usage: placement <command> [key=value ...]", "", "commands:"]
    lines += [f"  {name:10s} {doc}" for name, doc in COMMANDS.items()]
    lines += ["", "Overrides are Hydra-style: sampler=nuts sampler.num_chains=8 seed=3 kernel=matern32",
              "`placement <command> --cfg job` prints the resolved config; `--help` lists the groups."]
    return "\n".join(lines)


def _fail(msg: str, run_dir: Path | None, created: bool) -> None:
    print(f"error: {msg}", file=sys.stderr)
    if created and run_dir is not None and run_dir.exists():
        shutil.rmtree(run_dir, ignore_errors=True)  # no half-written output
    sys.exit(2)


def _enable_compile_cache(cfg) -> None:
    if cfg.get("compile_cache", True):
        import jax

        path = os.environ.get("PLACEMENT_CACHE", str(Path.home() / ".cache" / "placement" / "jax"))
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def _gradient(cfg) -> None:
    import numpy as np
    from hydra.utils import instantiate

    from placement.api import build_problem, gradient, trust_problems
    from placement.io import write_json

    t0 = time.perf_counter()
    _enable_compile_cache(cfg)
    sampler_cfg = instantiate(cfg.sampler)
    kernel = instantiate(cfg.kernel)
    problem = build_problem(cfg.problem, kernel)
    X = None if cfg.get("X") is None else list(cfg.X)
    est = gradient(problem, sampler_cfg, X=X, seed=int(cfg.seed))
    seconds = time.perf_counter() - t0
    d = est.diagnostics
    problems = trust_problems(est, sampler_cfg)
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
        "sampler": d.get("sampler"),
        "objective": problem.jm.objective_name,
        "diagnostics": d,
    }
    out = write_json(_run_dir() / "gradient.json", result)
    print(_table(Xused, est))
    print(f"sampler={d.get('sampler')}  draws={d.get('num_draws')}  seconds={seconds:.2f}  -> {out}")
    if d.get("sampler") == "nuts":
        print("note: NUTS standard errors cannot see posterior regions the chains rarely visit; on the "
              "seed problem this under-states the error. Cross-check with sampler=importance.", file=sys.stderr)
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


TASKS = {"gradient": _gradient}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in TASKS:
        print(f"error: unknown command {cmd!r}.\n\n{_usage()}", file=sys.stderr)
        return 2

    import hydra
    from omegaconf import DictConfig

    from placement.errors import PlacementError

    def task(cfg: DictConfig) -> None:
        run_dir = _run_dir()
        created = not any(p.name not in (".hydra",) and not p.name.endswith(".log") for p in run_dir.iterdir()) if run_dir.exists() else True
        try:
            TASKS[cmd](cfg)
        except PlacementError as e:
            _fail(str(e), run_dir, created)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    sys.argv = [f"placement-{cmd}"] + rest
    hydra.main(config_path=CONF_DIR, config_name=cmd, version_base="1.3")(task)()
    return 0


if __name__ == "__main__":
    sys.exit(main())
