"""Exact GP vs its Hilbert-space approximation (pm.gp.HSGP): when to switch

Each point runs in a fresh Python process (compilations included; no persistent compile cache)
with one XLA thread, and is written as one JSON line to experiments/results/hsgp_crossover.jsonl
as soon as it ends; a rerun skips the points already there (resumable), so the work can go in
pieces of a few minutes (``--budget`` seconds each).

suggest: one `placement suggest` request (default search settings: 32 hyperparameter draws, 16
fantasies, 256 grid points, 8 restarts x 150 steps; k = 5; expected_total_variance; Matern52) on
n points of a 1-D synthetic data set (x uniform on [0, 10], y = sin x + 0.3 cos 3x + N(0, 0.1^2),
seed 0), for sampler=map and sampler=bayes, approx=exact and approx=hsgp (hsgp_m=40, hsgp_c=2).
Wall seconds of the call, its CPU seconds, the process's peak RSS (imports included) and the
criterion before and after the batch. Accuracy: the HSGP's criterion values against the exact
GP's at the same n and sampler (relative difference), and the exact criterion of the HSGP's
batch against that of the exact GP's batch (what choosing with the HSGP costs).

gradient: one default ``gradient`` estimate (importance sampler, objective gp_mu, Matern52) on the
seed data at n points, problem seed_gp (exact) vs problem=hsgp (m=40, c=2): wall and CPU seconds of
the first (cold) and second (warm) estimate in the process, peak RSS, F and dF/dX; the HSGP's F and
dF/dX against the exact GP's (relative difference, with the two estimates' SEs).

A point over ``--timeout`` seconds is recorded as such, and the exact GP is not run at larger n for
that part and sampler. Run on one XLA thread, under the shared CPU lock:

    flock /tmp/cpu.lock env XLA_FLAGS=--xla_cpu_multi_thread_eigen=false OMP_NUM_THREADS=1 \\
        python experiments/hsgp_crossover.py --budget 540          # repeat until it reports "done"
        python experiments/hsgp_crossover.py --parts gradient      # one part only
    python experiments/hsgp_crossover.py --report                  # md + png from the jsonl only

Writes experiments/results/hsgp_crossover.{jsonl,md,png}.
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
RESULTS = HERE / "results"
OUT = RESULTS / "hsgp_crossover"
SUGGEST_N = (50, 100, 200, 400, 800, 1600)
GRADIENT_N = (50, 100, 200, 400)
M, C = 40, 2.0
K = 5


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def data(n: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 10.0, n)
    y = np.sin(x) + 0.3 * np.cos(3.0 * x) + 0.1 * rng.normal(size=n)
    return x[:, None], y


def run_suggest(approx: str, sampler: str, n: int) -> dict:
    """In this process: one suggest request; seconds, memory, criterion values, the batch."""
    import numpy as np

    from placement.suggest import SuggestConfig, suggest_arrays

    X, y = data(n)
    cfg = SuggestConfig(k=K, sampler=sampler, approx=approx, hsgp_m=M, hsgp_c=C, seed=0, progress="off")
    base = rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    pts, info = suggest_arrays(X, y, [[0.0, 10.0]], cfg)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"part": "suggest", "approx": approx, "sampler": sampler, "n": n, "wall_s": wall, "cpu_s": cpu,
            "rss_base_mb": base, "rss_peak_mb": rss_mb(), "before": float(info["before"]),
            "after": float(info["after"]), "hyper_ess": float(info["hyper_ess"]),
            "batch": np.sort(np.asarray(pts)[:, 0]).tolist(), "hyper": [np.asarray(h).tolist() for h in info["hyper"]]}


def exact_value(n: int, sampler: str, batch, hyper) -> float:
    """The exact GP's expected_total_variance of a batch (data units) at the exact run's draws."""
    import numpy as np

    from placement.suggest import criteria
    from placement.suggest.kernel import for_bounds
    from placement.suggest.search import grid_points
    from placement.suggest.table import prepare
    from placement.suggest.config import SuggestConfig

    X, y = data(n)
    cfg = SuggestConfig(k=K, sampler=sampler, seed=0, progress="off")
    b, Xn, yn, _ = prepare(X, y, [[0.0, 10.0]], cfg)
    kernel = for_bounds("matern52", b)
    hyper = tuple(np.asarray(h) for h in hyper)
    z = criteria.fantasy_normals(cfg.num_fantasies, len(hyper[1]), K, 0)
    fn, _ = criteria.make_criterion(cfg.criterion, kernel, Xn, yn, grid_points(1, cfg.grid, 0), hyper, z)
    return float(fn((np.asarray(batch)[:, None] - b[:, 0]) / (b[:, 1] - b[:, 0])))


def run_gradient(approx: str, n: int) -> dict:
    """In this process: two default gradient estimates at the seed design (cold, warm)."""
    import numpy as np

    from placement.api import build_problem, gradient
    from placement.importance import ISConfig
    from placement.kernels import Matern52

    builder = {"exact": "placement.problems:seed_gp", "hsgp": "placement.problems:hsgp_gp"}[approx]
    args = {"n": n, **({"m": M, "c": C} if approx == "hsgp" else {})}
    p = build_problem({"builder": builder, "args": args, "name": approx}, Matern52, "gp_mu")
    base = rss_mb()
    walls, cpus, est = [], [], None
    for _ in range(2):
        t0, c0 = time.perf_counter(), time.process_time()
        est = gradient(p, ISConfig(), seed=0)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    d = est.diagnostics
    return {"part": "gradient", "approx": approx, "sampler": "importance", "n": n, "wall_s": walls[1],
            "cold_wall_s": walls[0], "cpu_s": cpus[1], "cold_cpu_s": cpus[0], "rss_base_mb": base,
            "rss_peak_mb": rss_mb(), "F": float(est.F), "F_se": float(est.F_se),
            "grad": np.asarray(est.grad).ravel().tolist(), "grad_se": np.asarray(est.grad_se).ravel().tolist(),
            "draws": d.get("num_draws"), "trusted": bool(d.get("trusted"))}


def child(args: list[str], key: dict, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--one", *args]
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=dict(os.environ))
    except subprocess.TimeoutExpired:
        return {**key, "timeout_s": timeout, "error": f"over {timeout:.0f} s"}
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not lines:
        return {**key, "error": (r.stderr.strip().splitlines() or ["?"])[-1], "process_s": time.perf_counter() - t0}
    return {**json.loads(lines[-1]), "process_s": time.perf_counter() - t0}


ORDER = (200, 800, 1600, 50, 400, 100)  # the most telling n first, so a short piece already brackets the crossover


def plan():
    """Every point in order: (key, child args)."""
    for sampler in ("map", "bayes"):
        for n in sorted(SUGGEST_N, key=lambda v: ORDER.index(v) if v in ORDER else len(ORDER)):
            for approx in ("hsgp", "exact"):
                yield {"part": "suggest", "approx": approx, "sampler": sampler, "n": n}, ["suggest", approx, sampler, str(n)]
    for n in sorted(GRADIENT_N, key=lambda v: ORDER.index(v) if v in ORDER else len(ORDER)):
        for approx in ("hsgp", "exact"):
            yield {"part": "gradient", "approx": approx, "sampler": "importance", "n": n}, ["gradient", approx, str(n)]


def ident(r: dict) -> tuple:
    return r["part"], r["approx"], r["sampler"], r["n"]


def load(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def measure(path: Path, budget: float, timeout: float, parts=("suggest", "gradient")) -> bool:
    """Run the points of ``parts`` not yet in path until budget seconds have passed; True when
    all are done."""
    rows = load(path)
    done = {ident(r) for r in rows}
    failed = {(r["part"], r["approx"], r["sampler"]): r["n"] for r in rows if "error" in r and r["approx"] == "exact"}
    t0 = time.perf_counter()
    for key, args in plan():
        if ident(key) in done or key["part"] not in parts:
            continue
        stop = failed.get((key["part"], key["approx"], key["sampler"]))
        if stop is not None and key["n"] > stop:
            row = {**key, "skipped": f"n={stop} did not finish"}
        else:
            left = budget - (time.perf_counter() - t0)
            if left < min(timeout, 60.0):
                return False
            row = child(args, key, min(timeout, left))
            if "error" in row and "over" in row["error"] and row.get("timeout_s", timeout) < timeout:
                return False  # cut by this piece's budget, not by the point's timeout: rerun it next time
            if "error" in row and key["approx"] == "exact":
                failed[(key["part"], key["approx"], key["sampler"])] = key["n"]
        with path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps({k: v for k, v in row.items() if k not in ("batch", "hyper", "grad", "grad_se")}), flush=True)
    return True


def accuracy(rows: list[dict]) -> list[dict]:
    """Per (part, sampler, n) with both runs: the HSGP's numbers against the exact GP's."""
    import numpy as np

    get = {ident(r): r for r in rows}
    out = []
    for (part, approx, sampler, n), h in sorted(get.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][3])):
        e = get.get((part, "exact", sampler, n))
        if approx != "hsgp" or e is None or "error" in h or "error" in e or "skipped" in e:
            continue
        a = {"part": part, "sampler": sampler, "n": n}
        if part == "suggest":
            a["after_rel"] = abs(h["after"] - e["after"]) / abs(e["after"])
            a["before_rel"] = abs(h["before"] - e["before"]) / abs(e["before"])
            if "exact_of_hsgp_batch" in h:
                a["choice_cost"] = h["exact_of_hsgp_batch"] / e["after"] - 1.0
        else:
            g, g0 = np.asarray(h["grad"]), np.asarray(e["grad"])
            a["F_rel"] = abs(h["F"] - e["F"]) / abs(e["F"])
            a["F_rel_se"] = float(np.hypot(h["F_se"], e["F_se"]) / abs(e["F"]))
            a["grad_rel"] = float(np.linalg.norm(g - g0) / np.linalg.norm(g0))
            a["grad_rel_se"] = float(np.hypot(np.linalg.norm(h["grad_se"]), np.linalg.norm(e["grad_se"]))
                                     / np.linalg.norm(g0))
        out.append(a)
    return out


def add_choice_cost(path: Path) -> None:
    """For each suggest point with both runs: the exact criterion of the HSGP's batch, at the
    exact run's hyperparameter draws (in this process; written back into the HSGP row)."""
    rows = load(path)
    get = {ident(r): r for r in rows}
    changed = False
    for r in rows:
        if r["part"] != "suggest" or r["approx"] != "hsgp" or "error" in r or "exact_of_hsgp_batch" in r:
            continue
        e = get.get(("suggest", "exact", r["sampler"], r["n"]))
        if e is None or "error" in e or "skipped" in e:
            continue
        r["exact_of_hsgp_batch"] = exact_value(r["n"], r["sampler"], r["batch"], e["hyper"])
        changed = True
    if changed:
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tmp.replace(path)


