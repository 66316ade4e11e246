"""Suggestions on real measurements: do they beat random picks?

Data sets (all ship with installed packages; statsmodels' co2 and elnino stay outside):
  elec_equip  statsmodels, monthly electrical-equipment index 1995-2016 (1-D, 257 points;
              trend plus yearly seasonality: two length scales)
  sunspots    statsmodels, yearly sunspot numbers 1700-2008 (1-D, 309 points; the 11-year
              cycle inside slower swings)
  dem         matplotlib's sample elevation model jacksboro_fault_dem.npz, every 16th
              row and column (2-D, 22 x 26 = 572 points; ridges and a fault valley)
  iris        scikit-learn's iris: petal width from sepal length, sepal width, petal length
              (3-D, repeated inputs averaged: 147 points)

Protocol per (data set, split): N0 random observed points; a method asks for K more inside
the data's box; each suggestion is replaced by the nearest measurement not yet chosen (in
[0, 1]-scaled inputs); the N0 + K points are refitted by two evaluators, neither of them
the suggesting model: (a) scikit-learn GP, Matern 5/2 ARD + white noise, maximum
likelihood with 3 restarts; (b) a fully Bayesian GP by quadrature: Matern 5/2 ARD, flat
prior over a log-spaced grid of length scales, amplitude and noise, the predictive mean
averaged over the grid posterior (numpy, exact). Score: RMSE over every point of the data
set (relative to its sd). The same 10 random picks of K (from the same unchosen points)
are scored the same way; a method's share is the fraction of them that score better
(0.5 = no better than random; lower is better), averaged over splits with its SE.

Methods: every placement criterion x {bayes, map} (`placement suggest` defaults
otherwise), random (one more random pick), sobol (scrambled Sobol points, snapped),
maximin (greedy: farthest candidate from all chosen points), maxvar (greedy maximum
variance over the candidates, MAP hyperparameters), botorch (BoTorch
qNegIntegratedPosteriorVariance on a MAP SingleTaskGP; optimize_acqf with
BOTORCH_RESTARTS restarts and BOTORCH_RAW raw samples, 256 Sobol integration points).

Run (resumable: one JSON line per (data set, split, method) in results/real_data.jsonl,
done ones are skipped; splits run in order so a partial run is balanced):
  XLA_FLAGS="--xla_cpu_multi_thread_eigen=false" OMP_NUM_THREADS=1 nice -n 19 \
      python experiments/real_data.py --splits 20 [--datasets a,b] [--methods m1,m2]
  python experiments/real_data.py --report       (results/real_data.md and .png only; --log X.jsonl: X.md, X.png)
  python experiments/real_data.py --first-split 20 --splits 30 --log X.jsonl ...   (splits 20-29 only)
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
LOG = OUT / "real_data.jsonl"
sys.path.insert(0, str(ROOT))

N0 = {1: 10, 2: 15, 3: 15}  # starting points by input dimension
K = 5  # `placement suggest` default
NUM_RANDOM = 10
BOTORCH_RESTARTS, BOTORCH_RAW = 4, 128
CRITERIA = ("expected_total_variance", "integrated_variance", "ek_variance", "hedged_variance", "max_variance",
            "mutual_information")
PLACEMENT = tuple(f"{c}/{s}" for c in CRITERIA for s in ("map", "bayes"))
METHODS = PLACEMENT + ("random", "sobol", "maximin", "maxvar", "botorch")
# Variants: "criterion/sampler+option+option", each option a SuggestConfig setting (options());
# run with --methods and their own --log. The ones screened:
VARIANTS = ("expected_total_variance/bayes+spacing", "integrated_variance/bayes+spacing",
            "hedged_variance/bayes+spacing", "expected_total_variance/bayes+expquad",
            "expected_total_variance/bayes+matern32", "expected_total_variance/bayes+ns0.2",
            "expected_total_variance/bayes+h64")


def options(tokens):
    """SuggestConfig settings of a variant's options: spacing (ell_prior="spacing"), a kernel
    name (kernel=...), hN (num_hyper=N), fN (num_fantasies=N), nsX (noise_sd=X)."""
    from placement.kernels import KERNELS

    out = {}
    for t in tokens:
        if t == "pool":  # not a setting: pick() passes every data point's inputs as target=
            continue
        if t == "spacing":
            out["ell_prior"] = "spacing"
        elif t in KERNELS:
            out["kernel"] = t
        elif t[:1] == "h" and t[1:].isdigit():
            out["num_hyper"] = int(t[1:])
        elif t[:1] == "f" and t[1:].isdigit():
            out["num_fantasies"] = int(t[1:])
        elif t[:2] == "ns":
            out["noise_sd"] = float(t[2:])
        else:
            raise SystemExit(f"unknown variant option {t!r}")
    return out


def is_placement(method):
    base = method.split("+")[0]
    return base in PLACEMENT


# -- data sets -------------------------------------------------------------------------------
def _dedupe(X, y):
    u, inv = np.unique(X, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    return u, np.bincount(inv, weights=y) / np.bincount(inv)


def load(name):
    """(X (N, d), y (N,)) of a data set."""
    if name == "elec_equip":
        import statsmodels.datasets.elec_equip as e

        y = e.load().data.iloc[:, 0].to_numpy(float)
        return np.arange(len(y), dtype=float)[:, None] / 12.0, y
    if name == "sunspots":
        import statsmodels.datasets.sunspots as s

        d = s.load_pandas().data
        return d["YEAR"].to_numpy(float)[:, None], d["SUNACTIVITY"].to_numpy(float)
    if name == "dem":
        import matplotlib.cbook as cb

        z = cb.get_sample_data("jacksboro_fault_dem.npz")
        e = z["elevation"][::16, ::16].astype(float)
        r, c = np.meshgrid(np.arange(e.shape[0]), np.arange(e.shape[1]), indexing="ij")
        return np.stack([r.ravel(), c.ravel()], 1).astype(float), e.ravel()
    if name == "iris":
        from sklearn.datasets import load_iris

        d = load_iris().data
        return _dedupe(d[:, :3], d[:, 3])
    raise SystemExit(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")


DATASETS = ("elec_equip", "sunspots", "dem", "iris")


# -- evaluators --------------------------------------------------------------------------------
def rmse_sklearn(Xn, y, idx, seed):
    """Relative RMSE over every point of scikit-learn's GP (Matern 5/2 ARD + white noise)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    d = Xn.shape[1]
    kern = ConstantKernel(1.0, (1e-3, 1e3)) * Matern(np.full(d, 0.2), (1e-3, 1e2), nu=2.5) + WhiteKernel(1e-2, (1e-6, 1e1))
    gp = GaussianProcessRegressor(kern, normalize_y=True, n_restarts_optimizer=3, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gp.fit(Xn[idx], y[idx])
    return float(np.sqrt(np.mean((gp.predict(Xn) - y) ** 2)) / y.std())


def _matern52(r):
    s = np.sqrt(5.0) * r
    return (1.0 + s + s * s / 3.0) * np.exp(-s)


def bayes_grid(d):
    """(C, d + 2) grid of log (ell_1..ell_d, eta, sigma) for the quadrature evaluator, on
    [0, 1]-scaled inputs and standardised y."""
    n_ell = {1: 24, 2: 12, 3: 8}[d]
    axes = [np.log(np.geomspace(0.01, 2.0, n_ell))] * d + [np.log(np.geomspace(0.3, 3.0, 6)),
                                                           np.log(np.geomspace(0.005, 1.0, 8))]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, d + 2)


