"""Active-learning benchmark: sequential batches on standard test functions.

Every method starts from the same random design (per repeat), adds a batch of k points
per round, and after every round the hyperparameters are re-learned from that method's
data (the way a user works). Each design is scored with one common evaluator, our fully
Bayesian GP (Matern 5/2, hyperparameter posterior by importance sampling): the RMSE of
its predictive mean against the true function on a dense grid, and the domain-averaged
predictive variance, both relative to the function's variance over the domain.

Methods
  ours_bayes    placement suggest, expected_total_variance, fully Bayesian hyperparameters
  ours_bayes_iv the same draws, integrated_variance (fixed-hyperparameter fantasies):
                isolates the value of learning the hyperparameters
  ours_map      placement suggest sampler=map (the plug-in at the posterior mode)
  random        uniform in the box
  sobol         the continuation of a scrambled Sobol sequence
  maxvar        greedy maximum predictive variance, MAP hyperparameters, k picks in turn
  botorch       BoTorch qNegIntegratedPosteriorVariance on a SingleTaskGP fitted by
                fit_gpytorch_mll (needs the optional extra: pip install torch==2.13.0, then
                pip install -e '.[bench]'); skipped with a note when BoTorch is missing

Run:   python experiments/active_learning.py [--functions forrester,...] [--repeats 10]
       (the results here came from two such processes side by side, one per core:
        XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" OMP_NUM_THREADS=1
        taskset -c 0 python experiments/active_learning.py --functions forrester,gramacy_lee
        and the same on core 1 with --functions branin,franke. Without the flags two JAX
        processes on two cores oversubscribe them and run 10-30x slower.)
       python experiments/active_learning.py --report      (table + figure from saved runs)
Raw results go to experiments/results/active_learning_<function>.json (one file per
function, rewritten atomically after every repeat, so an interrupted run resumes);
the report to experiments/results/active_learning.{md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "experiments" / "results"
sys.path.insert(0, str(ROOT))


# -- test functions ---------------------------------------------------------------------
def forrester(X):
    x = X[:, 0]
    return (6 * x - 2) ** 2 * np.sin(12 * x - 4)


def gramacy_lee(X):
    x = X[:, 0]
    return np.sin(10 * np.pi * x) / (2 * x) + (x - 1) ** 4


def branin(X):
    x1, x2 = X[:, 0], X[:, 1]
    b, c, t = 5.1 / (4 * np.pi**2), 5 / np.pi, 1 / (8 * np.pi)
    return (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * np.cos(x1) + 10


def franke(X):
    x, y = X[:, 0], X[:, 1]
    return (0.75 * np.exp(-((9 * x - 2) ** 2) / 4 - (9 * y - 2) ** 2 / 4)
            + 0.75 * np.exp(-((9 * x + 1) ** 2) / 49 - (9 * y + 1) / 10)
            + 0.5 * np.exp(-((9 * x - 7) ** 2) / 4 - (9 * y - 3) ** 2 / 4)
            - 0.2 * np.exp(-((9 * x - 4) ** 2) - (9 * y - 7) ** 2))


# name: (function, bounds, start size, batch size k, rounds, note)
FUNCTIONS = {
    "forrester": (forrester, [[0.0, 1.0]], 4, 2, 5, "1-D, smooth"),
    "gramacy_lee": (gramacy_lee, [[0.5, 2.5]], 4, 2, 5, "1-D, short length scale: 10 half-periods, 4 start points"),
    "branin": (branin, [[-5.0, 10.0], [0.0, 15.0]], 6, 3, 4, "2-D, smooth"),
    "franke": (franke, [[0.0, 1.0], [0.0, 1.0]], 6, 3, 4, "2-D, bumps"),
}
METHODS = ("ours_bayes", "ours_bayes_iv", "ours_map", "random", "sobol", "maxvar", "botorch")


def dense_grid(bounds):
    b = np.asarray(bounds)
    if len(b) == 1:
        return np.linspace(b[0, 0], b[0, 1], 501)[:, None]
    g = [np.linspace(lo, hi, 51) for lo, hi in b]
    return np.stack(np.meshgrid(*g, indexing="ij"), -1).reshape(-1, len(b))


# -- evaluator ---------------------------------------------------------------------------
def evaluate(X, y, bounds, Xg, fg, seed):
    """(relative RMSE, relative integrated variance) of our Bayesian GP fitted to (X, y)."""
    from placement.suggest import hyper_draws, mixture_predictive

    b = np.asarray(bounds)
    span = b[:, 1] - b[:, 0]
    Xn, Gn = (X - b[:, 0]) / span, (Xg - b[:, 0]) / span
    ym, ys = y.mean(), y.std() or 1.0
    hyper = hyper_draws(Xn, (y - ym) / ys, "matern52", 32, seed)[:3]
    mean, sd = mixture_predictive("matern52", Xn, (y - ym) / ys, Gn, hyper)
    var_f = fg.var()
    rmse = np.sqrt(np.mean((mean * ys + ym - fg) ** 2) / var_f)
    return float(rmse), float(np.mean((sd * ys) ** 2) / var_f)


# -- methods -----------------------------------------------------------------------------
def ours(X, y, bounds, k, seed, sampler="bayes", criterion="expected_total_variance"):
    from placement.suggest import SuggestConfig, suggest_arrays

    pts, _ = suggest_arrays(X, y, bounds, SuggestConfig(k=k, criterion=criterion, sampler=sampler, seed=seed))
    return pts


def greedy_maxvar(X, y, bounds, k, seed):
    import jax.numpy as jnp

    from placement import gpjax
    from placement.suggest import grid_points, hyper_draws

    b = np.asarray(bounds)
    span = b[:, 1] - b[:, 0]
    Xn = (X - b[:, 0]) / span
    yn = (y - y.mean()) / (y.std() or 1.0)
    ell, eta, sigma, _ = hyper_draws(Xn, yn, "matern52", 1, seed, "map")
    cand = grid_points(X.shape[1], 1024, seed)
    Xa = Xn
    for _ in range(k):  # the variance does not depend on y, so later picks see earlier ones
        _, var = gpjax.posterior("matern52", jnp.asarray(Xa), jnp.zeros(len(Xa)), jnp.asarray(cand),
                                 jnp.asarray(ell[0]), eta[0], sigma[0])
        Xa = np.vstack([Xa, cand[int(np.argmax(np.asarray(var)))]])
    return Xa[len(Xn):] * span + b[:, 0]


def botorch_qnipv(X, y, bounds, k, seed):
    import torch
    from botorch.acquisition.active_learning import qNegIntegratedPosteriorVariance
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms import Normalize, Standardize
    from botorch.optim import optimize_acqf
    from gpytorch.mlls import ExactMarginalLogLikelihood
    from scipy.stats import qmc

    torch.manual_seed(seed)
    b = np.asarray(bounds)
    d = X.shape[1]
    tb = torch.tensor(b.T, dtype=torch.float64)
    gp = SingleTaskGP(torch.tensor(X), torch.tensor(y)[:, None], input_transform=Normalize(d=d, bounds=tb),
                      outcome_transform=Standardize(m=1))
    fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp))
    mc = qmc.Sobol(d=d, scramble=True, seed=seed).random(256) * (b[:, 1] - b[:, 0]) + b[:, 0]
    acq = qNegIntegratedPosteriorVariance(gp, mc_points=torch.tensor(mc))
    cand, _ = optimize_acqf(acq, bounds=tb, q=k, num_restarts=8, raw_samples=256)
    return cand.detach().numpy()


def propose(method, X, y, bounds, k, seed, sobol_stream):
    b = np.asarray(bounds)
    if method == "ours_bayes":
        return ours(X, y, bounds, k, seed)
    if method == "ours_bayes_iv":
        return ours(X, y, bounds, k, seed, criterion="integrated_variance")
    if method == "ours_map":
        return ours(X, y, bounds, k, seed, sampler="map")
    if method == "random":
        return np.random.default_rng(seed).uniform(b[:, 0], b[:, 1], size=(k, len(b)))
    if method == "sobol":
        return sobol_stream.random(k) * (b[:, 1] - b[:, 0]) + b[:, 0]
    if method == "maxvar":
        return greedy_maxvar(X, y, bounds, k, seed)
    if method == "botorch":
        return botorch_qnipv(X, y, bounds, k, seed)
    raise ValueError(method)


def have_botorch():
    try:
        import botorch  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


# -- running -----------------------------------------------------------------------------
def run_repeat(name, rep, methods, log):
    from scipy.stats import qmc

    f, bounds, n0, k, rounds, _ = FUNCTIONS[name]
    b = np.asarray(bounds)
    Xg = dense_grid(bounds)
    fg = f(Xg)
    seed = 1000 * list(FUNCTIONS).index(name) + rep
    X0 = np.random.default_rng(seed).uniform(b[:, 0], b[:, 1], size=(n0, len(b)))
    out = {}
    for m in methods:
        X = X0.copy()
        sob = qmc.Sobol(d=len(b), scramble=True, seed=seed)
        rmse, ivar, secs = [], [], []
        for r in range(rounds + 1):
            y = f(X)
            e = evaluate(X, y, bounds, Xg, fg, seed)
            rmse.append(e[0])
            ivar.append(e[1])
            if r == rounds:
                break
            t0 = time.perf_counter()
            B = np.asarray(propose(m, X, y, bounds, k, seed + 7919 * (r + 1), sob), dtype=np.float64).reshape(k, len(b))
            secs.append(time.perf_counter() - t0)
            B = np.clip(B, b[:, 0], b[:, 1])
            X = np.vstack([X, B])
        out[m] = {"rmse": rmse, "ivar": ivar, "seconds": secs, "X": X.tolist()}
        log(f"  {name} repeat {rep} {m:14s} rmse {rmse[0]:.3f} -> {rmse[-1]:.3f}   "
            f"{np.mean(secs):.2f} s/suggestion")
    return out


def write_json_atomic(path, obj):
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def run(functions, repeats, methods):
    import jax

    OUT.mkdir(parents=True, exist_ok=True)
    # keep compiled code across processes (a restarted or parallel run recompiles nothing)
    jax.config.update("jax_compilation_cache_dir", os.environ.get("PLACEMENT_CACHE", str(Path.home() / ".cache/placement/jax")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    if "botorch" in methods and not have_botorch():
        print("BoTorch is not installed: skipping it (pip install torch==2.13.0 && pip install -e '.[bench]').")
        methods = [m for m in methods if m != "botorch"]
    for name in functions:
        path = OUT / f"active_learning_{name}.json"
        store = json.loads(path.read_text()) if path.exists() else {"repeats": {}}
        for rep in range(repeats):
            have = store["repeats"].get(str(rep), {})
            todo = [m for m in methods if m not in have]
            if not todo:
                continue
            t0 = time.perf_counter()
            have.update(run_repeat(name, rep, todo, lambda s: print(s, flush=True)))
            store["repeats"][str(rep)] = have
            write_json_atomic(path, store)
            print(f"{name} repeat {rep + 1}/{repeats} done in {time.perf_counter() - t0:.0f} s", flush=True)


# -- timing ------------------------------------------------------------------------------
def timing(names=("forrester", "branin"), calls=5):
    """Seconds per suggestion, every method in one process one after another on the same
    data (compilation done by one untimed call first, as in a session that suggests
    repeatedly): the like-for-like speed comparison. The benchmark's own per-suggestion
    times include compilation and whatever else the machine was doing."""
    out = {}
    methods = [m for m in METHODS if m not in ("random", "sobol") and (m != "botorch" or have_botorch())]
    for name in names:
        f, bounds, n0, k, rounds, _ = FUNCTIONS[name]
        b = np.asarray(bounds)
        X = np.random.default_rng(99).uniform(b[:, 0], b[:, 1], size=(n0 + k * 2, len(b)))
        y = f(X)
        out[name] = {}
        for m in methods:
            propose(m, X, y, bounds, k, 0, None)  # compile / warm up, untimed
            secs = []
            for c in range(calls):
                t0 = time.perf_counter()
                propose(m, X, y, bounds, k, c + 1, None)
                secs.append(time.perf_counter() - t0)
            out[name][m] = {"median": float(np.median(secs)), "all": secs}
            print(f"timing {name} n={len(X)} k={k} {m:14s} {np.median(secs):.2f} s/suggestion", flush=True)
    write_json_atomic(OUT / "active_learning_timing.json", out)
    return out


# -- report ------------------------------------------------------------------------------
LABEL = {"ours_bayes": "ours, Bayes (ETV)", "ours_bayes_iv": "ours, Bayes (IV)", "ours_map": "ours, MAP",
         "random": "random", "sobol": "Sobol", "maxvar": "greedy max-var", "botorch": "BoTorch qNIPV"}


def load(name):
    path = OUT / f"active_learning_{name}.json"
    if not path.exists():
        return None
    reps = json.loads(path.read_text())["repeats"]
    res = {}
    for m in METHODS:
        rows = [reps[r][m] for r in sorted(reps, key=int) if m in reps[r]]
        if rows:
            res[m] = {key: np.array([row[key] for row in rows]) for key in ("rmse", "ivar", "seconds")}
    return res


def mean_se(a):
    return a.mean(0), a.std(0, ddof=1) / np.sqrt(a.shape[0]) if a.shape[0] > 1 else np.zeros(a.shape[1])


def report():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in FUNCTIONS if load(n)]
    if not names:
        raise SystemExit("no saved runs in experiments/results; run the benchmark first.")
    fig, axes = plt.subplots(2, len(names), figsize=(4.2 * len(names), 7), squeeze=False)
    lines = ["# Active-learning benchmark", "",
             "Relative RMSE = RMSE of the evaluator's predictive mean on a dense grid / sd of the function there;",
             "relative integrated variance = mean predictive variance / variance of the function. Mean +- standard",
             "error over repeats. One common evaluator (our Bayesian GP) scores every design.", ""]
    summary = {}
    for j, name in enumerate(names):
        res = load(name)
        _, _, n0, k, rounds, note = FUNCTIONS[name]
        ns = n0 + k * np.arange(rounds + 1)
        reps = min(v["rmse"].shape[0] for v in res.values())
        lines += [f"## {name} ({note}); start {n0} points, batches of {k}, {reps} repeats", "",
                  "| method | " + " | ".join(f"n={n}" for n in ns) + " | final rel. int. var | s/suggestion (median / mean) |",
                  "|---" * (len(ns) + 3) + "|"]
        summary[name] = {}
        for m, v in res.items():
            mu, se = mean_se(v["rmse"])
            iv, ivse = mean_se(v["ivar"])
            s = v["seconds"]
            lines.append(f"| {LABEL[m]} | " + " | ".join(f"{a:.3f} +- {b:.3f}" for a, b in zip(mu, se))
                         + f" | {iv[-1]:.2e} | {np.median(s):.2f} / {np.mean(s):.2f} |")
            summary[name][m] = {"rmse_mean": mu.tolist(), "rmse_se": se.tolist(), "ivar_mean": iv.tolist(),
                                "seconds_median": float(np.median(s)), "seconds_mean": float(np.mean(s)), "repeats": int(v["rmse"].shape[0])}
            style = "-" if m.startswith("ours") else "--"
            axes[0, j].errorbar(ns, mu, yerr=se, label=LABEL[m], ls=style, marker="o", ms=3, capsize=2)
            axes[1, j].errorbar(ns, iv, yerr=ivse, label=LABEL[m], ls=style, marker="o", ms=3, capsize=2)
        if "ours_bayes" in res:
            ob = res["ours_bayes"]["rmse"].mean(0)
            for peer in ("random", "sobol", "botorch", "maxvar", "ours_map"):
                if peer in res:
                    wins = int(np.sum(ob[1:] < res[peer]["rmse"].mean(0)[1:]))
                    lines.append(f"\nours_bayes has lower mean RMSE than {LABEL[peer]} at {wins} of {rounds} budgets.")
                    summary[name][f"wins_vs_{peer}"] = wins
        lines.append("")
        axes[0, j].set_title(f"{name} ({reps} repeats)")
        axes[0, j].set_yscale("log")
        axes[1, j].set_yscale("log")
        axes[1, j].set_xlabel("number of points")
    axes[0, 0].set_ylabel("relative RMSE")
    axes[1, 0].set_ylabel("relative integrated variance")
    axes[0, -1].legend(fontsize=7)
    tpath = OUT / "active_learning_timing.json"
    if tpath.exists():
        t = json.loads(tpath.read_text())
        ms = list(next(iter(t.values())))
        lines += ["## Seconds per suggestion, warm, one process, methods in turn (--timing)", "",
                  "| function | " + " | ".join(LABEL[m] for m in ms) + " |", "|---" * (len(ms) + 1) + "|"]
        for name, row in t.items():
            lines.append(f"| {name} | " + " | ".join(f"{row[m]['median']:.2f}" for m in ms) + " |")
        lines.append("")
    fig.tight_layout()
    fig.savefig(OUT / "active_learning.png", dpi=110)
    (OUT / "active_learning.md").write_text("\n".join(lines) + "\n")
    write_json_atomic(OUT / "active_learning_summary.json", summary)
    print("\n".join(lines))
    print(f"wrote {OUT / 'active_learning.md'} and {OUT / 'active_learning.png'}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--functions", default=",".join(FUNCTIONS))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--report", action="store_true", help="only build the table and figure from saved runs")
    ap.add_argument("--timing", action="store_true", help="only time each method in one process (warm)")
    a = ap.parse_args(argv)
    if a.timing:
        timing()
        return
    if not a.report:
        fns = [s for s in a.functions.split(",") if s]
        bad = [s for s in fns if s not in FUNCTIONS]
        badm = [s for s in a.methods.split(",") if s and s not in METHODS]
        if bad or badm:
            raise SystemExit(f"unknown function(s) {bad} or method(s) {badm}; choose from {list(FUNCTIONS)} and {list(METHODS)}")
        run(fns, a.repeats, [s for s in a.methods.split(",") if s])
    report()


if __name__ == "__main__":
    main()
