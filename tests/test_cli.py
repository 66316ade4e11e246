"""The command line end to end: output files, overrides, and clear errors for bad input."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAST = ["sampler.num_samples=4096", "sampler.pilot_iters=4", "sampler.rel_se=0"]


def run(args, tmp_path, env_extra=None):
    env = dict(os.environ, PLACEMENT_CACHE=str(tmp_path.parent / "jaxcache"), **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "placement.cli", *args], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path, env=env)


def test_gradient_writes_json_and_table(tmp_path):
    out = tmp_path / "run"
    r = run(["gradient", f"hydra.run.dir={out}", "seed=3", *FAST], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "gradient.json").read_text())
    for key in ["X", "F", "F_se", "grad", "grad_se", "rhat_max", "ess_bulk_min", "divergences", "seconds"]:
        assert key in res
    assert len(res["grad"]) == len(res["grad_se"]) == 10
    assert res["F"] == pytest.approx(2.240215, abs=4 * res["F_se"] + 1e-6)
    assert "dF/dX" in r.stdout and "+- se" in r.stdout
    assert (out / ".hydra" / "config.yaml").exists()


def test_custom_model_and_design_override(tmp_path):
    (tmp_path / "mymodel.py").write_text(textwrap.dedent(
        """
        import numpy as np, pymc as pm
        def build_model(n=6):
            with pm.Model() as m:
                X = pm.Data("X", np.linspace(-1, 1, n))
                y = pm.Data("y", np.sin(np.linspace(-1, 1, n)))
                a = pm.Normal("a", 0, 1)
                pm.Normal("obs", a * X, 0.5, observed=y)
                pm.Deterministic("slope_sq", a ** 2)
            return m
        """))
    out = tmp_path / "run"
    r = run(["gradient", "problem=custom", "problem.builder=mymodel:build_model", "objective=custom", "objective.name=slope_sq",
             "sampler=quadrature", "sampler.points=31", f"hydra.run.dir={out}",
             "X=[-1.0,-0.5,0.0,0.2,0.6,1.0]"], tmp_path, {"PYTHONPATH": str(tmp_path)})
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "gradient.json").read_text())
    assert res["X"] == [-1.0, -0.5, 0.0, 0.2, 0.6, 1.0]
    # closed form: a | y ~ N(m, v), v = 1 / (1 + |X|^2/0.25), m = v X.y / 0.25; F = m^2 + v
    import numpy as np
    X = np.array(res["X"]); y = np.sin(np.linspace(-1, 1, 6))
    def F(X):
        v = 1 / (1 + X @ X / 0.25); m = v * (X @ y) / 0.25
        return m * m + v
    h = 1e-6
    fd = [(F(X + h * e) - F(X - h * e)) / (2 * h) for e in np.eye(6)]
    assert res["F"] == pytest.approx(F(X), rel=1e-6)
    np.testing.assert_allclose(res["grad"], fd, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "args,message",
    [
        (["X=[1,2,3]"], "X has shape (3,)"),
        (["X=[0,1,2,3,4,5,6,7,8,nan]"], "NaN or infinite"),
        (["problem=custom", "problem.builder=no_such_module:f", "objective=custom", "objective.name=f"], "cannot import module 'no_such_module'"),
        (["objective.name=not_there"], "no variable named 'not_there'"),
        (["problem.data=Xd"], "no pm.Data container named 'Xd'"),
    ],
)
def test_bad_input_gives_one_clear_error_and_no_output(tmp_path, args, message):
    out = tmp_path / "run"
    r = run(["gradient", f"hydra.run.dir={out}", *args], tmp_path)
    assert r.returncode != 0
    assert message in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert not out.exists()


@pytest.mark.parametrize("args,message", [(["kernel=matern99"], "matern99"), (["sampler.bogus=1"], "bogus"),
                                          (["nonsense_key=3"], "nonsense_key")])
def test_unknown_config_is_rejected(tmp_path, args, message):
    r = run(["gradient", f"hydra.run.dir={tmp_path / 'run'}", *args], tmp_path)
    assert r.returncode != 0 and message in r.stderr


def test_unknown_command(tmp_path):
    r = run(["frobnicate"], tmp_path)
    assert r.returncode == 2 and "unknown command" in r.stderr


RUN_FAST = ["sampler.num_samples=2048", "sampler.adapt_samples=1024", "sampler.pilot_iters=4", "plots=false"]


def test_run_writes_trajectory_result_and_plots(tmp_path):
    out = tmp_path / "run"
    r = run(["run", "steps=3", f"hydra.run.dir={out}", "sampler.num_samples=2048", "sampler.adapt_samples=1024"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    import csv
    rows = list(csv.DictReader((out / "trajectory.csv").open()))
    assert [int(r["step"]) for r in rows] == [0, 1, 2]
    for key in ["F", "F_se", "grad_norm", "x0", "x9", "rhat_max", "ess_bulk_min", "divergences", "step_seconds"]:
        assert key in rows[0]
    res = json.loads((out / "result.json").read_text())
    assert res["steps"] == 3 and len(res["X"]) == 10 and "pymc" in res["versions"]
    assert res["settings"]["objective"]["name"] == "integrated_variance"
    assert all(0.0 <= x <= 10.0 for x in res["X"])
    for png in ["points.png", "objective.png", "predictive.png", "config.yaml"]:
        assert (out / png).exists(), png


def _wait_rows(path, rows, timeout=300):
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and len(path.read_text().splitlines()) > rows:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} never reached {rows} rows")


def test_run_survives_sigterm_sigint_and_sigkill_at_any_moment(tmp_path):
    """One run killed four times (SIGTERM during start-up, then SIGINT, SIGTERM and SIGKILL
    mid-run at staggered moments), resumed after each: every checkpoint left behind is
    readable, nothing half-written appears, and the final X and F equal an uninterrupted run's."""
    import signal
    import time

    from placement.loop import load_checkpoint

    args = ["run", "steps=20", "seed=4", *RUN_FAST]
    full = tmp_path / "full"
    r = run([*args, f"hydra.run.dir={full}"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    part = tmp_path / "part"
    env = dict(os.environ, PLACEMENT_CACHE=str(tmp_path.parent / "jaxcache"))
    traj = part / "trajectory.csv"
    plan = [(signal.SIGTERM, None, 1.0), (signal.SIGINT, 2, 0.05), (signal.SIGTERM, 5, 0.13), (signal.SIGKILL, 8, 0.29)]
    survived = 0
    for sig, after_rows, delay in plan:
        p = subprocess.Popen([sys.executable, "-m", "placement.cli", *args, f"hydra.run.dir={part}", "resume=true"],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
    r = run([*args, f"hydra.run.dir={part}", "resume=true"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    a = json.loads((full / "result.json").read_text())
    b = json.loads((part / "result.json").read_text())
    assert survived == 4 and not list(part.glob(".*.tmp"))
    assert a["X"] == b["X"] and a["F"] == b["F"] and b["steps"] == 20
    # a second run into the same folder without resume is refused
    r = run(["run", "steps=6", f"hydra.run.dir={part}", *RUN_FAST], tmp_path)
    assert r.returncode == 2 and "resume=true" in r.stderr


def test_same_config_and_seed_give_bit_identical_runs(tmp_path):
    """Reproducibility: two fresh runs, same overrides and seed -> identical trajectory and result."""
    args = ["run", "steps=3", "seed=11", *RUN_FAST]
    outs = []
    for name in ("a", "b"):
        r = run([*args, f"hydra.run.dir={tmp_path / name}"], tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        outs.append(tmp_path / name)
    ta, tb = ((o / "trajectory.csv").read_text().splitlines() for o in outs)
    drop = lambda lines: [",".join(c for i, c in enumerate(l.split(",")) if i != idx) for l in lines]  # noqa: E731
    idx = ta[0].split(",").index("step_seconds")
    assert drop(ta) == drop(tb)  # every number but the wall time
    ra, rb = (json.loads((o / "result.json").read_text()) for o in outs)
    assert ra["X"] == rb["X"] and ra["F"] == rb["F"] and ra["F_se"] == rb["F_se"]
    assert ra["versions"]["jax"] == "0.9.2" and ra["settings"]["seed"] == 11
    assert ra["settings"]["sampler"]["num_samples"] == 2048  # the resolved config, overrides included


def test_multirun_sweep_and_summarize(tmp_path):
    sweep = tmp_path / "sweep"
    r = run(["run", "-m", "optimizer=adam,momentum", "steps=2", f"hydra.sweep.dir={sweep}", *RUN_FAST], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(list(sweep.rglob("result.json"))) == 2
    r = run(["summarize", str(sweep)], tmp_path)
    assert r.returncode == 0, r.stderr
    text = (sweep / "summary.md").read_text()
    assert "optimizer=adam" in text and "optimizer=momentum" in text
    assert (sweep / "summary.png").exists()
    r = run(["summarize", str(tmp_path / "nothing_here")], tmp_path)
    assert r.returncode == 2 and "not a folder" in r.stderr


@pytest.mark.parametrize("args,message", [
    (["constraints.lower=5.0"], "outside the bounds"),
    (["steps=0"], "steps must be at least 1"),
    (["optimizer=nadam"], "nadam"),
    (["objective.direction=sideways"], "minimize or maximize"),
])
def test_run_bad_input(tmp_path, args, message):
    out = tmp_path / "run"
    r = run(["run", f"hydra.run.dir={out}", "steps=2", *RUN_FAST, *args], tmp_path)
    assert r.returncode != 0 and message in r.stderr, r.stderr[-2000:]
    assert not (out / "result.json").exists()


def test_model_whose_data_shapes_disagree_gets_one_error(tmp_path):
    (tmp_path / "badshapes.py").write_text(textwrap.dedent(
        """
        import numpy as np, pymc as pm
        def build_model():
            with pm.Model() as m:
                X = pm.Data("X", np.linspace(-1, 1, 6))
                y = pm.Data("y", np.zeros(5))
                a = pm.Normal("a", 0, 1)
                pm.Normal("obs", a * X, 0.5, observed=y)
                pm.Deterministic("slope_sq", a ** 2)
            return m
        """))
    out = tmp_path / "run"
    r = run(["gradient", "problem=custom", "problem.builder=badshapes:build_model", "objective=custom",
             "objective.name=slope_sq", f"hydra.run.dir={out}"], tmp_path, {"PYTHONPATH": str(tmp_path)})
    assert r.returncode == 2, r.stderr[-2000:]
    assert "describe the same points" in r.stderr and "(6,)" in r.stderr and "(5,)" in r.stderr
    assert "Traceback" not in r.stderr and "ERROR" not in r.stderr
    assert not out.exists()
