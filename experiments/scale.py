"""Cost curve: wall time and peak memory against the number of points n and inputs d.

Every measurement is one whole CLI call in a fresh process, as a user runs it (imports,
PyMC export and compilation included; the persistent compile cache off), on the GP of
experiments/scale_problems.py (n points uniform in [0, 10]^d, Matern 5/2, the seed priors):

- gradient: `placement gradient sampler=importance_large sampler.rel_se=0` (a fixed 1,024
  terms evaluations, 512 aim + 512 final, and 256 log-density-only adaptation draws, so
  the cost per draw is what grows), objective integrated_variance; also its in-process
  estimate seconds (`seconds` in gradient.json);
- run step: `placement run steps=6` with the same sampler; the median warm step among steps
  1-5 that needed no retry (a step whose importance weights degenerate after the optimizer's
  first, largest moves is retried once with a freshly adapted proposal, compiled on first use;
  the row counts those steps and their mean seconds apart);
- suggest: `placement suggest k=10` on a CSV of the same data, sampler=map and the default
  fully Bayesian one.

A task stops growing n once a call takes longer than --cap seconds (or fails). The growth
exponent is the least-squares slope of log time against log n over the rows with n >= 200.
Resumable: rows are appended to experiments/results/scale.jsonl and skipped when present.

    python experiments/scale.py                          # n in 20 .. 2000 at d = 1, d in 1 .. 6 at n = 200
    python experiments/scale.py --n 50 200 --d 1 --tasks gradient suggest_map
    python experiments/scale.py --report                 # table, exponents and plot from the rows so far
Writes experiments/results/scale.{jsonl,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "scale"
TASKS = ("gradient", "run_step", "suggest_map", "suggest_bayes")
RUN_STEPS = 6
PROBLEM = ["problem=custom", "problem.builder=scale_problems:gp", "objective=integrated_variance",
           "sampler=importance_large", "sampler.rel_se=0", "compile_cache=false"]


def timed_call(args, cwd):
    """Run a CLI call; (wall seconds, peak resident MB, returncode, stderr tail)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    t = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-f", "PEAK_KB %M", sys.executable, "-m", "placement.cli", *args],
                       cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    peak = [ln for ln in r.stderr.splitlines() if ln.startswith("PEAK_KB ")]
    return wall, (int(peak[-1].split()[1]) / 1024 if peak else float("nan")), r.returncode, r.stderr[-1500:]


def measure(task, n, d, work: Path) -> dict:
    size = [f"+problem.args.n={n}", f"+problem.args.d={d}"]
    row = {"task": task, "n": n, "d": d, "load_before": os.getloadavg()[0]}
    if task == "gradient":
        wall, peak, rc, err = timed_call(["gradient", *PROBLEM, *size, f"hydra.run.dir={work}"], work)
        if rc == 0:
            row["compute_s"] = json.loads((work / "gradient.json").read_text())["seconds"]
    elif task == "run_step":
        wall, peak, rc, err = timed_call(["run", *PROBLEM, *size, f"steps={RUN_STEPS}", "plots=false",
                                          "gradient_check=off", f"hydra.run.dir={work}"], work)
        if rc == 0:
            import pandas as pd

            traj = pd.read_csv(work / "trajectory.csv").iloc[1:]  # step 0 starts cold
            clean = traj["attempts"].to_numpy() == 1
            secs = traj["step_seconds"].to_numpy()
            row["compute_s"] = float(np.median(secs[clean])) if clean.any() else float("nan")
            row["retried_steps"] = int((~clean).sum())
            row["retried_step_s"] = float(secs[~clean].mean()) if (~clean).any() else None
    else:
        sys.path.insert(0, str(HERE))
        from scale_problems import data

        X, y = data(n, d)
        X = X.reshape(n, d)
        csv = work / "data.csv"
        header = ",".join([f"x{j}" for j in range(d)] + ["y"])
        np.savetxt(csv, np.column_stack([X, y]), delimiter=",", header=header, comments="")
        sampler = "map" if task == "suggest_map" else "importance"
        wall, peak, rc, err = timed_call(["suggest", f"data={csv}", "k=10", f"sampler={sampler}", "compile_cache=false",
                                          f"hydra.run.dir={work}"], work)
        row["compute_s"] = wall
    row.update(wall_s=wall, peak_mb=peak, ok=rc == 0)
    if rc:
        row["error"] = err
    return row