def rmse_bayes(Xn, y, idx, chunk=256):
    """Relative RMSE over every point of the fully Bayesian GP by quadrature: flat prior on
    the bayes_grid, exact marginal likelihood per grid point, the posterior-weighted mean."""
    Xo = Xn[idx]
    ym, ys = y[idx].mean(), y[idx].std() or 1.0
    yo = (y[idx] - ym) / ys
    n, d = Xo.shape
    grid = bayes_grid(d)
    logml, means = [], []
    for c0 in range(0, len(grid), chunk):
        t = grid[c0:c0 + chunk]
        ell, eta, sig = np.exp(t[:, :d]), np.exp(t[:, d]), np.exp(t[:, d + 1])
        diff = Xo[None, :, None, :] - Xo[None, None, :, :]  # (1, n, n, d)
        r = np.sqrt(np.sum((diff / ell[:, None, None, :]) ** 2, -1))
        Kc = eta[:, None, None] ** 2 * _matern52(r) + (sig**2 + 1e-8)[:, None, None] * np.eye(n)
        L = np.linalg.cholesky(Kc)
        a = np.linalg.solve(Kc, np.broadcast_to(yo, (len(t), n))[..., None])[..., 0]
        logml.append(-0.5 * np.einsum("ci,ci->c", yo[None], a) - np.log(np.diagonal(L, axis1=1, axis2=2)).sum(1))
        rs = np.sqrt(np.sum(((Xn[None, :, None, :] - Xo[None, None, :, :]) / ell[:, None, None, :]) ** 2, -1))
        means.append(np.einsum("cgi,ci->cg", eta[:, None, None] ** 2 * _matern52(rs), a))
    lw = np.concatenate(logml)
    w = np.exp(lw - lw.max())
    mean = (w / w.sum()) @ np.concatenate(means)
    return float(np.sqrt(np.mean((mean * ys + ym - y) ** 2)) / y.std())


