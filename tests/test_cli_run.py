"""``placement run`` end to end, in real processes: the output files, a run killed by SIGTERM,
SIGINT or SIGKILL and resumed, and fresh runs with the same seed repeating each other bit for bit.

Every CLI process here pays the imports, the model export and loading its programs from the
compile cache (~15-20 s on the suite's machine; a step is ~0.1 s), so the tests share one
uninterrupted reference run (a module fixture): its files are checked as the run's outputs, and
the killed-and-resumed run, which starts as a second fresh run with the same seed (no
``resume=true``), must end bit-identical to it, every row of its trajectory included.
(``placement run -m`` with ``summarize``, and a refused second run into a used folder, are
tested in process in test_paths.py.)
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest


def run(args, tmp_path):
    env = dict(os.environ, PLACEMENT_CACHE=str(tmp_path.parent / "jaxcache"))
    return subprocess.run([sys.executable, "-m", "placement.cli", *args], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path, env=env)

# plots on: the reference run's outputs are checked below; steps=20 at ~0.1 s a step leaves the
# kill plan below a margin of many steps before the run could end
ARGS = ["run", "steps=20", "seed=4", "sampler.num_samples=2048", "sampler.adapt_samples=1024", "sampler.pilot_iters=4",
        "plots=true"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run of ARGS: its folder."""
    tmp = tmp_path_factory.mktemp("reference")
    out = tmp / "run"
    r = run([*ARGS, f"hydra.run.dir={out}"], tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_run_writes_trajectory_result_and_plots(reference):
    out = reference
    rows = list(csv.DictReader((out / "trajectory.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(20))
    for key in ["F", "F_se", "grad_norm", "x0", "x9", "rhat_max", "ess_bulk_min", "divergences", "step_seconds"]:
        assert key in rows[0]
    res = json.loads((out / "result.json").read_text())
    assert res["steps"] == 20 and len(res["X"]) == 10 and "pymc" in res["versions"]
    assert res["settings"]["objective"]["name"] == "integrated_variance"
    assert res["versions"]["jax"] == "0.9.2" and res["settings"]["seed"] == 4
    assert res["settings"]["sampler"]["num_samples"] == 2048  # the resolved config, overrides included
    assert all(0.0 <= x <= 10.0 for x in res["X"])
    best = res["best"]  # the best trusted step: its F is that row's of trajectory.csv
    assert len(best["X"]) == 10 and best["F"] == min(float(r["F"]) for r in rows)
    assert best["X"] == [float(rows[best["step"]][f"x{i}"]) for i in range(10)]
    for png in ["points.png", "objective.png", "predictive.png", "config.yaml"]:
        assert (out / png).exists(), png


def _wait_rows(path, rows, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and len(path.read_text().splitlines()) > rows:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} never reached {rows} rows")


def _numbers(path):
    """The trajectory's lines without the wall-time column."""
    lines = path.read_text().splitlines()
    idx = lines[0].split(",").index("step_seconds")
    return [",".join(c for i, c in enumerate(line.split(",")) if i != idx) for line in lines]


def test_run_survives_sigterm_sigint_and_sigkill_at_any_moment_and_repeats_a_fresh_run(tmp_path, reference):
    """One run killed four times (SIGTERM during start-up, then SIGINT, SIGTERM and SIGKILL
    mid-run at staggered moments), resumed after each: every checkpoint left behind is
    readable, nothing half-written appears, and the final X and F equal an uninterrupted run's.

    Reproducibility too: the run's first real start (the one stopped by SIGINT) is a plain fresh
    run (no resume=true, no checkpoint yet) with the reference's overrides and seed, and the
    finished run's trajectory must equal the reference's in every number but the wall time,
    and its X, F and F_se bit for bit: so a second fresh run repeats the first (its first
    steps are its own), and resuming changes nothing after them."""
    from placement.loop import load_checkpoint
    from inprocess import default_sigint

    part = tmp_path / "part"
    env = dict(os.environ, PLACEMENT_CACHE=str(tmp_path.parent / "jaxcache"))
    traj = part / "trajectory.csv"
    plan = [(signal.SIGTERM, None, 1.0), (signal.SIGINT, 2, 0.05), (signal.SIGTERM, 5, 0.13), (signal.SIGKILL, 8, 0.29)]
    survived = 0
    for sig, after_rows, delay in plan:
        # the SIGINT start is the fresh run: the start-up SIGTERM came before any step was saved
        resume = [] if sig == signal.SIGINT else ["resume=true"]
        if sig == signal.SIGINT:
            assert not (part / "checkpoint.pkl").exists()
        p = subprocess.Popen([sys.executable, "-m", "placement.cli", *ARGS, f"hydra.run.dir={part}", *resume],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=default_sigint)
        if after_rows is not None:
            _wait_rows(traj, after_rows)
        time.sleep(delay)
        p.send_signal(sig)
        _, err = p.communicate(timeout=120)
        assert p.returncode != 0, "the run finished before the signal; make the plan earlier"
        if sig == signal.SIGINT:
            assert p.returncode == 130 and "resume=true" in err, err[-2000:]
        elif sig == signal.SIGTERM and after_rows is not None:
            assert p.returncode == 143 and "resume=true" in err, err[-2000:]
        assert "Traceback" not in err, err[-3000:]
        assert not (part / "result.json").exists()
        if sig != signal.SIGKILL:  # SIGKILL can leave a temporary file; the next start removes it
            assert not list(part.glob(".*.tmp"))
        if (part / "checkpoint.pkl").exists():
            st, _ = load_checkpoint(part / "checkpoint.pkl")
            assert len(traj.read_text().splitlines()) - 1 >= st.step - 1  # the table is never behind by more than the step in flight
        survived += 1
    r = run([*ARGS, f"hydra.run.dir={part}", "resume=true"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    a = json.loads((reference / "result.json").read_text())
    b = json.loads((part / "result.json").read_text())
    assert survived == 4 and not list(part.glob(".*.tmp"))
    assert a["X"] == b["X"] and a["F"] == b["F"] and a["F_se"] == b["F_se"] and b["steps"] == 20
    ta, tb = _numbers(reference / "trajectory.csv"), _numbers(traj)
    assert len(ta) == 21 and ta == tb  # every number but the wall time
    assert {k: v for k, v in a["settings"].items() if k != "resume"} == {
        k: v for k, v in b["settings"].items() if k != "resume"}
