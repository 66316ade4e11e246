"""An upper reference for experiments/real_data.py: picks that see the true values.

    python experiments/real_data_oracle.py sunspots 20      # about a minute per split on 2 cores

Per split (the same starting points as real_data.py), K times: of 40 random unchosen points, take
the one whose addition gives the lowest scikit-learn refit RMSE over every point (the true values
are used: no method can do this). Then score it as real_data.py scores every method: the share
of that split's recorded random picks (experiments/results/real_data.jsonl, ``_random_ref``) with
a lower RMSE, under both evaluators. A share near 0.5 would say that no design beats random picks
on the data set at this budget; near 0 that designs matter and the target is reachable in principle.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_data as R  # noqa: E402

CANDIDATES = 40


def oracle_pick(Xn, y, start, split):
    rng = np.random.default_rng(split + 100)
    chosen: list[int] = []
    for _ in range(R.K):
        rest = np.setdiff1d(np.arange(len(y)), np.concatenate([start, chosen]).astype(int))
        cands = rng.choice(rest, min(CANDIDATES, len(rest)), replace=False)
        scores = [R.rmse_sklearn(Xn, y, np.concatenate([start, chosen, [c]]).astype(int), split) for c in cands]
        chosen.append(int(cands[int(np.argmin(scores))]))
    return np.asarray(chosen)


def main():
    name, splits = sys.argv[1], int(sys.argv[2])
    X, y = R.load(name)
    Xn, d = R.scaled(X), X.shape[1]
    refs = {}
    for line in R.LOG.read_text().splitlines():
        r = json.loads(line)
        if r.get("dataset") == name and r.get("method") == "_random_ref":
            refs[r["split"]] = r
    shares = {"sklearn": [], "bayes": []}
    for split in range(splits):
        if split not in refs:
            raise SystemExit(f"no recorded random picks for {name} split {split}; run experiments/real_data.py first")
        start = R.split_start(name, len(y), d, split)
        ev = R.evaluate(Xn, y, np.concatenate([start, oracle_pick(Xn, y, start, split)]), split)
        for k in shares:
            shares[k].append(float(np.mean(np.asarray(refs[split][k]) < ev[k])))
        print(split, {k: round(v, 3) for k, v in ev.items()}, {k: v[-1] for k, v in shares.items()}, flush=True)
    for k, v in shares.items():
        v = np.asarray(v)
        print(f"{name} {k}: oracle share beaten {v.mean():.3f} +- {v.std(ddof=1) / np.sqrt(len(v)):.3f} ({len(v)} splits)")


if __name__ == "__main__":
    main()
