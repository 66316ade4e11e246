"""How long Ctrl-C takes to stop long work at large n (issue: long work, item 1).

Python runs signal handlers only between compiled calls, so the latency of an interrupt is
the compiled call in flight plus the interpreter's exit. This starts each command below in a
fresh process (stderr a pipe, so progress comes as a line every few seconds), waits until
its log shows the stage named (or, for a stage that prints nothing, from the start), sends
SIGINT at a random moment of a window after that, and records the seconds from the signal to
the exit, the exit code (130 expected) and whether an output folder was left.

Cases (the places where one compiled call grows with n):
- ``nuts``: ``placement gradient sampler=nuts`` on the GP of experiments/scale_problems.py,
  n = 300 (every transition up to 2^10 leapfrog steps, each an n x n Cholesky per chain);
- ``map1000``: ``placement suggest sampler=map`` on n = 1000 points in d = 4, signalled 6-16 s
  after the start: the Newton steps of the hyperparameter mode (one closed-form score per
  step, no progress line) and the search's first calls (the whole command takes about 10-12 s,
  so some signals come after it ended: those rows say so);
- ``bayes1000``: the same fully Bayesian (hyperparameter draws, then the search).

    python experiments/interrupt_latency.py                  # writes experiments/results/interrupt_latency.{json,md}
    python experiments/interrupt_latency.py --cases nuts --reps 2
    python experiments/interrupt_latency.py --cases map1000 --reps 12 --window 6.5 8.5 --out /tmp/il
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def _suggest_data(folder: Path, n: int, d: int) -> str:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    X = rng.uniform(0, 1, (n, d))
    y = np.sin(3 * X).sum(1) + 0.1 * rng.normal(size=n)
    path = folder / f"data_{n}_{d}.csv"
    pd.DataFrame(np.column_stack([X, y]), columns=[f"x{j}" for j in range(d)] + ["y"]).to_csv(path, index=False)
    return str(path)


def commands(case: str, folder: Path) -> tuple[list[str], str | None, tuple]:
    """(CLI arguments, the log text that says the long stage is under way (None: the start),
    the window of seconds after it in which the signal is sent)."""
    if case == "nuts":
        return (["gradient", "problem=custom", "problem.builder=scale_problems:gp", "+problem.args.n=300",
                 "objective=integrated_variance", "sampler=nuts", "retry.max_retries=0"], "NUTS", (0.0, 5.0))
    data = _suggest_data(folder, 1000, 4)
    if case == "map1000":
        return (["suggest", f"data={data}", "k=10", "sampler=map"], None, (6.0, 16.0))
    if case == "bayes1000":
        return (["suggest", f"data={data}", "k=10"], "suggest:", (0.0, 5.0))
    raise SystemExit(f"unknown case {case!r}")


def one(case: str, seed: int, window_override: tuple | None = None) -> dict:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        args, stage, window = commands(case, folder)
        out = folder / "out"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
        t0 = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-m", "placement.cli", *args, f"hydra.run.dir={out}"], cwd=folder,
                             env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        seen = []
        if stage is not None:
            for line in p.stderr:
                seen.append(line)
                if stage in line:
                    break
            else:
                p.wait()
                return {"case": case, "seed": seed, "error": "no progress line", "log": "".join(seen)[-2000:]}
        time.sleep(rng.uniform(*(window_override or window)))  # a random moment of the stage, not its first call
        if p.poll() is not None:
            return {"case": case, "seed": seed, "error": f"finished (exit {p.returncode}) before the signal"}
        t = time.perf_counter()
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=600)
        latency = time.perf_counter() - t
        lines = [ln for ln in "".join(seen).splitlines() + err.splitlines() if ln.startswith(args[0] + ":")]
        return {"case": case, "seed": seed, "latency_s": round(latency, 2), "code": p.returncode,
                "signal_at_s": round(t - t0, 1), "folder_left": out.exists(), "traceback": "Traceback" in err,
                "last_progress": lines[-1].strip()[:160] if lines else "(none yet)",
                **({"stderr_tail": err[-3000:]} if "Traceback" in err or p.returncode != 130 else {})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", nargs="+", default=["nuts", "map1000", "bayes1000"])
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--window", type=float, nargs=2, metavar=("FROM", "TO"),
                    help="seconds after the stage's mark in which to signal (default: each case's own)")
    ap.add_argument("--out", default=str(RESULTS / "interrupt_latency"))
    a = ap.parse_args()
    rows = []
    for case in a.cases:
        for r in range(a.reps):
            row = one(case, r, tuple(a.window) if a.window else None)
            print(json.dumps(row), flush=True)
            rows.append(row)
    Path(a.out + ".json").write_text(json.dumps(rows, indent=1))
    lines = ["# Interrupt latency at large n", "", "Seconds from SIGINT to the exit of a fresh `placement` process, "
             "the signal sent at a random moment of each case's window (after the stage's first progress "
             "line, or after the start for a stage without one). "
             "See the docstring of experiments/interrupt_latency.py.", "",
             "| case | signal at s | latency s | exit code | folder left | traceback | last progress line |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['case']} | - | - | - | - | - | {row['error']} |")
            continue
        lines.append(f"| {row['case']} | {row['signal_at_s']} | {row['latency_s']} | {row['code']} | "
                     f"{row['folder_left']} | {row['traceback']} | `{row['last_progress']}` |")
    Path(a.out + ".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