def crossover(rows: list[dict], part: str, sampler: str) -> float | None:
    """Smallest n where the HSGP's wall time is below the exact GP's (log-log interpolation
    between the bracketing n; the first n where the exact GP did not finish counts)."""
    import numpy as np

    get = {ident(r): r for r in rows}
    prev = None
    for n in sorted({r["n"] for r in rows if r["part"] == part}):
        h, e = get.get((part, "hsgp", sampler, n), {}), get.get((part, "exact", sampler, n), {})
        if "wall_s" not in h:
            continue
        if "wall_s" not in e:
            return float(n) if e else None
        r = np.log(e["wall_s"] / h["wall_s"])
        if r > 0:
            if prev is None:
                return float(n)
            n0, r0 = prev
            return float(np.exp(np.log(n0) + (np.log(n) - np.log(n0)) * (0 - r0) / (r - r0)))
        prev = (n, r)
    return None


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def cell(r: dict | None, key: str, spec: str) -> str:
    if not r:
        return "-"
    if key in r:
        return format(r[key], spec)
    return "over " + r["error"].split("over ")[-1] if "over" in r.get("error", "") else (
        "skipped" if "skipped" in r else "failed")


def report(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = load(path)
    get = {ident(r): r for r in rows}
    acc = {(a["part"], a["sampler"], a["n"]): a for a in accuracy(rows)}
    lines = ["# Exact GP vs HSGP: when to switch", "",
             "Each point in a fresh process (compilation included), one XLA thread, under the shared CPU lock "
             "on a 2-core machine; wall = seconds of the call, peak = the process's max RSS (imports included). "
             f"HSGP: m = {M} basis functions, c = {C}. See the docstring of experiments/hsgp_crossover.py.", ""]
    for sampler in ("map", "bayes"):
        x = crossover(rows, "suggest", sampler)
        lines += [f"## suggest, sampler={sampler} (k = {K}, expected_total_variance, default search)", "",
                  "| n | exact wall s | exact peak MB | HSGP wall s | HSGP peak MB | criterion after, rel. diff | "
                  "exact criterion of the HSGP batch / exact batch - 1 |", "|---|---|---|---|---|---|---|"]
        for n in SUGGEST_N:
            e, h = get.get(("suggest", "exact", sampler, n)), get.get(("suggest", "hsgp", sampler, n))
            a = acc.get(("suggest", sampler, n), {})
            lines.append(f"| {n} | {cell(e, 'wall_s', '.1f')} | {cell(e, 'rss_peak_mb', '.0f')} | "
                         f"{cell(h, 'wall_s', '.1f')} | {cell(h, 'rss_peak_mb', '.0f')} | "
                         f"{fmt(a.get('after_rel'), '.2g')} | {fmt(a.get('choice_cost'), '.2g')} |")
        lines += ["", f"Crossover (HSGP faster, log-log interpolation): n = {fmt(x, '.0f')}.", ""]
    x = crossover(rows, "gradient", "importance")
    lines += ["## gradient (importance sampler, defaults; seed data, objective gp_mu)", "",
              "| n | exact warm wall s | exact cold wall s | exact peak MB | HSGP warm wall s | HSGP cold wall s | "
              "HSGP peak MB | F rel. diff (SE) | dF/dX rel. diff (SE) |", "|---|---|---|---|---|---|---|---|---|"]
    for n in GRADIENT_N:
        e, h = get.get(("gradient", "exact", "importance", n)), get.get(("gradient", "hsgp", "importance", n))
        a = acc.get(("gradient", "importance", n), {})
        lines.append(f"| {n} | {cell(e, 'wall_s', '.1f')} | {cell(e, 'cold_wall_s', '.1f')} | "
                     f"{cell(e, 'rss_peak_mb', '.0f')} | {cell(h, 'wall_s', '.1f')} | {cell(h, 'cold_wall_s', '.1f')} | "
                     f"{cell(h, 'rss_peak_mb', '.0f')} | {fmt(a.get('F_rel'), '.2g')} ({fmt(a.get('F_rel_se'), '.1g')}) | "
                     f"{fmt(a.get('grad_rel'), '.2g')} ({fmt(a.get('grad_rel_se'), '.1g')}) |")
    lines += ["", f"Crossover (warm estimate faster): n = {fmt(x, '.0f')}.", ""]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    series = [("suggest", "map", "suggest MAP"), ("suggest", "bayes", "suggest Bayes"),
              ("gradient", "importance", "gradient (warm)")]
    for part, sampler, label in series:
        for approx, style in (("exact", "o-"), ("hsgp", "s--")):
            rs = sorted((r for r in rows if ident(r)[:3] == (part, approx, sampler) and "wall_s" in r),
                        key=lambda r: r["n"])
            if not rs:
                continue
            lab = f"{label}, {'exact' if approx == 'exact' else 'HSGP'}"
            axes[0].loglog([r["n"] for r in rs], [r["wall_s"] for r in rs], style, label=lab)
            axes[1].loglog([r["n"] for r in rs], [r["rss_peak_mb"] for r in rs], style, label=lab)
    for part, sampler, label in series[:2]:
        a = sorted((v for k, v in acc.items() if k[:2] == (part, sampler) and "after_rel" in v), key=lambda v: v["n"])
        if a:
            axes[2].loglog([v["n"] for v in a], [max(v["after_rel"], 1e-6) for v in a], "o-", label=f"{label}: criterion")
    ga = sorted((v for k, v in acc.items() if k[0] == "gradient"), key=lambda v: v["n"])
    if ga:
        axes[2].loglog([v["n"] for v in ga], [max(v["grad_rel"], 1e-6) for v in ga], "s-", label="gradient: dF/dX")
        axes[2].loglog([v["n"] for v in ga], [v["grad_rel_se"] for v in ga], ":", color="grey", label="its SE")
    axes[0].set(xlabel="n", ylabel="wall seconds", title="time (one XLA thread)")
    axes[1].set(xlabel="n", ylabel="peak RSS (MB)", title="memory")
    axes[2].set(xlabel="n", ylabel="relative difference", title=f"HSGP (m={M}) vs exact")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=110)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=540.0, help="seconds for this piece (rerun to go on)")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds per point")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--report", action="store_true", help="only write the md and png from the jsonl")
    ap.add_argument("--parts", nargs="+", choices=("suggest", "gradient"), default=("suggest", "gradient"),
                    help="which parts to run in this piece (default both)")
    ap.add_argument("--one", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    import placement  # noqa: F401  (float64)

    if a.one:
        kind, *rest = a.one
        row = run_suggest(rest[0], rest[1], int(rest[2])) if kind == "suggest" else run_gradient(rest[0], int(rest[1]))
        print(json.dumps(row), flush=True)
        return
    path = a.out.with_suffix(".jsonl")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not a.report:
        complete = measure(path, a.budget, a.timeout, tuple(a.parts))
        add_choice_cost(path)
        print("done" if complete else "not done: run again to go on", flush=True)
    report(path)
    print(path.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
