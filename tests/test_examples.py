"""Every example runs end to end at small settings (PLACEMENT_EXAMPLE_SMALL=1) and opens as
a notebook (jupytext percent format)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def test_there_are_the_three_examples():
    assert {p.stem for p in EXAMPLES} == {"sensor_placement", "sequential_suggest", "sweep_and_summarize"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_is_a_notebook(path):
    jupytext = pytest.importorskip("jupytext")
    nb = jupytext.read(path)
    kinds = [c.cell_type for c in nb.cells]
    assert kinds.count("markdown") >= 2 and kinds.count("code") >= 3


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs(path, tmp_path, session_cache_base):
    # the session's compile cache (tests/conftest.py): an example's outcome does not depend on a cold one
    env = dict(os.environ, PLACEMENT_EXAMPLE_SMALL="1", MPLBACKEND="Agg", PLACEMENT_CACHE=str(session_cache_base))
    env.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    env.setdefault("OMP_NUM_THREADS", "1")
    done = subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Traceback" not in done.stderr
    if path.stem == "sensor_placement":
        assert "trusted: True" in done.stdout and (tmp_path / "sensor_placement.png").exists()
    if path.stem == "sequential_suggest":
        import pandas as pd

        assert len(pd.read_csv(tmp_path / "measurements.csv")) == 4 + 2 * 2
    if path.stem == "sweep_and_summarize":
        assert len(list((tmp_path / "sweep").rglob("posterior.nc"))) == 2
        assert (tmp_path / "sweep" / "summary.md").exists()