def evaluate(Xn, y, idx, seed):
    return {"sklearn": rmse_sklearn(Xn, y, idx, seed), "bayes": rmse_bayes(Xn, y, idx)}


# -- methods -----------------------------------------------------------------------------------
def snap(points, Xn, taken):
    """Nearest not-yet-taken measurement to each suggestion, in turn (indices)."""
    taken, out = set(int(i) for i in taken), []
    for p in np.atleast_2d(points):
        dist = np.sum((Xn - p) ** 2, 1)
        dist[list(taken)] = np.inf
        j = int(np.argmin(dist))
        taken.add(j)
        out.append(j)
    return out


def _ours(Xn, yo, k, seed, criterion, sampler, target=None, **opts):
    from placement.suggest import SuggestConfig, suggest_arrays

    bounds = np.tile([0.0, 1.0], (Xn.shape[1], 1))
    pts, _ = suggest_arrays(Xn, yo, bounds, SuggestConfig(k=k, criterion=criterion, sampler=sampler, seed=seed,
                                                          progress="off", **opts), target=target)
    return pts


def _maximin(Xall, start, k):
    chosen = list(start)
    for _ in range(k):
        dmin = np.min(np.sum((Xall[:, None, :] - Xall[chosen][None]) ** 2, -1), 1)
        dmin[chosen] = -1.0
        chosen.append(int(np.argmax(dmin)))
    return chosen[len(start):]


def _maxvar(Xall, yo, start, k, seed):
    import jax.numpy as jnp

    from placement import gpjax
    from placement.suggest import hyper_draws

    ell, eta, sigma, _ = hyper_draws(Xall[start], yo, "matern52", 1, seed, "map")
    chosen = list(start)
    for _ in range(k):  # the variance does not depend on y, so later picks see earlier ones
        _, var = gpjax.posterior("matern52", jnp.asarray(Xall[chosen]), jnp.zeros(len(chosen)), jnp.asarray(Xall),
                                 jnp.asarray(ell[0]), eta[0], sigma[0])
        var = np.asarray(var).copy()
        var[chosen] = -1.0
        chosen.append(int(np.argmax(var)))
    return chosen[len(start):]


def _botorch(Xo, yo, k, seed, target=None):
    import torch
    from botorch.acquisition.active_learning import qNegIntegratedPosteriorVariance
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms import Standardize
    from botorch.optim import optimize_acqf
    from gpytorch.mlls import ExactMarginalLogLikelihood
    from scipy.stats import qmc

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    d = Xo.shape[1]
    gp = SingleTaskGP(torch.tensor(Xo), torch.tensor(yo)[:, None], outcome_transform=Standardize(m=1))
    fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp))
    if target is None:
        mc = torch.tensor(qmc.Sobol(d=d, scramble=True, seed=seed).random(256))
    else:  # the data's inputs, as suggest's target= uses them (at most 256)
        from placement.suggest.suggester import target_points

        mc = torch.tensor(target_points(target, 256, seed))
    acq = qNegIntegratedPosteriorVariance(gp, mc_points=mc)
    bounds = torch.tensor(np.tile([[0.0], [1.0]], (1, d)))
    cand, _ = optimize_acqf(acq, bounds=bounds, q=k, num_restarts=BOTORCH_RESTARTS, raw_samples=BOTORCH_RAW)
    return cand.detach().numpy()


