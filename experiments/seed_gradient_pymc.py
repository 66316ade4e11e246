"""The seed's own approach (pm.sample with Deterministics, as in the discourse answer) and
whole `placement gradient` processes, against the quadrature truth, over a few seeds.

Writes experiments/results/seed_gradient_pymc.{md,json,png}. Run:
python experiments/seed_gradient_pymc.py --only seed (about 2 minutes per seed on 2 cores).
The many-seed comparison of the samplers is experiments/seed_gradient.py.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
OUT = ROOT / "experiments" / "results"


def truth():
    import placement  # noqa: F401
    from exact import quadrature_answer
    from placement.model import from_pymc
    from placement.problems import seed_gp

    jm = from_pymc(seed_gp(), "gp_mu")
    F, g, edge, _ = quadrature_answer(jm, jm.X, jm.y, points=(55, 75, 75))
    return F, g


SEED_SCRIPT = r"""
import sys, time, json
t0 = time.perf_counter()
import numpy as np, pymc as pm, pytensor.tensor as pt
np.random.seed(2)
n = 10
X = np.linspace(0, 10, n)
cov_func = 8.0**2 * pm.gp.cov.Matern52(1, 5.0)
f_true = np.random.multivariate_normal(np.zeros(n), cov_func(X[:, None]).eval() + 1e-8 * np.eye(n), 1).flatten()
y = f_true + 0.02 * np.random.randn(n)
with pm.Model(coords={"x_dim": X}) as model:
    ell = pm.InverseGamma("ell", mu=1.0, sigma=0.6)
    eta = pm.Exponential("eta", scale=3.0)
    cov = eta**2 * pm.gp.cov.Matern52(1, ls=ell)
    gp = pm.gp.Marginal(cov_func=cov)
    sigma = pm.HalfCauchy("sigma", beta=5)
    Xd = pm.Data("X_data", X)
    yd = pm.Data("y_data", y)
    y_ = gp.marginal_likelihood("y", X=Xd[:, None], y=yd, sigma=sigma)
    mu, var = gp._predict_at(Xd[:, None], diag=True)
    gp_mu = pm.Deterministic("gp_mu", mu.mean())
with model:
    logp = model.logp()
    pm.Deterministic("dlogp_dx", pt.grad(logp, Xd), dims=("x_dim",))
    pm.Deterministic("dmu_dx", pt.grad(gp_mu, Xd), dims=("x_dim",))
    tr = pm.sample(nuts_sampler="numpyro", random_seed=int(sys.argv[1]), progressbar=False)
f = tr.posterior.gp_mu
F = f.mean(["draw", "chain"])
g = (tr.posterior.dmu_dx + (f - F) * tr.posterior.dlogp_dx).mean(["draw", "chain"])
import arviz as az
rhat = float(az.rhat(tr, var_names=["ell", "eta", "sigma"]).to_array().max())
print("RESULT", json.dumps({"F": float(F), "grad": np.asarray(g).tolist(), "rhat": rhat,
                            "chains": int(tr.posterior.sizes["chain"]), "seconds": time.perf_counter() - t0}))
