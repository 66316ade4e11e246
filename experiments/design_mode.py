"""Design mode, check (c): a relocation in y_mode=predictive reaches the IMSE-optimal design.

The seed's GP (Matern52 on [0, 10], 10 points, integrated variance over 40 midpoints) with
tight log-normal priors (sd 0.001) around the seed's true hyperparameters (ell 5, eta 8,
sigma 0.02): the expected integrated variance is then the fixed-hyperparameter IMSE, which
does not depend on y. ``placement.relocate`` in predictive mode (quadrature, 9 nodes per axis;
J fantasies) starts from a design bunched in the middle; its final design is scored by the
closed form (``placement.design.gp_imse``) and compared with the optimum found by L-BFGS-B on
the closed form (best of 8 starts, ``placement.design.imse_optimal``).

    python experiments/design_mode.py [--steps 80] [--fantasies 1] [--lr 0.3] [--b1 0.5] [--b2 0.9]
(the defaults are conf/experiment/design_predictive.yaml's optimizer)
Prints one JSON line (also appended to experiments/results/design_mode.jsonl).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--fantasies", type=int, default=1)
    ap.add_argument("--lr", type=float, default=0.3)
    ap.add_argument("--b1", type=float, default=0.5)
    ap.add_argument("--b2", type=float, default=0.9)
    ap.add_argument("--prior-sd", type=float, default=0.001)
    args = ap.parse_args()

    import placement
    from placement import design

    t0 = time.perf_counter()
    X_opt, imse_opt = design.imse_optimal(n=10)
    X0 = np.linspace(2.0, 8.0, 10)
    model = design.tight_gp(prior_sd=args.prior_sd, x0=X0)
    run = placement.relocate(model, "integrated_variance", steps=args.steps, learning_rate=args.lr,
                             optimizer_options={"schedule_kind": "cosine", "end_factor": 0.05, "b1": args.b1, "b2": args.b2},
                             constraints={"lower": 0.0, "upper": 10.0}, sampler="quadrature", points=9,
                             y_mode="predictive", fantasies=args.fantasies, progress=False)
    X = np.sort(run.X)
    imse = float(design.gp_imse(X))
    row = {"steps": args.steps, "fantasies": args.fantasies, "lr": args.lr, "b1": args.b1, "b2": args.b2, "prior_sd": args.prior_sd,
           "imse_start": float(design.gp_imse(X0)), "imse_final": imse, "imse_optimal": imse_opt,
           "ratio": imse / imse_opt, "imse_even_grid": float(design.gp_imse(np.linspace(0, 10, 10))),
           "F_final": run.F, "F_se_final": run.F_se, "X_final": X.round(4).tolist(),
           "X_optimal": np.round(X_opt, 4).tolist(), "y_mode": run.y_mode, "seconds": time.perf_counter() - t0}
    print(json.dumps(row))
    out = Path(__file__).resolve().parent / "results" / "design_mode.jsonl"
    with open(out, "a") as fh:
        fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
