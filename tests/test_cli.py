"""The command line end to end: ``placement gradient``'s output files, overrides, and clear errors
for bad input. ``placement run``'s outputs, interruption and reproducibility: test_cli_run.py.

Speed: the CLI runs in this process (``placement.cli.main``, tests/inprocess.py), so the imports
(~6 s of CPU per process) are paid once, not once per case. What only a real process shows is
tested in real processes: a whole stderr of one ``error:`` line (nothing else on it, import-time
warnings included) below in test_a_setting_a_sampler_refuses_is_one_clear_error; ``python -m
placement.cli gradient``'s table and a quiet terminal in test_quiet.py; interruption and
resume in test_cli_run.py; parallel sweeps in test_launchers.py."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from inprocess import placement

FAST = ["sampler.num_samples=4096", "sampler.pilot_iters=4", "sampler.rel_se=0"]


@pytest.fixture(scope="module", autouse=True)
def _cli_environment(tmp_path_factory):
    """One private compile cache for the module; Python's stderr left alone (the fd-2 filter of
    placement.runtime would replace sys.stderr in this process)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PLACEMENT_CACHE", str(tmp_path_factory.mktemp("jaxcache")))
        mp.setenv("PLACEMENT_RAW_STDERR", "1")
        yield


class Done:
    """What the tests read of a finished command (the names of subprocess.CompletedProcess)."""

    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run(args, tmp_path, path=None):
    """``placement ARGS`` in this process; ``path``: a folder importable for the command (a
    user's model module), as PYTHONPATH would make it."""
    with pytest.MonkeyPatch.context() as mp:
        if path is not None:
            mp.syspath_prepend(str(path))
        r = placement(*args)
    return Done(r.code, r.out, r.err)


def run_process(args, tmp_path):
    """``python -m placement.cli ARGS`` in a new process."""
    env = dict(os.environ, PLACEMENT_CACHE=str(tmp_path.parent / "jaxcache"))
    env.pop("PLACEMENT_RAW_STDERR", None)  # the CLI's own stderr handling, as a user gets it
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
             "sampler=quadrature", "sampler.points=33", f"hydra.run.dir={out}",
             "X=[-1.0,-0.5,0.0,0.2,0.6,1.0]"], tmp_path, path=tmp_path)
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


def test_a_setting_a_sampler_refuses_is_one_clear_error(tmp_path):
    """A config class rejecting its settings (inside Hydra's instantiate) is one error line,
    exit 2, no traceback and no output folder."""
    out = tmp_path / "run"
    r = run_process(["gradient", f"hydra.run.dir={out}", "sampler.num_samples=1000"], tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "power of two" in lines[0], r.stderr
    assert not out.exists()


def test_unknown_command(tmp_path):
    r = run(["frobnicate"], tmp_path)
    assert r.returncode == 2 and "unknown command" in r.stderr


RUN_FAST = ["sampler.num_samples=2048", "sampler.adapt_samples=1024", "sampler.pilot_iters=4", "plots=false"]


@pytest.mark.parametrize("args,message", [
    (["constraints.lower=5.0"], "outside the bounds"),
    (["steps=0"], "steps must be at least 1"),
    (["optimizer=nadam"], "optimizer is one of adam, momentum, rmsprop, sgd"),
    (["objective.direction=sideways"], "minimize or maximize"),
    (["constraints.min_spacing=5"], "the 10 free points do not fit"),
    (["stpes=3"], "unknown setting 'stpes'"),
    (["steps=abc"], "steps='abc' is not a number"),
    (["seed=[1,"], "no viable alternative"),
])
def test_run_bad_input(tmp_path, args, message):
    """One ``error:`` line, exit 2, no output; Hydra's own errors (an option or key that does
    not exist) included."""
    out = tmp_path / "run"
    r = run(["run", f"hydra.run.dir={out}", "steps=2", *RUN_FAST, *args], tmp_path)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr[-2000:]
    assert not out.exists()


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
             "objective.name=slope_sq", f"hydra.run.dir={out}"], tmp_path, path=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "describe the same points" in r.stderr and "(6,)" in r.stderr and "(5,)" in r.stderr
    assert "Traceback" not in r.stderr and "ERROR" not in r.stderr
    assert not out.exists()