"""


def run_seed_approach(seed):
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", SEED_SCRIPT, str(seed)], capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    line = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
    if not line:
        raise RuntimeError(r.stderr[-3000:])
    res = json.loads(line[0][7:])
    res["wall"] = wall
    return res


def run_placement(seed, extra=()):
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "placement.cli", "gradient", f"seed={seed}", f"hydra.run.dir={d}", *extra],
                           capture_output=True, text=True, timeout=600)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            raise RuntimeError(r.stderr[-3000:])
        res = json.loads((Path(d) / "gradient.json").read_text())
    res["wall"] = wall
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--skip-seed-approach", action="store_true")
    ap.add_argument("--only", default=None, help="comma-separated method keys: cold,warm,quad,nuts,seed")
    ap.add_argument("--tag", default="_pymc", help="suffix for the result files")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    F_true, g_true = truth()
    print(f"truth: F = {F_true:.6f}, |dF/dX| = {np.linalg.norm(g_true):.5f}", flush=True)
    rows = []
    catalogue = {
        "cold": ("placement default (cold start, no compile cache)", lambda s: run_placement(s, ["compile_cache=false"])),
        "warm": ("placement default (warm compile cache)", lambda s: run_placement(s, ["compile_cache=true"])),
        "quad": ("placement sampler=quadrature", lambda s: run_placement(s, ["sampler=quadrature", "compile_cache=false"])),
        "nuts": ("placement sampler=nuts (4 chains x 1000)", lambda s: run_placement(s, ["sampler=nuts", "compile_cache=false"])),
        "seed": ("seed: pm.sample + Deterministics", run_seed_approach),
    }
    keys = args.only.split(",") if args.only else ["cold", "warm", "quad", "nuts"] + ([] if args.skip_seed_approach else ["seed"])
    methods = [catalogue[k] for k in keys]
    if "warm" in keys:
        run_placement(0, ["compile_cache=true"])  # fill the cache once for the warm rows
    for name, fn in methods:
        for seed in range(args.seeds):
            res = fn(seed)
            g = np.asarray(res["grad"])
            err = np.linalg.norm(g - g_true) / np.linalg.norm(g_true)
            cos = float(g @ g_true / (np.linalg.norm(g) * np.linalg.norm(g_true)))
            se = np.asarray(res.get("grad_se", [np.nan] * len(g)))
            z = np.abs(g - g_true) / se if "grad_se" in res else np.full(len(g), np.nan)
            row = dict(method=name, seed=seed, wall=res["wall"], rel_err=err, cosine=cos, max_z=float(np.max(z)),
                       F_err=abs(res["F"] - F_true), rhat=res.get("rhat_max", res.get("rhat")))
            rows.append(row)
            print(json.dumps(row), flush=True)
    (OUT / f"seed_gradient{args.tag}.json").write_text(json.dumps(dict(F_true=F_true, grad_true=g_true.tolist(), rows=rows), indent=2))
    lines = ["| method | runs | wall s (median) | rel. L2 error (median [min, max]) | cosine (min) | max |err|/SE | all within 4 SE |",
             "|---|---|---|---|---|---|---|"]
    for name, _ in methods:
        rs = [r for r in rows if r["method"] == name]
        e = [r["rel_err"] for r in rs]
        z = [r["max_z"] for r in rs]
        within = "n/a (no SE)" if np.isnan(z).all() else ("yes" if max(z) < 4 else "no")
        lines.append(f"| {name} | {len(rs)} | {np.median([r['wall'] for r in rs]):.1f} | {np.median(e):.3f} [{min(e):.3f}, {max(e):.3f}] | "
                     f"{min(r['cosine'] for r in rs):.3f} | {'-' if np.isnan(z).all() else f'{max(z):.2f}'} | {within} |")
    table = "\n".join(lines)
    (OUT / f"seed_gradient{args.tag}.md").write_text(f"Truth (quadrature): F = {F_true:.6f}, |dF/dX| = {np.linalg.norm(g_true):.5f}\n\n{table}\n")
    print(table)
    plot(rows, g_true, args.tag)


def plot(rows, g_true, tag=""):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    names = list(dict.fromkeys(r["method"] for r in rows))
    for i, n in enumerate(names):
        rs = [r for r in rows if r["method"] == n]
        ax[0].scatter([r["wall"] for r in rs], [r["rel_err"] for r in rs], label=n)
    ax[0].set_xscale("log"); ax[0].set_yscale("log")
    ax[0].set_xlabel("wall time per gradient, s (start-up included)"); ax[0].set_ylabel("relative L2 error vs quadrature")
    ax[0].axhline(0.05, color="gray", ls=":"); ax[0].legend(fontsize=7)
    ax[1].bar(np.arange(len(g_true)), g_true, color="lightgray", label="truth (quadrature)")
    ax[1].set_xlabel("point index"); ax[1].set_ylabel("dF/dX"); ax[1].legend(fontsize=7)
    fig.tight_layout(); fig.savefig(OUT / f"seed_gradient{tag}.png", dpi=120)


if __name__ == "__main__":
    main()
