"""``target``: the points where the predictions matter. The variance criteria average over them
instead of over the box; checked against the posterior variance computed apart."""

import json

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import placement  # noqa: F401
from placement import gpjax
from placement.errors import PlacementError
from placement.suggest import SuggestConfig, Suggester, suggest, suggest_arrays

FAST = dict(restarts=2, steps=40, num_hyper=8, num_fantasies=4, grid=64)


def _data(n=7, seed=1):
    x = np.sort(np.random.default_rng(seed).uniform(0, 10, n))
    return x[:, None], np.sin(x)


def _variance_at(info, T):
    """Posterior variance of f at T (original units) under the request's one (MAP) draw,
    computed from the request's normalised data by gpjax.posterior."""
    b = info["bounds"]
    Tn = (np.asarray(T, dtype=float) - b[:, 0]) / (b[:, 1] - b[:, 0])
    ell, eta, sigma = info["hyper"]
    assert ell.shape[0] == 1  # sampler=map: one draw
    _, var = gpjax.posterior(info["kernel"].name, jnp.asarray(info["Xn"]), jnp.asarray(info["yn"]), jnp.asarray(Tn),
                             jnp.asarray(ell[0]), eta[0], sigma[0])
    return np.asarray(var)


def test_the_criterion_averages_the_variance_over_the_target_points():
    """integrated_variance with one hyperparameter draw: its value now is the mean posterior
    variance over the target points exactly, and the batch goes where they are."""
    X, y = _data()
    T = np.linspace(6.0, 10.0, 9)[:, None]
    cfg = SuggestConfig(k=2, criterion="integrated_variance", sampler="map", progress="off", **FAST)
    pts, info = suggest_arrays(X, y, [[0, 10]], cfg, target=T)
    assert info["target_points"] == len(T)
    assert info["before"] == pytest.approx(float(np.mean(_variance_at(info, T))), rel=1e-6)
    assert np.all(pts[:, 0] > 5.5), pts.ravel()  # the variance that counts is on [6, 10]
    # without target the box is averaged over: another value, and the batch is not held to [6, 10]
    box_pts, box = suggest_arrays(X, y, [[0, 10]], cfg)
    assert box["target_points"] is None
    assert box["before"] == pytest.approx(float(np.mean(_variance_at(box, np.linspace(0, 10, 64)[:, None]))), rel=1e-6)
    assert abs(box["before"] - info["before"]) > 0.05 * box["before"]
    assert np.any(box_pts[:, 0] < 5.5), box_pts.ravel()


def test_more_target_points_than_the_grid_are_subsampled_by_seed():
    X, y = _data()
    T = np.linspace(0.0, 10.0, 500)[:, None]
    cfg = SuggestConfig(k=1, criterion="integrated_variance", sampler="map", progress="off", **FAST)
    _, a = suggest_arrays(X, y, [[0, 10]], cfg, target=T)
    _, b = suggest_arrays(X, y, [[0, 10]], cfg, target=T)
    assert a["target_points"] == FAST["grid"] and a["before"] == b["before"]


def test_api_and_ask_tell_take_a_target_table_by_column_name():
    X, y = _data()
    df = pd.DataFrame({"x": X[:, 0], "y": y})
    T = pd.DataFrame({"note": np.arange(5), "x": np.linspace(7.0, 9.0, 5)})  # input column found by name
    out = suggest(df, k=2, bounds=[[0, 10]], sampler="map", criterion="integrated_variance", target=T, **FAST)
    assert np.all(out["x"].to_numpy() > 5.5), out
    s = Suggester(df, bounds=[[0, 10]], target=T, sampler="map", criterion="integrated_variance", **FAST)
    assert np.all(s.ask(2)["x"].to_numpy() > 5.5)


@pytest.mark.parametrize("target,needle", [
    (np.array([[11.0], [5.0]]), r"1 target point\(s\) lie outside the bounds \[\[0.0, 10.0\]\] \(e.g. \[\[11.0\]\]\)"),
    (np.zeros((0, 1)), "target holds no points"),
    (np.array([[np.nan]]), "target points must be finite"),
    (np.zeros((3, 2)), "target points need 1 input column"),
])
def test_bad_target_points_give_one_clear_error(target, needle):
    X, y = _data()
    cfg = SuggestConfig(k=1, sampler="map", progress="off", **FAST)
    with pytest.raises(PlacementError, match=needle):
        suggest_arrays(X, y, [[0, 10]], cfg, target=target)


def test_default_bounds_take_in_the_target_and_pending_points():
    """With no bounds the box is the range of the data and of the target and pending points,
    so sites beyond the measured range (the usual case: every site that could be measured)
    need no bounds of their own; given bounds still refuse them."""
    X, y = _data()
    df = pd.DataFrame({"x": X[:, 0], "y": y})
    lo, hi = X.min() - 2.0, X.max() + 1.0
    T = np.linspace(lo, hi, 7)[:, None]
    cfg = SuggestConfig(k=1, sampler="map", progress="off", **FAST)
    _, info = suggest_arrays(X, y, None, cfg, pending=np.array([[X.max() + 0.5]]), target=T)
    assert np.allclose(info["bounds"], [[lo, hi]])
    assert np.allclose(Suggester(df, target=T, sampler="map", **FAST).bounds, [[lo, hi]])
    with pytest.raises(PlacementError, match="outside the bounds"):
        suggest_arrays(X, y, [[X.min(), X.max()]], cfg, target=T)


def test_cli_target_file(tmp_path, monkeypatch):
    from inprocess import assert_clear_error, assert_ok
    from inprocess import placement as cli

    monkeypatch.setenv("PLACEMENT_RAW_STDERR", "1")
    X, y = _data()
    pd.DataFrame({"x": X[:, 0], "y": y}).to_csv(tmp_path / "m.csv", index=False)
    pd.DataFrame({"x": np.linspace(6.0, 10.0, 9)}).to_csv(tmp_path / "sites.csv", index=False)
    small = [f"search.{k}={v}" for k, v in FAST.items()]
    out = tmp_path / "out"
    r = cli("suggest", f"data={tmp_path / 'm.csv'}", f"target={tmp_path / 'sites.csv'}", "k=2", "bounds=[[0,10]]",
            "sampler=map", "criterion=integrated_variance", f"hydra.run.dir={out}", *small)
    assert_ok(r)
    res = json.loads((out / "suggest.json").read_text())
    assert res["target_points"] == 9 and all(p[0] > 5.5 for p in res["suggestions"])
    r = cli("suggest", f"data={tmp_path / 'm.csv'}", f"target={tmp_path / 'nope.csv'}", f"hydra.run.dir={tmp_path / 'o2'}")
    assert_clear_error(r, "target file")
    assert not (tmp_path / "o2").exists()
