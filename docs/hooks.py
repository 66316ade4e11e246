"""mkdocs hooks: the CLI reference page is generated from conf/ at build time (so it cannot go
stale), and the benchmark figures are served from experiments/results/ (their one copy)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ["seed_gradient.png", "seed_gradient_pymc.png", "warm_vs_cold.png", "active_learning.png", "hsgp_crossover.png",
           "design_compare.png"]


def _generator():
    spec = importlib.util.spec_from_file_location("gen_cli_reference", ROOT / "docs" / "gen_cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def on_files(files, config):
    files.append(File.generated(config, "reference/cli.md", content=_generator().page()))
    for name in FIGURES:
        files.append(File.generated(config, f"figures/{name}", abs_src_path=str(ROOT / "experiments" / "results" / name)))
    return files