def pick(method, Xn, y, start, seed):
    """Indices of the K measurements the method adds to start."""
    yo = (y[start] - y[start].mean()) / (y[start].std() or 1.0)
    rest = np.setdiff1d(np.arange(len(y)), start)
    if is_placement(method):
        base, *tokens = method.split("+")
        crit, sampler = base.split("/")
        target = Xn if "pool" in tokens else None  # the inputs of every point the score is taken over
        return snap(_ours(Xn[start], yo, K, seed, crit, sampler, target=target, **options(tokens)), Xn, start)
    if method == "random":
        return [int(i) for i in np.random.default_rng(10_000 + seed).choice(rest, K, replace=False)]
    if method == "sobol":
        from scipy.stats import qmc

        return snap(qmc.Sobol(d=Xn.shape[1], scramble=True, seed=seed).random(K), Xn, start)
    if method == "maximin":
        return _maximin(Xn, list(start), K)
    if method == "maxvar":
        return _maxvar(Xn, yo, list(start), K, seed)
    if method in ("botorch", "botorch+pool"):
        return snap(_botorch(Xn[start], yo, K, seed, Xn if method == "botorch+pool" else None), Xn, start)
    raise SystemExit(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def scaled(X):
    lo, hi = X.min(0), X.max(0)
    return (X - lo) / (hi - lo)


def split_start(name, n, d, split):
    return np.sort(np.random.default_rng([split, len(name), sum(map(ord, name))]).choice(n, N0[d], replace=False))


# -- the run -------------------------------------------------------------------------------------
def done_keys():
    if not LOG.exists():
        return set()
    keys = set()
    for line in LOG.read_text().splitlines():
        try:
            r = json.loads(line)
            keys.add((r["dataset"], r["split"], r["method"]))
        except (json.JSONDecodeError, KeyError):
            continue  # a line cut short by an interrupted run
    return keys


def append(record):
    OUT.mkdir(parents=True, exist_ok=True)
    with open(LOG, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def run(datasets, methods, splits, first=0):
    done = done_keys()
    cache = {name: load(name) for name in datasets}
    for split in range(first, splits):
        for name in datasets:
            X, y = cache[name]
            Xn, d = scaled(X), X.shape[1]
            start = split_start(name, len(y), d, split)
            if (name, split, "_random_ref") not in done:
                rest = np.setdiff1d(np.arange(len(y)), start)
                rng = np.random.default_rng([split, 7])
                refs = [evaluate(Xn, y, np.concatenate([start, rng.choice(rest, K, replace=False)]), split)
                        for _ in range(NUM_RANDOM)]
                append({"dataset": name, "split": split, "method": "_random_ref",
                        "sklearn": [r["sklearn"] for r in refs], "bayes": [r["bayes"] for r in refs]})
                done.add((name, split, "_random_ref"))
            for method in methods:
                if (name, split, method) in done:
                    continue
                t = time.perf_counter()
                try:
                    idx = pick(method, Xn, y, start, split)
                except Exception as e:  # a method that fails is recorded, not fatal to the run
                    append({"dataset": name, "split": split, "method": method, "error": f"{type(e).__name__}: {e}"})
                    continue
                sec = time.perf_counter() - t
                r = evaluate(Xn, y, np.concatenate([start, idx]), split)
                append({"dataset": name, "split": split, "method": method, "seconds": sec, "picked": idx, **r})
                print(f"{name} split {split} {method}: {sec:.1f} s, sklearn {r['sklearn']:.3f}, "
                      f"bayes {r['bayes']:.3f}", flush=True)


# -- the report -------------------------------------------------------------------------------------
def summarise():
    """{(dataset, method): {evaluator: (share, se, splits)}, seconds: median} from the log."""
    rows = [json.loads(line) for line in LOG.read_text().splitlines() if line.strip()]
    main_log = OUT / "real_data.jsonl"
    if LOG.resolve() != main_log.resolve() and main_log.exists():  # a variants log: the default from the main one
        rows += [r for r in (json.loads(line) for line in main_log.read_text().splitlines() if line.strip())
                 if r.get("method") == DEFAULT]
    refs = {(r["dataset"], r["split"]): r for r in rows if r["method"] == "_random_ref"}
    res = {}
    for r in rows:
        if r["method"] == "_random_ref" or "error" in r or (r["dataset"], r["split"]) not in refs:
            continue
        ref = refs[(r["dataset"], r["split"])]
        e = res.setdefault((r["dataset"], r["method"]), {"sklearn": {}, "bayes": {}, "seconds": []})
        for ev in ("sklearn", "bayes"):
            e[ev][r["split"]] = float(np.mean(np.asarray(ref[ev]) < r[ev]))
        e["seconds"].append(r["seconds"])
    out = {}
    for key, e in res.items():
        s = len(e["sklearn"])
        out[key] = {ev: (float(np.mean(list(e[ev].values()))),
                         float(np.std(list(e[ev].values()), ddof=1) / np.sqrt(s)) if s > 1 else float("nan"), s)
                    for ev in ("sklearn", "bayes")}
        out[key]["seconds"] = float(np.median(e["seconds"]))
        out[key]["per_split"] = {ev: e[ev] for ev in ("sklearn", "bayes")}
    return out


DEFAULT = "expected_total_variance/bayes"  # `placement suggest`'s defaults


def paired(summ, dataset, method, ev):
    """(mean, SE, splits) of method's share minus the default's over the splits both ran: the
    same starting points and random picks, so split-to-split variation cancels."""
    a, b = summ.get((dataset, method)), summ.get((dataset, DEFAULT))
    if a is None or b is None:
        return None
    common = sorted(set(a["per_split"][ev]) & set(b["per_split"][ev]))
    if len(common) < 2:
        return None
    d = np.array([a["per_split"][ev][s] - b["per_split"][ev][s] for s in common])
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d))), len(d)


