"""Gradient accuracy and cost on the seed problem, per sampler, over many seeds.

For each method: >= 30 independent estimates of dF/dX at the seed design (one warm
engine per method, a fresh sampler state and key per seed, as `placement gradient
seed=S` does), compared with converged quadrature. Reported per method: relative L2
error (median, 90th percentile, worst), median reported relative SE, coverage (share of
components within 2 and within 4 reported SE of the truth), evaluations of the
identity's terms (log density + X-gradients) and of the log density alone (proposal
adaptation, NUTS warm-up leapfrog steps), evaluations for 1% median error
(terms x (median error / 1%)^2), and warm seconds per estimate. A second table times
the whole `placement gradient` command (fresh process, start-up included).

Writes experiments/results/seed_gradient.{md,json,png}.
Run: python experiments/seed_gradient.py [--seeds 30] [--only importance,quadrature] [--cli 5]
(about 15 minutes on 2 cores with every method; the seed's own pm.sample approach is
measured by experiments/seed_gradient_pymc.py).
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
OUT = ROOT / "experiments" / "results"


def truth(jm):
    """Converged tensor-grid quadrature (cached: it takes a minute)."""
    path = OUT / "seed_truth.json"
    if path.exists():
        d = json.loads(path.read_text())
        return d["F"], np.asarray(d["grad"])
    from exact import quadrature_answer

    F, g, _, _ = quadrature_answer(jm, jm.X, jm.y, points=(55, 75, 75))
    path.write_text(json.dumps({"F": float(F), "grad": np.asarray(g).tolist(), "points": [55, 75, 75]}))
    return F, np.asarray(g)


def methods():
    """label -> (sampler config, evaluations of the log density alone per cold estimate)."""
    from placement.importance import ISConfig
    from placement.laplace import MAPConfig
    from placement.nuts import NUTSConfig
    from placement.quadrature import QuadConfig

    def is_adapt(c):
        return c.pilot_iters * c.adapt_samples + c.adapt_iters * c.adapt_samples

    old = dict(aim=False, qmc=False, adapt_samples=4096, adapt_iters=2)  # the earlier default sampler
    out = {}
    for label, cfg in [
        ("importance, default (aim + RQMC, rel_se 0.02)", ISConfig(rel_se=0.02)),
        ("importance, aim + RQMC, 16,384 draws", ISConfig(rel_se=0.0)),
        ("importance, aim + RQMC, 8,192 draws", ISConfig(rel_se=0.0, num_samples=8192)),
        ("importance, aim + plain MC, 16,384 draws", ISConfig(rel_se=0.0, qmc=False)),
        ("importance, RQMC without aim, 16,384 draws", ISConfig(rel_se=0.0, aim=False)),
        ("importance, previous default (16,384 draws)", ISConfig(rel_se=0.0, **old)),
        ("importance, previous sampler, 262,144 draws", ISConfig(rel_se=0.0, num_samples=262144, **old)),
    ]:
        # the aim's draws carry the identity's terms: they count as terms evaluations
        out[label] = (cfg, lambda est, c=cfg: is_adapt(c))
    out["quadrature (default grid)"] = (QuadConfig(), lambda est: 0)
    out["nuts, 4 chains x 1000"] = (NUTSConfig(), lambda est: est.diagnostics["mean_tree_size"] * 4 * 1500)
    out["map (plug-in)"] = (MAPConfig(), lambda est: 0)
    return out


def run_method(jm, label, cfg, logp_evals, seeds, F_true, g_true):
    from placement.api import Problem, gradient
    from placement.engine import Engine

    problem = Problem("seed_gp", jm)
    engine = Engine(jm, cfg)
    gradient(problem, cfg, seed=10_000, engine=engine)  # compile
    rows = []
    for seed in range(seeds):
        t0 = time.perf_counter()
        est = gradient(problem, cfg, seed=seed, engine=engine)
        wall = time.perf_counter() - t0
        g, se = np.ravel(est.grad), np.ravel(est.grad_se)
        err = np.abs(g - g_true)
        rows.append(dict(method=label, seed=seed, wall=wall, rel_err=float(np.linalg.norm(g - g_true) / np.linalg.norm(g_true)),
                         rel_se=float(np.linalg.norm(se) / np.linalg.norm(g)), F_err=abs(est.F - F_true),
                         within2=float(np.mean(err <= 2 * se)), within4=float(np.mean(err <= 4 * se)),
                         max_z=float(np.max(err / np.where(se > 0, se, np.nan))) if np.any(se > 0) else float("nan"),
                         terms=int(est.diagnostics["num_draws"]) + int(est.diagnostics.get("aim_draws", 0)),
                         logp_only=float(logp_evals(est)),
                         trusted=bool(est.diagnostics.get("trusted", True))))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def cli_wall(seeds):
    """Whole `placement gradient` calls (fresh process, warm compile cache after the first)."""
    out = []
    for seed in range(seeds):
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "placement.cli", "gradient", f"seed={seed}", f"hydra.run.dir={d}"],
                               capture_output=True, text=True, timeout=900, env=dict(os.environ))
            wall = time.perf_counter() - t0
            if r.returncode != 0:
                raise RuntimeError(r.stderr[-3000:])
            res = json.loads((Path(d) / "gradient.json").read_text())
        out.append(dict(seed=seed, wall=wall, num_draws=res["diagnostics"]["num_draws"], rel_se=res["diagnostics"]["rel_se"],
                        grad=res["grad"]))
        print(json.dumps({k: v for k, v in out[-1].items() if k != "grad"}), flush=True)
    return out


def summarise(rows, labels):
    lines = ["| method | seeds | rel. error median | 90th pct | worst | median rel. SE | within 2 SE | within 4 SE | "
             "terms evals | log-density-only evals | terms evals for 1% | warm s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for label in labels:
        rs = [r for r in rows if r["method"] == label]
        if not rs:
            continue
        e = np.array([r["rel_err"] for r in rs])
        terms = np.median([r["terms"] for r in rs])
        per1 = terms * (np.median(e) / 0.01) ** 2 if terms > 1 else float("nan")
        has_se = np.median([r["rel_se"] for r in rs]) > 0
        cov2 = f"{100 * np.mean([r['within2'] for r in rs]):.0f}%" if has_se else "no SE"
        cov4 = f"{100 * np.mean([r['within4'] for r in rs]):.0f}%" if has_se else "no SE"
        lines.append(f"| {label} | {len(rs)} | {100 * np.median(e):.2f}% | {100 * np.percentile(e, 90):.2f}% | {100 * e.max():.2f}% | "
                     f"{100 * np.median([r['rel_se'] for r in rs]):.2f}% | {cov2} | {cov4} | {terms:,.0f} | "
                     f"{np.median([r['logp_only'] for r in rs]):,.0f} | {'-' if np.isnan(per1) else f'{per1:,.0f}'} | "
                     f"{np.median([r['wall'] for r in rs]):.2f} |")
    return "\n".join(lines)


def plot(rows, labels):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(12, 4.2))
    for label in labels:
        rs = [r for r in rows if r["method"] == label]
        if not rs:
            continue
        ax[0].scatter([max(r["terms"], 1) for r in rs], [r["rel_err"] for r in rs], s=12, label=label)
        e = np.sort([r["rel_err"] for r in rs])
        ax[1].plot(e, np.arange(1, len(e) + 1) / len(e), label=label)
    ax[0].set_xscale("log"); ax[0].set_yscale("log")
    ax[0].set_xlabel("evaluations of the identity's terms"); ax[0].set_ylabel("relative L2 error of dF/dX")
    ax[0].axhline(0.02, color="gray", ls=":")
    ax[1].set_xscale("log"); ax[1].set_xlabel("relative L2 error"); ax[1].set_ylabel("share of seeds at or below")
    ax[1].axvline(0.02, color="gray", ls=":"); ax[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / "seed_gradient.png", dpi=120)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=30)
    ap.add_argument("--only", default=None, help="comma-separated substrings of method labels")
    ap.add_argument("--cli", type=int, default=5, help="timed `placement gradient` calls (0 = none)")
    args = ap.parse_args()
    import placement  # noqa: F401
    from placement.model import from_pymc
    from placement.problems import seed_gp

    OUT.mkdir(parents=True, exist_ok=True)
    jm = from_pymc(seed_gp(), "gp_mu")
    F_true, g_true = truth(jm)
    print(f"truth: F = {F_true:.6f}, |dF/dX| = {np.linalg.norm(g_true):.5f}", flush=True)
    cat = methods()
    labels = [k for k in cat if not args.only or any(s in k for s in args.only.split(","))]
    rows = []
    for label in labels:
        cfg, logp_evals = cat[label]
        rows += run_method(jm, label, cfg, logp_evals, args.seeds, F_true, g_true)
    cli = cli_wall(args.cli) if args.cli else []
    table = summarise(rows, labels)
    text = (f"Seed problem, truth by quadrature (55x75x75): F = {F_true:.6f}, |dF/dX| = {np.linalg.norm(g_true):.5f}. "
            f"{args.seeds} seeds per method, one warm engine per method, 2 cores.\n\n{table}\n")
    if cli:
        e = [np.linalg.norm(np.asarray(c["grad"]) - g_true) / np.linalg.norm(g_true) for c in cli]
        text += (f"\nWhole `placement gradient` (default settings, fresh process, compile cache warm), {len(cli)} seeds: "
                 f"median {np.median([c['wall'] for c in cli]):.1f} s (max {max(c['wall'] for c in cli):.1f} s), "
                 f"median draws {np.median([c['num_draws'] for c in cli]):,.0f}, median relative error {100 * np.median(e):.2f}%.\n")
    (OUT / "seed_gradient.md").write_text(text)
    (OUT / "seed_gradient.json").write_text(json.dumps(dict(F_true=F_true, grad_true=g_true.tolist(), rows=rows, cli=cli), indent=1))
    plot(rows, labels)
    print(text)


if __name__ == "__main__":
    main()
