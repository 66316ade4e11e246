"""``placement summarize DIR``: one table and one plot from a multirun folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from placement.io import write_atomic


def collect(root: Path) -> list[dict]:
    rows = []
    for res in sorted(root.rglob("result.json")):
        d = json.loads(res.read_text())
        over = res.parent / ".hydra" / "overrides.yaml"
        label = res.parent.relative_to(root).as_posix()
        if over.exists():
            items = [l[2:].strip() for l in over.read_text().splitlines() if l.startswith("- ")]
            label = " ".join(i for i in items if not i.startswith(("hydra.", "seed="))) or label
        rows.append({"run": label, "F": d["F"], "F_se": d["F_se"], "steps": d["steps"], "stop": d["stop_reason"],
                     "seconds": d["seconds"], "step_s": d.get("step_seconds_median"), "objective": d["objective"],
                     "direction": d["direction"]})
    return rows


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print("usage: placement summarize DIR   (DIR holds runs with result.json, e.g. a Hydra multirun folder)")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    root = Path(argv[0])
    if not root.is_dir():
        print(f"error: {root} is not a folder; give the multirun directory (e.g. multirun/run/<time>).", file=sys.stderr)
        return 2
    rows = collect(root)
    if not rows:
        print(f"error: no result.json under {root}; finished runs write one.", file=sys.stderr)
        return 2
    rows.sort(key=lambda r: r["F"] if r["direction"] == "minimize" else -r["F"])
    lines = ["| run | F | +- SE | steps | stop | total s | s/step |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['F']:.6g} | {r['F_se']:.2g} | {r['steps']} | {r['stop']} | {r['seconds']:.1f} | "
                     f"{(r['step_s'] or float('nan')):.3f} |")
    table = "\n".join(lines)
    write_atomic(root / "summary.md", f"Objective: {rows[0]['objective']} ({rows[0]['direction']}); best first.\n\n{table}\n")
    write_atomic(root / "summary.json", json.dumps(rows, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.5 * len(rows) + 1.5))
    y = np.arange(len(rows))
    ax.errorbar([r["F"] for r in rows], y, xerr=[2 * r["F_se"] for r in rows], fmt="o")
    ax.set_yticks(y, [r["run"] for r in rows], fontsize=8)
    ax.set_xlabel(f"final {rows[0]['objective']} (+- 2 SE)")
    fig.tight_layout()
    fig.savefig(root / "summary.png", dpi=110)
    print(table)
    print(f"-> {root / 'summary.md'}, summary.json, summary.png")
    return 0
