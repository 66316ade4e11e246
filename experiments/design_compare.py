"""Design mode, benchmark: which 10-point design plans the seed experiment best?

Designs for the seed problem (GP on [0, 10], Matern 5/2, the seed priors, integrated variance
over 40 midpoints), each scored by what a planner cares about: the integrated variance expected
after measuring there, averaged over fresh data.

Designs:
- fixed: ``placement run`` default (y_mode=fixed, 50 steps): the seed's y stay on the moving points;
- predictive: ``placement run +experiment=design_predictive`` (y_mode=predictive, J=8 fantasies
  of y from the prior predictive, 80 steps): relocation for the expected objective;
- suggest: ``placement.suggest`` given the seed's 3 leftmost points, asked for k=7 more;
- imse_optimal: the fixed-hyperparameter optimum at the seed's true (ell, eta, sigma) = (5, 8, 0.02)
  (``placement.design.imse_optimal``, L-BFGS-B on the closed form): knows the truth;
- even grid and 8 uniform random designs.

Scores (independent of the code that placed the points):
- ``expected_iv``: E over y ~ prior predictive at X of E[integrated variance | y, X], by a fixed
  tensor grid over the three log hyperparameters (``--nodes`` per axis) for the posterior of every
  fantasy; the same R fantasies' random numbers for every design (paired SE against the grid);
- ``true_imse``: the integrated variance at the seed's true hyperparameters (closed form, data-free).

    python experiments/design_compare.py [--fantasies 32] [--nodes 16]
Writes experiments/results/design_compare.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "design_compare"
# the scoring grid's box in log space (natural units): ell, eta, sigma
BOX = {"ell": (0.1, 40.0), "eta": (0.1, 40.0), "sigma": (1e-3, 20.0)}


def designs(seed: int = 0) -> dict:
    import pandas as pd

    import placement
    from placement import design
    from placement.problems import seed_data, seed_gp

    out = {}
    t = time.perf_counter()
    run = placement.relocate(seed_gp(), "integrated_variance", steps=50, progress=False)
    out["fixed"] = (np.sort(run.X), time.perf_counter() - t)
    t = time.perf_counter()
    run = placement.relocate(seed_gp(), "integrated_variance", steps=80, y_mode="predictive", fantasies=8,
                             learning_rate=0.3, num_samples=4096, progress=False,
                             optimizer_options={"schedule_kind": "cosine", "end_factor": 0.05, "b1": 0.5, "b2": 0.9},
                             constraints={"lower": 0.0, "upper": 10.0, "min_spacing": 0.3})
    out["predictive"] = (np.sort(run.X), time.perf_counter() - t)
    X, y = seed_data()
    t = time.perf_counter()
    s = placement.suggest(pd.DataFrame({"x": X[:3], "y": y[:3]}), k=7, bounds=[(0.0, 10.0)], seed=seed)
    out["suggest"] = (np.sort(np.concatenate([X[:3], s["x"].to_numpy()])), time.perf_counter() - t)
    t = time.perf_counter()
    out["imse_optimal"] = (np.sort(design.imse_optimal(n=10)[0]), time.perf_counter() - t)
    out["even_grid"] = (np.linspace(0.0, 10.0, 10), 0.0)
    rng = np.random.default_rng(seed)
    for i in range(8):
        out[f"random_{i}"] = (np.sort(rng.uniform(0.0, 10.0, 10)), 0.0)
    return out


def scorer(nodes: int):
    """score(X, Z) -> per-fantasy E[IV | y_r, X] for y_r from prior draws (theta_r, z_r)."""
    import jax
    import jax.numpy as jnp

    from placement.model import from_pymc
    from placement.problems import seed_gp

    jm = from_pymc(seed_gp(), "integrated_variance")
    assert jm.param_names == ("ell_log__", "eta_log__", "sigma_log__"), jm.param_names
    axes = [np.linspace(np.log(lo), np.log(hi), nodes) for lo, hi in BOX.values()]
    grid = jnp.asarray(np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3))

    def post_iv(X, y):
        lp = jax.vmap(lambda t: jm.logdensity(t, X, y))(grid)
        f = jax.vmap(lambda t: jm.objective(t, X, y))(grid)
        w = jax.nn.softmax(jnp.where(jnp.isfinite(lp), lp, -jnp.inf))
        edge = jnp.sum(jnp.where(jnp.any((grid == grid.min(0)) | (grid == grid.max(0)), axis=1), w, 0.0))
        return jnp.sum(w * f), edge

    @jax.jit
    def score(X, thetas, Z):
        def one(theta, z):
            ell, eta, sigma = jnp.exp(theta)
            r = jnp.abs(X[:, None] - X[None, :]) / ell
            K = eta**2 * (1 + jnp.sqrt(5.0) * r + 5.0 / 3.0 * r**2) * jnp.exp(-jnp.sqrt(5.0) * r)
            y = jnp.linalg.cholesky(K + (sigma**2 + 1e-9) * jnp.eye(X.shape[0])) @ z
            return post_iv(X, y)

        return jax.lax.map(lambda a: one(*a), (thetas, Z))

    return score


def prior_fantasies(R: int, n: int, seed: int = 1):
    """R prior draws of the seed priors (kept inside the scoring box's inner part) and normals."""
    from scipy import stats

    rng = np.random.default_rng(seed)
    out = []
    while len(out) < R:
        ell = stats.invgamma.rvs(*_invgamma_ab(1.0, 0.6), random_state=rng)
        eta = rng.exponential(3.0)
        sigma = abs(5.0 * rng.standard_cauchy())
        th = np.log([ell, eta, sigma])
        lo = np.log([b[0] for b in BOX.values()])
        hi = np.log([b[1] for b in BOX.values()])
        if np.all(th > lo + 0.25 * (hi - lo)) and np.all(th < hi - 0.25 * (hi - lo)):
            out.append(th)
    return np.asarray(out), rng.standard_normal((R, n))


def _invgamma_ab(mu: float, sigma: float):
    alpha = mu**2 / sigma**2 + 2
    return alpha, 0.0, mu * (alpha - 1)  # scipy: a, loc, scale


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fantasies", type=int, default=32)
    ap.add_argument("--nodes", type=int, default=16)
    args = ap.parse_args()
    import jax.numpy as jnp

    from placement import design

    D = designs()
    score = scorer(args.nodes)
    thetas, Z = prior_fantasies(args.fantasies, 10)
    rows = {}
    for name, (X, secs) in D.items():
        iv, edge = (np.asarray(a) for a in score(jnp.asarray(X), jnp.asarray(thetas), jnp.asarray(Z)))
        rows[name] = {"X": np.round(X, 4).tolist(), "seconds": secs, "per_fantasy": iv.tolist(),
                      "expected_iv": float(iv.mean()), "edge_mass_max": float(edge.max()),
                      "true_imse": float(design.gp_imse(jnp.asarray(X))),
                      "closest_pair": float(np.min(np.diff(np.sort(X))))}
        print(name, {k: v for k, v in rows[name].items() if k not in ("per_fantasy",)}, flush=True)
    base = np.asarray(rows["even_grid"]["per_fantasy"])
    for r in rows.values():
        d = np.asarray(r["per_fantasy"]) - base
        r["vs_grid"] = float(d.mean())
        r["vs_grid_se"] = float(d.std(ddof=1) / np.sqrt(len(d)))
    rnd = [r for k, r in rows.items() if k.startswith("random_")]
    summary = dict((k, r) for k, r in rows.items() if not k.startswith("random_"))
    summary["random (mean of 8)"] = {"expected_iv": float(np.mean([r["expected_iv"] for r in rnd])),
                                     "vs_grid": float(np.mean([r["vs_grid"] for r in rnd])),
                                     "vs_grid_se": float(np.std([r["vs_grid"] for r in rnd], ddof=1) / np.sqrt(len(rnd))),
                                     "true_imse": float(np.mean([r["true_imse"] for r in rnd])),
                                     "closest_pair": float(np.mean([r["closest_pair"] for r in rnd])),
                                     "seconds": 0.0, "edge_mass_max": max(r["edge_mass_max"] for r in rnd)}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.with_suffix(".json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    lines = ["# Design mode benchmark (experiments/design_compare.py)", "",
             f"Seed problem, 10 points. expected_iv: E[integrated variance | y] averaged over {args.fantasies} prior-"
             f"predictive fantasies (same fantasies for every design; {args.nodes}^3-node grid posterior); vs grid: "
             "paired difference to the even grid (negative is better) +- SE; true IMSE: at the seed's true "
             "hyperparameters.", "",
             "| design | expected IV | vs grid | true IMSE | closest pair | seconds to place |", "|---|---|---|---|---|---|"]
    for k, r in summary.items():
        lines.append(f"| {k} | {r['expected_iv']:.4g} | {r['vs_grid']:+.3g} +- {r['vs_grid_se']:.2g} | "
                     f"{r['true_imse']:.4g} | {r['closest_pair']:.2f} | {r['seconds']:.0f} |")
    lines.append("")
    lines.append(f"Largest posterior mass on the scoring grid's edge: {max(r['edge_mass_max'] for r in rows.values()):.2g}.")
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    names = [k for k in summary if not k.startswith("random")]
    for i, k in enumerate(names):
        ax.plot(rows[k]["X"], np.full(10, i), "o", ms=5)
    ax.set_yticks(range(len(names)), [f"{k}\n{rows[k]['expected_iv']:.3g} / {rows[k]['true_imse']:.3g}" for k in names])
    ax.set_xlabel("x")
    ax.set_title("designs (expected IV under fresh data / IMSE at the truth)", fontsize=9)
    fig.tight_layout()
    fig.savefig(OUT.with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    main()
