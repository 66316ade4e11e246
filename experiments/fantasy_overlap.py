"""Design mode: could one fantasy's posterior draws serve another's? (issue 14, draw reuse)

In predictive mode each fantasy j has its own sampler and draws from its own posterior
p(theta | y_j(X), X). Reusing fantasy j's draws for fantasy j' means weighting them by
p(theta, y_j' | X) / q_j(theta); that pays only where the weights keep a useful effective
sample size. This script measures it: at the starting design of the seed problem, each
fantasy's final importance batch is reweighted to every other fantasy's posterior and the
weight ESS, as a share of the batch, is reported (own: the fantasy's own ESS share;
cross: every j' != j). Two settings: fantasies from the prior predictive (measured=0) and
from the posterior predictive given the seed's first 6 measured points (measured=6).

    python experiments/fantasy_overlap.py [--fantasies 8] [--seeds 3]

Prints a table and appends JSON lines to experiments/results/fantasy_overlap.jsonl.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def overlap(measured: int, J: int, seed: int) -> dict:
    import jax

    from placement import api, settings
    from placement.problems import seed_gp

    problem = api.problem_from_model(seed_gp(), "integrated_variance", y_mode="predictive", fantasies=J,
                                     fantasy_seed=seed, measured=measured)
    engine = api.make_engine(problem, settings.sampler_config("importance_run", root="run"), gradient_check="off")
    X = problem.jm.X
    key = jax.random.PRNGKey(seed)
    states = engine.init(key, X)
    own, cross = [], []
    for j in range(J):
        _, est = engine.inner.gradient(jax.random.fold_in(key, 100 + j), states[j], X, engine.packed_at(X, j))
        N = est.sample.theta.shape[0]
        for j2 in range(J):
            w = engine.inner.sample_weights(est.sample, X, engine.packed_at(X, j2))
            share = float(1.0 / np.sum(w**2) / N)
            (own if j2 == j else cross).append(share)
    return {"measured": measured, "fantasies": J, "seed": seed, "draws": int(N),
            "own_median": float(np.median(own)), "cross_median": float(np.median(cross)),
            "cross_p90": float(np.quantile(cross, 0.9)), "cross_above_10pct": float(np.mean(np.array(cross) > 0.1)),
            "own": own, "cross": cross}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fantasies", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    out = Path(__file__).resolve().parent / "results" / "fantasy_overlap.jsonl"
    print("| measured | seed | own ESS share (median) | cross ESS share: median | 90th pct | share of pairs > 10% |")
    print("|---|---|---|---|---|---|")
    for measured in (0, 6):
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            row = overlap(measured, args.fantasies, seed)
            row["seconds"] = time.perf_counter() - t0
            with open(out, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(f"| {measured} | {seed} | {row['own_median']:.2f} | {row['cross_median']:.3f} | {row['cross_p90']:.3f} "
                  f"| {row['cross_above_10pct']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
