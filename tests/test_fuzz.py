"""Fuzzing ``placement suggest`` with malformed tables and overrides.

In process (hypothesis, hundreds of cases): every malformed request is rejected by the
same pre-flight the command line runs (read_table, SuggestConfig, prepare) with a
PlacementError carrying one line that names the problem; nothing else may escape, and
whatever passes is a valid request. Through the command line (a fixed random sample):
exit code 2, one ``error:`` line, no traceback and no output folder.
"""

import os
import random
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from placement.errors import PlacementError
from placement.suggest import SuggestConfig, prepare, read_table

CELLS = ["0", "1", "2.5", "-3", "1e3", "0.25", "", "nan", "NaN", "inf", "-inf", "abc", "1e999", " ", "1,5", '"7"', "0x10",
         "TRUE", "None"]
NAMES = ["x", "y", "a", "b", "", "x", "1", "y y"]


@st.composite
def tables(draw):
    kind = draw(st.sampled_from(["grid", "grid", "grid", "ragged", "junk", "empty", "header_only", "dupes"]))
    if kind == "empty":
        return b""
    if kind == "junk":
        return draw(st.binary(min_size=1, max_size=200))
    cols = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=4))
    lines = [",".join(cols)]
    if kind == "header_only":
        return (lines[0] + "\n").encode()
    nrows = draw(st.integers(0, 6))
    for _ in range(nrows):
        width = len(cols) if kind != "ragged" else draw(st.integers(0, len(cols) + 2))
        lines.append(",".join(draw(st.sampled_from(CELLS)) for _ in range(width)))
    if kind == "dupes" and nrows:
        lines.append(lines[-1])
    return ("\n".join(lines) + "\n").encode()


BAD_NUMBERS = [0, -1, 2.5, "abc", None, float("nan"), float("inf"), True]
overrides = st.fixed_dictionaries({}, optional={
    "k": st.sampled_from([1, 3] + BAD_NUMBERS),
    "steps": st.sampled_from([10] + BAD_NUMBERS),
    "grid": st.sampled_from([8, 1] + BAD_NUMBERS),
    "learning_rate": st.sampled_from([0.01, 0, -0.1, "fast", float("nan")]),
    "criterion": st.sampled_from(["integrated_variance", "best", ""]),
    "kernel": st.sampled_from(["matern52", "matern99"]),
    "sampler": st.sampled_from(["bayes", "map", "nuts"]),
})
bounds_st = st.one_of(st.none(), st.sampled_from([[[0, 1]], [[1, 0]], [[0, "a"]], [[0]], 3, [[0, 1], [0, 1]],
                                                  [[float("nan"), 1]], [[-1e9, 1e9]], "[[0,1]]"]))


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=tables(), opts=overrides, bounds=bounds_st,
       x_columns=st.one_of(st.none(), st.lists(st.sampled_from(NAMES), min_size=1, max_size=2)),
       y_column=st.sampled_from(["y", "a", "zz"]))
def test_malformed_requests_get_one_clear_error(tmp_path_factory, data, opts, bounds, x_columns, y_column):
    path = tmp_path_factory.mktemp("fuzz") / "d.csv"
    path.write_bytes(data)
    try:
        X, y, names = read_table(path, x_columns, y_column)
        cfg = SuggestConfig(**opts)
        b, Xn, yn, _ = prepare(X, y, bounds, cfg)
    except PlacementError as e:
        msg = str(e)
        assert msg and "\n" not in msg.strip() and len(msg) < 600, msg
        return
    # whatever passed is a valid request
    assert X.ndim == 2 and len(y) == len(X) >= 2 and np.isfinite(X).all() and np.isfinite(y).all()
    assert len(np.unique(X, axis=0)) == len(X)
    assert (Xn >= 0).all() and (Xn <= 1).all() and np.all(b[:, 0] < b[:, 1])
    assert isinstance(cfg.k, int) and cfg.k >= 1 and cfg.steps >= 1 and cfg.learning_rate > 0


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


BAD_OVERRIDES = [["k=0"], ["k=abc"], ["k=2.5"], ["bounds=[[2,1]]"], ["bounds=7"], ["bounds=[[0,a]]"],
                 ["bounds=[[0.5,1]]"], ["search.steps=-3"], ["search.learning_rate=0"], ["search.grid=1"],
                 ["search.num_hyper=0"], ["criterion=best"], ["x_columns=[nope]"], ["y_column=zz"], ["seed=-1"]]
BAD_CELLS = ["", "nan", "NaN", "inf", "-inf", "abc", "1e999", "None", "0x10"]
DEFECTS = ["no_y", "bad_cell", "one_row", "duplicate_row", "empty", "header_only"]
GOOD = "x,y\n0,1\n1,2\n2,0\n"


def _bad_table(rng, defect):
    """A random table with one defect the pre-flight must reject."""
    if defect == "empty":
        return ""
    cols = rng.sample(["x", "a", "b"], rng.randint(1, 2)) + ([] if defect == "no_y" else ["y"])
    rng.shuffle(cols)
    nrows = {"one_row": 1, "header_only": 0}.get(defect, rng.randint(2, 4))
    rows = [[str(rng.randint(-50, 50) + 0.5 * i) for _ in cols] for i in range(nrows)]
    if defect == "bad_cell":
        rows[rng.randrange(nrows)][rng.randrange(len(cols))] = rng.choice(BAD_CELLS)
    if defect == "duplicate_row":
        rows.append(list(rows[rng.randrange(nrows)]))
    return "\n".join([",".join(cols)] + [",".join(r) for r in rows]) + "\n"


def _cli_cases(seed=5):
    """A fixed random sample of requests the command line must reject: a valid table with one
    bad override (4 distinct), a table with one defect and no override (3 distinct defects),
    and a data file that does not exist."""
    rng = random.Random(seed)
    cases = [(GOOD, o) for o in rng.sample(BAD_OVERRIDES, 4)]
    cases += [(_bad_table(rng, d), []) for d in rng.sample(DEFECTS, 3)]
    return cases + [(GOOD, ["data=/no/such/file.csv"])]


@pytest.mark.parametrize("text,extra", _cli_cases())
def test_cli_rejects_fuzzed_input_cleanly(tmp_path, text, extra):
    (tmp_path / "d.csv").write_text(text)
    out = tmp_path / "out"
    env = dict(os.environ, PLACEMENT_CACHE=str(tmp_path.parent / "jaxcache"))
    args = [f"data={tmp_path / 'd.csv'}", *extra] if not any(e.startswith("data=") for e in extra) else extra
    quick = [o for o in ("search.restarts=1", "search.steps=5") if o.split("=")[0] not in " ".join(extra)]
    r = subprocess.run([sys.executable, "-m", "placement.cli", "suggest", f"hydra.run.dir={out}", *quick, *args],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert r.returncode == 2, f"exit {r.returncode} for {extra} on {text!r}: {r.stderr[-2000:]}"
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stderr.strip().startswith("error:"), r.stderr[-2000:]
    assert len([ln for ln in r.stderr.splitlines() if ln.startswith("error:")]) == 1, r.stderr[-2000:]
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))