def done_rows(path: Path) -> list:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []


def exponent(rows, task, d=1, n_min=200):
    pts = [(r["n"], r["compute_s"]) for r in rows if r["task"] == task and r["d"] == d and r.get("ok") and r["n"] >= n_min]
    if len(pts) < 2:
        return None
    n, t = np.log(np.array(pts, dtype=float)).T
    return float(np.polyfit(n, t, 1)[0])


def report(rows):
    lines = ["# Cost against n and d", "",
             "One CLI call per row in a fresh process (imports, export and compilation included, compile cache off); "
             "`compute` is the estimate's own seconds (gradient), the median warm step without a retry (run) or the whole "
             "call (suggest). "
             "Peak is the process's resident memory. Load: the machine's 1-minute load average before the call.", "",
             "| task | n | d | wall s | compute s | peak MB | load | note |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (TASKS.index(r["task"]), r["d"], r["n"])):
        note = "" if r.get("ok") else "failed: " + r.get("error", "").strip().splitlines()[-1][:80] if r.get("error") else "skipped"
        if r.get("retried_steps"):
            note = f"{r['retried_steps']} of {RUN_STEPS - 1} warm steps retried, {r['retried_step_s']:.1f} s each"
        lines.append(f"| {r['task']} | {r['n']} | {r['d']} | {r['wall_s']:.1f} | {r.get('compute_s', float('nan')):.2f} | "
                     f"{r['peak_mb']:.0f} | {r['load_before']:.1f} | {note} |")
    lines += ["", "Growth exponent of compute time in n (d = 1, least squares over n >= 200):", ""]
    for task in TASKS:
        e = exponent(rows, task)
        lines.append(f"- {task}: " + ("n/a (fewer than two rows)" if e is None else f"n^{e:.2f}"))
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")
    plot(rows)
    print("\n".join(lines))


def plot(rows):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for task in TASKS:
        r1 = sorted([r for r in rows if r["task"] == task and r["d"] == 1 and r.get("ok")], key=lambda r: r["n"])
        if r1:
            a.loglog([r["n"] for r in r1], [r["compute_s"] for r in r1], "o-", label=task)
            b.loglog([r["n"] for r in r1], [r["peak_mb"] for r in r1], "o-", label=task)
    a.set(xlabel="n (d = 1)", ylabel="seconds", title="time")
    b.set(xlabel="n (d = 1)", ylabel="peak MB", title="memory")
    a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT.with_suffix(".png"), dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[20, 50, 100, 200, 500, 1000, 2000])
    ap.add_argument("--d", type=int, nargs="+", default=[1, 2, 4, 6], help="inputs, each at --n-for-d points")
    ap.add_argument("--n-for-d", type=int, default=200)
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    ap.add_argument("--cap", type=float, default=180.0, help="stop growing n for a task after a call this long")
    ap.add_argument("--report", action="store_true", help="only write the table and plot from the rows so far")
    a = ap.parse_args()
    path = OUT.with_suffix(".jsonl")
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = done_rows(path)
    if not a.report:
        plan = [(t, n, 1) for t in a.tasks for n in sorted(a.n)] + [(t, a.n_for_d, d) for t in a.tasks for d in a.d if d != 1]
        stopped = set()
        for task, n, d in plan:
            if any(r["task"] == task and r["n"] == n and r["d"] == d for r in rows) or (task, d) in stopped:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                row = measure(task, n, d, Path(tmp))
            rows.append(row)
            with path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(json.dumps({k: v for k, v in row.items() if k != "error"}), flush=True)
            if not row["ok"] or row["wall_s"] > a.cap:
                stopped.add((task, d))
    report(rows)


if __name__ == "__main__":
    main()
