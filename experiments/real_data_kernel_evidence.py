"""Choosing suggest's kernel by its evidence: would it have helped on real data?

On the splits of experiments/real_data.py, each kernel's log evidence log p(y | kernel) at
the N0 starting points (suggest's hyperparameter model and priors: importance sampling from
the Laplace-centred proposal, 4 x 256 draws), and the shares the default criterion scored
with that kernel on that split (read from results/real_data.jsonl, default matern52, and
results/real_data_variants.jsonl, the +matern32 and +expquad variants). "by evidence" takes,
on each split, the kernel whose evidence is largest. Nothing is suggested again here: the
picks are the logged ones.

Run (after real_data.py has logged the variants):
  XLA_FLAGS="--xla_cpu_multi_thread_eigen=false" OMP_NUM_THREADS=1 python experiments/real_data_kernel_evidence.py
Writes results/real_data_kernel_evidence.json (evidences) and .md (table).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import real_data as rd  # noqa: E402

OUT = HERE / "results" / "real_data_kernel_evidence"
METHOD = "expected_total_variance/bayes"
KERNELS = {"matern52": METHOD, "matern32": METHOD + "+matern32", "expquad": METHOD + "+expquad"}


def log_evidence(Xn, yn, kernel, seed, rounds=4, size=256):
    """(log p(y | kernel), ESS of the weights) by importance sampling around the mode."""
    import jax
    import jax.numpy as jnp
    from scipy.special import logsumexp

    from placement.importance import proposal_from_moments
    from placement.suggest.hyper import _as_prior, _closed_tools, _jnp_prior, hyper_mode

    mode, cov, _ = hyper_mode(Xn, yn, kernel, seed)
    _, _, is_round = _closed_tools(kernel)
    prior = _jnp_prior(_as_prior(None, Xn.shape[1]))
    prop = proposal_from_moments(jnp.asarray(mode), jnp.asarray(cov))
    key, lw = jax.random.PRNGKey(seed + 7), []
    for _ in range(rounds):
        key, _th, w = is_round(key, prop, jnp.asarray(Xn), jnp.asarray(yn), size, prior)
        lw.append(np.where(np.isfinite(w), w, -np.inf))
    lw = np.concatenate(lw)
    w = np.exp(lw - lw.max())
    return float(logsumexp(lw) - np.log(len(lw))), float(w.sum() ** 2 / (w**2).sum())


def evidences(splits):
    out = []
    for name in rd.DATASETS:
        X, y = rd.load(name)
        Xn, d = rd.scaled(X), X.shape[1]
        for split in range(splits):
            start = rd.split_start(name, len(y), d, split)
            yo = (y[start] - y[start].mean()) / (y[start].std() or 1.0)
            ev = {k: log_evidence(Xn[start], yo, k, split) for k in KERNELS}
            out.append({"dataset": name, "split": split, **{k: v[0] for k, v in ev.items()},
                        "min_ess": min(v[1] for v in ev.values())})
            print(name, split, {k: round(v[0], 2) for k, v in ev.items()}, flush=True)
    return out


def shares():
    """{(dataset, split, method): {evaluator: share}}: real_data.py's per-split shares from the
    variants log, with the default's from the main log."""
    rd.LOG = HERE / "results" / "real_data_variants.jsonl"
    return {(name, split, method): {e: v["per_split"][e][split] for e in ("sklearn", "bayes")}
            for (name, method), v in rd.summarise().items() for split in v["per_split"]["sklearn"]}


def table(ev, sh):
    lines = ["# Choosing the kernel by its evidence (experiments/real_data_kernel_evidence.py)", "",
             f"Default criterion ({METHOD}); share of random picks that beat it (sk / fb, lower is better) with "
             "each kernel on the splits where all three were run, and with the kernel of largest evidence on each "
             "split. log BF: mean log evidence of matern52 minus matern32 +- SE over splits.", "",
             "| data set | splits | matern52 | matern32 | expquad | by evidence | kernels chosen | log BF 52-32 |",
             "|---|---|---|---|---|---|---|---|"]
    for name in rd.DATASETS:
        rows = [e for e in ev if e["dataset"] == name and all((name, e["split"], m) in sh for m in KERNELS.values())]
        both = [e for e in ev if e["dataset"] == name
                and all((name, e["split"], KERNELS[k]) in sh for k in ("matern52", "matern32"))]

        def cell(pick, rows_):
            v = np.array([[sh[(name, e["split"], KERNELS[pick(e)])][x] for x in ("sklearn", "bayes")] for e in rows_])
            return f"{v[:, 0].mean():.2f} / {v[:, 1].mean():.2f}" if len(v) else ""

        chosen = {}
        for e in both:
            k = max(("matern52", "matern32"), key=lambda k: e[k])
            chosen[k] = chosen.get(k, 0) + 1
        diff = np.array([e["matern52"] - e["matern32"] for e in both])
        lines.append(f"| {name} | {len(both)} ({len(rows)} with expquad) | {cell(lambda e: 'matern52', both)} | "
                     f"{cell(lambda e: 'matern32', both)} | {cell(lambda e: 'expquad', rows)} | "
                     f"{cell(lambda e: max(('matern52', 'matern32'), key=lambda k: e[k]), both)} | "
                     f"{chosen} | {diff.mean():+.2f} +- {diff.std(ddof=1) / np.sqrt(len(diff)):.2f} |")
    return "\n".join(lines) + "\n"


def main():
    splits = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    path = OUT.with_suffix(".json")
    if path.exists():
        ev = json.loads(path.read_text())
    else:
        import placement  # noqa: F401  (x64)

        ev = evidences(splits)
        path.write_text(json.dumps(ev, indent=0))
    text = table(ev, shares())
    OUT.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
