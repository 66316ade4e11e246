"""Warm-started versus cold NUTS versus the seed's pm.sample, per outer step, on the seed
problem (objective gp_mu, the seed's own), with gradient accuracy against quadrature at
X along the path; whole 50-step runs through the CLI; the reweight sampler.

Writes experiments/results/warm_vs_cold.{md,json,png}. Run: python experiments/warm_vs_cold.py
(about 10 minutes on 2 cores).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
OUT = ROOT / "experiments" / "results"
STEPS = 50


def cli_run(args):
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "placement.cli", "run", f"hydra.run.dir={d}", "plots=false",
                            "compile_cache=false", *args], capture_output=True, text=True, timeout=1800)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            raise RuntimeError(r.stderr[-3000:])
        res = json.loads((Path(d) / "result.json").read_text())
        import csv

        rows = list(csv.DictReader((Path(d) / "trajectory.csv").open()))
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return wall, res, rows, peak_mb


SEED_STEP = r"""
import sys, time, json
import numpy as np, pymc as pm, pytensor.tensor as pt
sys.path.insert(0, sys.argv[1])
from placement.problems import seed_data
X, y = seed_data()
path = json.loads(sys.argv[2])
with pm.Model() as model:
    ell = pm.InverseGamma("ell", mu=1.0, sigma=0.6)
    eta = pm.Exponential("eta", scale=3.0)
    cov = eta**2 * pm.gp.cov.Matern52(1, ls=ell)
    gp = pm.gp.Marginal(cov_func=cov)
    sigma = pm.HalfCauchy("sigma", beta=5)
    Xd = pm.Data("X_data", X)
    yd = pm.Data("y_data", y)
    gp.marginal_likelihood("y", X=Xd[:, None], y=yd, sigma=sigma)
    mu, var = gp._predict_at(Xd[:, None], diag=True)
    gp_mu = pm.Deterministic("gp_mu", mu.mean())
    logp = model.logp()
    pm.Deterministic("dlogp_dx", pt.grad(logp, Xd))
    pm.Deterministic("dmu_dx", pt.grad(gp_mu, Xd))
out = []
for i, Xi in enumerate(path):
    t0 = time.perf_counter()
    with model:
        pm.set_data({"X_data": np.asarray(Xi)})
        tr = pm.sample(nuts_sampler="numpyro", random_seed=i, progressbar=False)
    f = tr.posterior.gp_mu
    F = f.mean(["draw", "chain"])
    g = (tr.posterior.dmu_dx + (f - F) * tr.posterior.dlogp_dx).mean(["draw", "chain"])
    out.append({"seconds": time.perf_counter() - t0, "grad": np.asarray(g).tolist()})
