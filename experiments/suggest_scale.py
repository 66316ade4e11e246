"""Cost of `placement suggest` against the number of data points.

Synthetic data: n points uniform in [0, 1]^d, y = sum_i sin(3 x_i + i) + 0.5 x_0 x_1 plus
normal noise (sd 0.1); a batch of k points by `placement.suggest.suggest_arrays` with the
default criterion (expected_total_variance) and default search settings, for
sampler=map and the default fully Bayesian hyperparameters (sampler=bayes).

Each (n, sampler) runs in a fresh Python process, so the wall time includes every
compilation (the persistent compile cache is not used); peak memory is the process's
maximum resident set size. The child also reports the time of each phase.

    python experiments/suggest_scale.py                  # n in 50 200 400 1000, both samplers
    python experiments/suggest_scale.py --n 200 1000 --samplers map bayes
    PYTHONPATH=/tmp/old python experiments/suggest_scale.py --n 200 1000 --out /tmp/old_scale  # an older checkout
    python experiments/suggest_scale.py --n 200 1000 --before /tmp/old_scale.json --before-label "commit abc"
Writes experiments/results/suggest_scale.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def data(n, d, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 1, (n, d))
    y = np.sin(3 * X + np.arange(d)).sum(1) + 0.5 * X[:, 0] * X[:, 1] + 0.1 * rng.normal(size=n)
    return X, y


def child(n, d, k, sampler):
    t0 = time.perf_counter()
    import placement  # noqa: F401
    import jax

    from placement import suggest as S

    t_import = time.perf_counter() - t0
    phases = {}

    def timed(name, fn):
        def wrapper(*a, **kw):
            t = time.perf_counter()
            out = jax.block_until_ready(fn(*a, **kw))  # JAX dispatches asynchronously
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - t
            return out
        return wrapper

    from placement.suggest import criteria as C, hyper as H, suggester as R

    H.hyper_draws = timed("hyperparameters", H.hyper_draws)
    H.hyper_mode = timed("mode", H.hyper_mode)  # parts of hyperparameters
    H._importance = timed("importance", H._importance)
    C.crit_data = timed("factorise", C.crit_data)
    R.batch_search = timed("search", R.batch_search)
    C.mixture_predictive = timed("predictive", C.mixture_predictive)
    C.batch_mixture = timed("predictive", C.batch_mixture)
    X, y = data(n, d)
    load0 = os.getloadavg()[0]
    t, c = time.perf_counter(), time.process_time()
    pts, info = S.suggest_arrays(X, y, None, S.SuggestConfig(k=k, sampler=sampler))
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB -> GiB
    print(json.dumps({"n": n, "d": d, "k": k, "sampler": sampler, "wall_s": wall, "cpu_s": cpu, "import_s": t_import,
                      "peak_gb": peak, "phases": phases, "load_1min": [load0, os.getloadavg()[0]], "hyper_ess": info["hyper_ess"],
                      "before": info["before"], "after": info["after"]}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[50, 200, 400, 1000])
    ap.add_argument("--samplers", nargs="+", default=["map", "bayes"])
    ap.add_argument("--d", type=int, default=4)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--child", nargs=4)
    ap.add_argument("--out", default=str(HERE / "results" / "suggest_scale"))
    ap.add_argument("--before", help="a JSON this script wrote for an earlier version, shown as a second table")
    ap.add_argument("--before-label", default="earlier version")
    a = ap.parse_args()
    if a.child:
        n, d, k, s = a.child
        return child(int(n), int(d), int(k), s)
    env = dict(os.environ, PLACEMENT_CACHE="")
    env.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    env.setdefault("OMP_NUM_THREADS", "1")
    rows = []
    for n in a.n:
        for s in a.samplers:
            r = subprocess.run([sys.executable, __file__, "--child", str(n), str(a.d), str(a.k), s],
                               capture_output=True, text=True, env=env)
            line = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
            if r.returncode or not line:
                row = {"n": n, "d": a.d, "k": a.k, "sampler": s, "error": r.stderr[-2000:]}
            else:
                row = json.loads(line[-1])
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    import platform

    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "xla_flags": env["XLA_FLAGS"], "omp_num_threads": env["OMP_NUM_THREADS"]}
    before = json.loads(Path(a.before).read_text()) if a.before else None
    if before:
        before["label"] = a.before_label
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows, "before": before}, indent=1))
    lines = ["# placement suggest: wall time and peak memory against n", "",
             f"d = {a.d}, k = {a.k}, default criterion and search; fresh process per row (compile included, "
             f"imports excluded and listed; CPU s is the process's CPU time over the same span, the fairer figure on a shared machine; "
             f"phases are timed with their results ready, JAX dispatching asynchronously); XLA single-threaded "
             f"({env['XLA_FLAGS']}), {os.cpu_count()} cores; load is the machine's 1-minute load average "
             f"(other work on the same 2 cores).", ""]
    lines += table(rows)
    if before:
        lines += ["", f"## Before: {a.before_label}", "", "Same script, same machine, run just before the rows above.", ""]
        lines += table(before["rows"])
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def table(rows):
    lines = ["| n | sampler | wall s | CPU s | import s | peak GB | hyper s (mode + importance) | factorise s | search s | "
             "predictive s | hyper ESS | load (start, end) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['n']} | {r['sampler']} | failed | | | | | | | | | |")
            continue
        p = r["phases"]
        lines.append(f"| {r['n']} | {r['sampler']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['import_s']:.1f} | {r['peak_gb']:.2f} | "
                     f"{p.get('hyperparameters', 0):.1f} ({p.get('mode', 0):.1f} + {p.get('importance', 0):.1f}) | "
                     f"{p.get('factorise', 0):.1f} | {p.get('search', 0):.1f} | {p.get('predictive', 0):.1f} | "
                     f"{r['hyper_ess']:.0f} | {r.get('load_1min', [0, 0])[0]:.1f}, {r.get('load_1min', [0, 0])[1]:.1f} |")
    return lines

if __name__ == "__main__":
    main()
