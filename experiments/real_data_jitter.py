"""How much of a method's share on a real data set is luck of the exact points picked?

For each split, the default's logged picks (results/real_data.jsonl) are moved by a small
random step: each pick to itself or one of its NEAR nearest measurements (in the [0, 1]-scaled
inputs; on a 1-D series the points at most 2 positions away), among those not yet chosen. The
moved design is scored exactly as real_data.py scores a method:
the share of that split's recorded random picks that beat it. Which neighbour gives the better
refit depends on the values measured there, which a criterion that does not see them cannot
know; so the spread of the share over the moves is noise that no such criterion controls. Its
SD is set against the SD of the shares between splits.

  python experiments/real_data_jitter.py sunspots elec_equip dem iris   (results/real_data_jitter.md)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_data as rd  # noqa: E402

MOVES, NEAR, SPLITS = 8, 4, 20
OUT = rd.OUT / "real_data_jitter.md"


def moved(picks, start, Xn, rng):
    taken, out = set(int(i) for i in start), []
    for p in picks:
        order = np.argsort(np.sum((Xn - Xn[p]) ** 2, 1), kind="stable")  # p itself first
        near = [int(j) for j in order if int(j) not in taken][: NEAR + 1]
        j = int(rng.choice(near))
        taken.add(j)
        out.append(j)
    return out


def main(names):
    rows = [json.loads(line) for line in rd.LOG.read_text().splitlines() if line.strip()]
    refs = {(r["dataset"], r["split"]): r for r in rows if r["method"] == "_random_ref"}
    picks = {(r["dataset"], r["split"]): r for r in rows if r["method"] == rd.DEFAULT and "picked" in r}
    lines = ["# Share of random picks that beat the default, after moving each pick to a near neighbour", "",
             f"experiments/real_data_jitter.py: the default's logged picks on each of {SPLITS} splits, each pick moved to "
             f"itself or one of its {NEAR} nearest measurements not yet chosen ({MOVES} moves per split), scored as in "
             "real_data.py. Columns: the mean over splits of the SD of the share across the moves (luck of the exact "
             "points), the SD of the logged share between splits, and the mean |share change| of a move.", "",
             "| data set | evaluator | SD across moves (mean over splits) | SD between splits | mean abs change |",
             "|---|---|---|---|---|"]
    for name in names:
        X, y = rd.load(name)
        Xn, d = rd.scaled(X), X.shape[1]
        within, logged, change = {"sklearn": [], "bayes": []}, {"sklearn": [], "bayes": []}, {"sklearn": [], "bayes": []}
        for split in range(SPLITS):
            ref, base = refs[(name, split)], picks[(name, split)]
            start = rd.split_start(name, len(y), d, split)
            rng = np.random.default_rng([split, 99])
            shares = {"sklearn": [], "bayes": []}
            for _ in range(MOVES):
                idx = moved(base["picked"], start, Xn, rng)
                r = rd.evaluate(Xn, y, np.concatenate([start, idx]), split)
                for ev in shares:
                    shares[ev].append(float(np.mean(np.asarray(ref[ev]) < r[ev])))
            for ev in shares:
                s0 = float(np.mean(np.asarray(ref[ev]) < base[ev]))
                within[ev].append(float(np.std(shares[ev], ddof=1)))
                logged[ev].append(s0)
                change[ev].append(float(np.mean(np.abs(np.asarray(shares[ev]) - s0))))
            print(name, split, {ev: round(float(np.mean(v)), 2) for ev, v in shares.items()}, flush=True)
        for ev in ("sklearn", "bayes"):
            lines.append(f"| {name} | {ev} | {np.mean(within[ev]):.2f} | {np.std(logged[ev], ddof=1):.2f} | "
                         f"{np.mean(change[ev]):.2f} |")
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:] or ["sunspots", "elec_equip", "dem", "iris"])
