"""Sweeps through Hydra's launchers: the joblib launcher runs jobs in parallel processes and
every job writes its result (the Slurm example config is documented in README)."""

import json
import os
import subprocess
import sys

import numpy as np

CHEAP = ["sampler.rel_se=0", "sampler.num_samples=1024", "sampler.adapt_samples=512", "sampler.pilot_iters=3"]


def test_joblib_launcher_sweep_writes_every_job_and_matches_a_single_run(tmp_path, monkeypatch, session_cache_base):
    """Both jobs of a 2-job joblib sweep write their result, and the job with seed=1 equals the
    single run with seed=1 bit for bit. The single run goes first, in this process (the CLI's code
    path without another process start), and writes its programs to the session's compile cache
    (tests/conftest.py), which the sweep's jobs then load instead of each compiling them again."""
    from inprocess import placement

    monkeypatch.setenv("PLACEMENT_RAW_STDERR", "1")
    monkeypatch.setenv("PLACEMENT_CACHE", str(session_cache_base))
    single = tmp_path / "single"
    res = placement("gradient", "seed=1", f"hydra.run.dir={single}", *CHEAP)
    assert res.code == 0, res.show()

    from inprocess import one_thread_xla_flags

    env = dict(os.environ, PLACEMENT_CACHE=str(session_cache_base), XLA_FLAGS=one_thread_xla_flags())
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "placement.cli", "gradient", "-m", "seed=0,1", "hydra/launcher=joblib",
           "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}", *CHEAP]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    results = {}
    for i in (0, 1):
        seed = [ln for ln in (sweep / str(i) / ".hydra" / "overrides.yaml").read_text().splitlines() if "seed=" in ln]
        results[seed[0].split("seed=")[1]] = sweep / str(i)
        assert (sweep / str(i) / "gradient.json").exists()
    assert sorted(results) == ["0", "1"]
    # a job of the sweep is the same computation as the single run with that seed
    a = json.loads((results["1"] / "gradient.json").read_text())
    b = json.loads((single / "gradient.json").read_text())
    np.testing.assert_array_equal(a["grad"], b["grad"])