def report():
    summ = summarise()
    datasets = [d for d in DATASETS if any(k[0] == d for k in summ)]
    methods = [m for m in METHODS if any(k[1] == m for k in summ)]
    methods += sorted({k[1] for k in summ} - set(methods))
    lines = ["# Suggestions on real data: share of random picks that beat each method", "",
             f"N0 = {N0} starting points by dimension, K = {K} suggested, {NUM_RANDOM} random picks per split; "
             "share +- SE over splits (n = splits); lower is better, 0.5 = random. Evaluators: scikit-learn GP "
             "(sk) and a fully Bayesian quadrature GP (fb). Seconds: median per call. BoTorch: optimize_acqf "
             f"num_restarts={BOTORCH_RESTARTS}, raw_samples={BOTORCH_RAW}. Generated by experiments/real_data.py.", "",
             "| method | " + " | ".join(f"{d} sk | {d} fb" for d in datasets) + " | mean sk | mean fb | s/call |",
             "|---|" + "---|---|" * len(datasets) + "---|---|---|"]
    for m in methods:
        cells, means = [], {"sklearn": [], "bayes": []}
        for d in datasets:
            v = summ.get((d, m))
            for ev in ("sklearn", "bayes"):
                if v is None:
                    cells.append("")
                else:
                    cells.append(f"{v[ev][0]:.2f} +- {v[ev][1]:.2f} (n={v[ev][2]})")
                    means[ev].append(v[ev][0])
        secs = [summ[(d, m)]["seconds"] for d in datasets if (d, m) in summ]
        mean = [f"{np.mean(means[ev]):.2f}" if len(means[ev]) == len(datasets) else "" for ev in ("sklearn", "bayes")]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {mean[0]} | {mean[1]} | {np.median(secs):.1f} |")
    lines += ["", f"Paired with the default ({DEFAULT}) on the same splits: the method's share minus the default's, "
              "mean +- SE over splits (negative: better than the default; a difference beyond two SEs is one the "
              "splits support).", "",
              "| method | " + " | ".join(f"{d} sk | {d} fb" for d in datasets) + " |",
              "|---|" + "---|---|" * len(datasets)]
    for m in methods:
        if m == DEFAULT:
            continue
        cells = []
        for d in datasets:
            for ev in ("sklearn", "bayes"):
                v = paired(summ, d, m, ev)
                cells.append("" if v is None else f"{v[0]:+.2f} +- {v[1]:.2f}" + (" *" if abs(v[0]) > 2 * v[1] else ""))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "*: beyond two SEs."]
    LOG.with_suffix(".md").write_text("\n".join(lines) + "\n")  # real_data.md for the default log
    print("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 0.35 * len(methods) + 2), sharey=True)
    for ax, ev, title in zip(axes, ("sklearn", "bayes"), ("scikit-learn GP refit", "fully Bayesian refit")):
        for j, d in enumerate(datasets):
            ys = np.arange(len(methods)) + (j - (len(datasets) - 1) / 2) * 0.18
            v = [summ.get((d, m), {ev: (np.nan, np.nan, 0)})[ev] for m in methods]
            ax.errorbar([a[0] for a in v], ys, xerr=[a[1] for a in v], fmt="o", ms=4, label=d)
        ax.axvline(0.5, color="k", lw=0.8, ls="--")
        ax.axvline(0.3, color="C3", lw=0.8, ls=":")
        ax.set_title(title)
        ax.set_xlabel("share of random picks that do better")
        ax.set_xlim(0, 1)
    axes[0].set_yticks(np.arange(len(methods)), methods, fontsize=8)
    axes[0].invert_yaxis()
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(LOG.with_suffix(".png"), dpi=120)


def main():
    global LOG
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--splits", type=int, default=20, help="run splits first-split .. splits - 1")
    ap.add_argument("--first-split", type=int, default=0, help="first split to run (fresh splits for a replication)")
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--report", action="store_true", help="only write the table and figure from the log")
    ap.add_argument("--log", default=str(LOG), help="the JSON-lines log (default results/real_data.jsonl)")
    a = ap.parse_args()
    LOG = Path(a.log)
    if not a.report:
        import placement  # noqa: F401  (x64 and the package's JAX settings)

        run([s for s in a.datasets.split(",") if s], [m for m in a.methods.split(",") if m], a.splits, a.first_split)
    report()


if __name__ == "__main__":
    main()
