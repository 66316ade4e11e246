"""What returning to Python between compiled calls costs (issue: long work, item 1).

Long work runs in chunks so that Ctrl-C, SIGTERM and max_seconds act between calls. This
measures the price, in one process, as a ratio of the same work done both ways:

- gradient terms: ``estimator.shared_terms`` (the planned chunk of draws per call) against
  the same compiled body called once on all the draws, on the GP of
  experiments/scale_problems.py at several n;
- suggest search: ``search.batch_search`` with calls of about ``CALL_SECONDS`` against one call
  per phase (the second phase still stops at its convergence checks, as the algorithm does).

Each pair is timed alternately ``--reps`` times after a warm-up call; the ratio of medians is
reported. Results are identical either way (checked here too).

    python experiments/chunk_cost.py                 # writes experiments/results/chunk_cost.{json,md}
    python experiments/chunk_cost.py --n 60 --reps 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def pair(chunked, whole, reps: int) -> dict:
    """Alternate the two calls ``reps`` times after one warm-up each; medians and their ratio."""
    a0, b0 = chunked(), whole()
    same = all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a0, b0))
    ta, tb = [], []
    for _ in range(reps):
        ta.append(_timed(chunked)[0])
        tb.append(_timed(whole)[0])
    return {"chunked_s": float(np.median(ta)), "whole_s": float(np.median(tb)),
            "ratio": float(np.median(ta) / np.median(tb)), "identical": bool(same),
            "chunked_all": ta, "whole_all": tb}


def gradient_rows(ns, draws: int | None, reps: int) -> list[dict]:
    from placement import estimator
    from placement.model import from_pymc
    from scale_problems import gp

    rows = []
    for n in ns:
        jm = from_pymc(gp(n=n, d=1), "integrated_variance")
        chunked = estimator.shared_terms(jm)
        plan = chunked.plan
        N = draws or 8 * plan.chunk  # default: 8 calls of the planned chunk
        rng = np.random.default_rng(0)
        thetas = 0.3 * rng.normal(size=(N, jm.ndim))
        X, y = jm.X, jm.y
        whole = estimator._chunked(estimator.make_terms(jm, plan.batch), N)
        row = pair(lambda: chunked(thetas, X, y), lambda: whole(thetas, X, y), reps)
        row.update(task="gradient terms", n=n, draws=N, chunk=plan.chunk, batch=plan.batch,
                   calls=-(-N // plan.chunk))
        print(json.dumps({k: v for k, v in row.items() if not k.endswith("_all")}), flush=True)
        rows.append(row)
    return rows


def search_rows(ns, reps: int) -> list[dict]:
    from placement.suggest import search, suggester
    from placement.suggest.config import SuggestConfig
    from scale_problems import data

    rows = []
    for n in ns:
        X, y = data(n, 2)
        captured = {}

        def capture(*args, **kw):
            captured["args"], captured["kw"] = args, kw
            return search.batch_search(*args, **kw)

        real = suggester.batch_search
        suggester.batch_search = capture
        try:
            suggester.suggest_arrays(X, y, None, SuggestConfig(k=10, progress="off"))
        finally:
            suggester.batch_search = real
        args, kw = captured["args"], captured["kw"]
        steps_real = search._Pace.steps

        def run(whole: bool):
            search._Pace.steps = (lambda self, left: left) if whole else steps_real
            try:
                r = search.batch_search(*args, **kw)
            finally:
                search._Pace.steps = steps_real
            return (r.batch, np.asarray(r.value))

        row = pair(lambda: run(False), lambda: run(True), reps)
        row.update(task="suggest search (fully Bayesian, d=2, k=10)", n=n, call_seconds=search.CALL_SECONDS)
        print(json.dumps({k: v for k, v in row.items() if not k.endswith("_all")}), flush=True)
        rows.append(row)
    return rows


def report(rows, path: Path) -> None:
    lines = ["# Cost of chunking long work (experiments/chunk_cost.py)", "",
             f"One process, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end; medians of alternating repeats after a warm-up; "
             "ratio = chunked / one call. Results identical both ways where marked.", "",
             "| task | n | calls / chunk | chunked s | one call s | ratio | identical |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        calls = f"{r['calls']} x {r['chunk']}" if "calls" in r else f"~{r['call_seconds']} s per call"
        lines.append(f"| {r['task']} | {r['n']} | {calls} | {r['chunked_s']:.2f} | {r['whole_s']:.2f} | "
                     f"{r['ratio']:.3f} | {'yes' if r['identical'] else 'NO'} |")
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    path.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[60, 200])
    ap.add_argument("--search-n", type=int, nargs="+", default=[100, 200])
    ap.add_argument("--draws", type=int, default=0, help="draws per estimate (0: 8 calls of the planned chunk)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "chunk_cost")
    a = ap.parse_args(argv)
    rows = gradient_rows(a.n, a.draws, a.reps)
    report(rows, a.out)  # written after each part: a long search part does not lose the first
    rows += search_rows(a.search_n, a.reps)
    report(rows, a.out)


if __name__ == "__main__":
    main()