print("RESULT", json.dumps(out))
"""


def main():
    import jax

    import placement  # noqa: F401
    from exact import quadrature_answer
    from placement.api import build_problem
    from placement.engine import Engine
    from placement.importance import ISConfig
    from placement.nuts import NUTSConfig
from placement.reweight import ReweightConfig

    OUT.mkdir(parents=True, exist_ok=True)
    report = {}
    # 1. whole 50-step runs through the CLI (start-up and compilation included)
    runs = {}
    for name, args in [("importance_run (default)", []), ("nuts warm", ["sampler=nuts", "sampler.num_draws=500"]),
                       ("reweight", ["sampler=reweight", "sampler.num_draws=500"])]:
        wall, res, rows, peak = cli_run(["objective=posterior_mean", f"steps={STEPS}", "seed=0", *args])
        runs[name] = dict(wall=wall, peak_mb=peak, median_step=float(np.median([float(r["step_seconds"]) for r in rows[1:]])),
                          first_step=float(rows[0]["step_seconds"]), F=res["F"], X=res["X"],
                          nuts_fraction=(np.mean([int(r["nuts_ran"]) for r in rows]) if "nuts_ran" in rows[0] else None),
                          path=[[float(r[f"x{i}"]) for i in range(10)] for r in rows])
        print(name, {k: v for k, v in runs[name].items() if k not in ("path", "X")}, flush=True)
    report["runs"] = {k: {kk: vv for kk, vv in v.items() if kk != "path"} for k, v in runs.items()}

    # 2. per-step cost and accuracy at X along the warm-NUTS path, in one process
    path = runs["nuts warm"]["path"]
    checks = [0, STEPS // 2, STEPS - 1]
    problem = build_problem({"builder": "placement.problems:seed_gp", "args": {}, "data": "X", "observed": "y"},
                            objective="gp_mu")
    jm = problem.jm
    truth = {}
    terms = None
    for i in checks:
        F, g, edge, terms = quadrature_answer(jm, np.asarray(path[i]), jm.y, points=(45, 61, 61), terms=terms)
        truth[i] = g
    cfgs = {"nuts warm": NUTSConfig(num_draws=500), "nuts cold": NUTSConfig(num_draws=500, warm_start=False),
            "importance (16384 draws)": ISConfig(), "importance_run (8192, run default)": ISConfig(num_samples=8192, adapt_iters=1),
            "reweight": ReweightConfig(num_draws=500)}
    per_step = {}
    for name, cfg in cfgs.items():
        eng = Engine(jm, cfg)
        key = jax.random.PRNGKey(0)
        st = eng.init(key, np.asarray(path[0]), jm.y)
        times, errs, zs = [], [], []
        for i, Xi in enumerate(path):
            t0 = time.perf_counter()
            st, est = eng.gradient(jax.random.fold_in(key, i), st, np.asarray(Xi), jm.y)
            times.append(time.perf_counter() - t0)
            if i in checks:
                errs.append(float(np.linalg.norm(est.grad - truth[i]) / np.linalg.norm(truth[i])))
                zs.append(float(np.max(np.abs(est.grad - truth[i]) / est.grad_se)))
        per_step[name] = dict(first=times[0], median_later=float(np.median(times[1:])), rel_err=errs, max_z=zs)
        print(name, per_step[name], flush=True)
    # seed's approach: pm.sample per step, at two X of the path (first call includes compilation)
    r = subprocess.run([sys.executable, "-c", SEED_STEP, str(ROOT), json.dumps([path[0], path[checks[1]]])],
                       capture_output=True, text=True, timeout=3600)
    line = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
    if line:
        seed = json.loads(line[0][7:])
        per_step["seed pm.sample"] = dict(first=seed[0]["seconds"], median_later=seed[1]["seconds"],
                                          rel_err=[float(np.linalg.norm(np.asarray(s["grad"]) - truth[i]) / np.linalg.norm(truth[i]))
                                                   for s, i in zip(seed, checks[:2])], max_z=[])
        print("seed", per_step["seed pm.sample"], flush=True)
    report["per_step"] = per_step
    (OUT / "warm_vs_cold.json").write_text(json.dumps(report, indent=2))
    warm = per_step["nuts warm"]["median_later"]
    lines = ["| sampler (per outer step, seed problem) | first step s | later steps s (median) | x slower than warm NUTS | rel. error at steps 0/25/49 | max |err|/SE |",
             "|---|---|---|---|---|---|"]
    for name, v in per_step.items():
        lines.append(f"| {name} | {v['first']:.2f} | {v['median_later']:.3f} | {v['median_later'] / warm:.1f} | "
                     f"{' / '.join(f'{e:.3f}' for e in v['rel_err'])} | {' / '.join(f'{z:.1f}' for z in v['max_z']) or '-'} |")
    lines += ["", f"| whole {STEPS}-step `placement run` (CLI, start-up + compile) | wall s | median step s | first step s | peak RSS MB | steps that ran NUTS |",
              "|---|---|---|---|---|---|"]
    for name, v in runs.items():
        nf = "-" if v["nuts_fraction"] is None else f"{100 * v['nuts_fraction']:.0f}%"
        lines.append(f"| {name} | {v['wall']:.1f} | {v['median_step']:.3f} | {v['first_step']:.1f} | {v['peak_mb']:.0f} | {nf} |")
    table = "\n".join(lines)
    (OUT / "warm_vs_cold.md").write_text(table + "\n")
    print(table)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    P = np.asarray(runs["nuts warm"]["path"])
    ax.plot(P, lw=1)
    ax.set_xlabel("outer step"); ax.set_ylabel("x"); ax.set_title("seed problem, maximise E[gp_mu]: points over steps (warm NUTS)")
    fig.tight_layout(); fig.savefig(OUT / "warm_vs_cold.png", dpi=110)


if __name__ == "__main__":
    main()
