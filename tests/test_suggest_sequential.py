"""Pending points and ask/tell."""

import json

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import placement  # noqa: F401
from placement.errors import PlacementError
from placement.suggest import Suggester, crit_data, grid_points, make_criterion, suggest

FAST = dict(restarts=2, steps=40, num_hyper=8, num_fantasies=4, grid=64)


def _setup(M=3, seed=0):
    rng = np.random.default_rng(seed)
    Xn = rng.uniform(0, 1, (6, 1))
    yn = np.sin(6 * Xn[:, 0])
    hyper = (rng.uniform(0.2, 0.4, (M, 1)), rng.uniform(0.8, 1.2, M), rng.uniform(0.05, 0.2, M))
    return Xn, yn, grid_points(1, 32), hyper, rng.normal(size=(M, 2))


@pytest.mark.parametrize("kind", ["integrated_variance", "max_variance", "ek_variance"])
def test_pending_points_count_as_measured_for_the_variance_criteria(kind):
    """The variances do not depend on y, so conditioning on pending points P equals adding
    them to the data with any values."""
    Xn, yn, G, hyper, z = _setup()
    P, B = np.array([[0.33], [0.9]]), np.array([[0.1], [0.6]])
    with_p, now_p = make_criterion(kind, "matern52", Xn, yn, G, hyper, z, pending=P)
    joined, now_j = make_criterion(kind, "matern52", np.vstack([Xn, P]), np.r_[yn, 5.0, -3.0], G, hyper, z)
    plain, now_0 = make_criterion(kind, "matern52", Xn, yn, G, hyper, z)
    assert float(with_p(jnp.asarray(B))) == pytest.approx(float(joined(jnp.asarray(B))), rel=1e-9)
    assert float(now_p()) == pytest.approx(float(now_j()), rel=1e-9)
    assert float(now_p()) < 0.95 * float(now_0())


def test_pending_points_leave_each_draws_mean_in_place():
    """Kriging believer: each draw's mean at G is unchanged by the pending points."""
    Xn, yn, G, hyper, z = _setup()
    a = crit_data(Xn, yn, G, hyper, z, "matern52")
    b = crit_data(Xn, yn, G, hyper, z, "matern52", pending=np.array([[0.33], [0.9]]))
    np.testing.assert_allclose(np.asarray(b.mean_G), np.asarray(a.mean_G), rtol=1e-7, atol=1e-9)
    assert np.all(np.asarray(b.var_G) <= np.asarray(a.var_G) + 1e-12)
    assert np.max(np.asarray(a.var_G) - np.asarray(b.var_G)) > 1e-2  # ... while the variances fall


def _df(n=7, seed=1):
    x = np.sort(np.random.default_rng(seed).uniform(0, 10, n))
    return pd.DataFrame({"x": x, "y": np.sin(x)})


def test_suggest_avoids_pending_points_and_ask_tell_keeps_the_list():
    df = _df()
    first = suggest(df, k=2, bounds=[[0, 10]], sampler="map", criterion="integrated_variance", **FAST)
    again = suggest(df, k=2, bounds=[[0, 10]], sampler="map", criterion="integrated_variance", pending=first[["x"]],
                    **FAST)
    gap = np.abs(again["x"].to_numpy()[:, None] - first["x"].to_numpy()[None]).min()
    assert gap > 0.3, (first["x"].tolist(), again["x"].tolist())  # without pending it repeats the same batch
    s = Suggester(df, bounds=[[0, 10]], sampler="map", criterion="integrated_variance", **FAST)
    a = s.ask(2)
    np.testing.assert_allclose(a["x"], first["x"])
    assert len(s.pending) == 2
    s.tell(a[["x"]].iloc[:1], [0.5])
    assert len(s.pending) == 1 and len(s.state.y) == len(df) + 1
    assert s.pending["x"].iloc[0] == pytest.approx(a["x"].iloc[1])
    b = s.ask(1)
    assert np.abs(b["x"].iloc[0] - s.state.X[:, 0]).min() > 0.1 and len(s.pending) == 2
    with pytest.raises(PlacementError, match="^measured points need 1 input column"):  # named as what they are
        s.tell(np.zeros((1, 2)), [0.5])


def test_pending_points_are_checked():
    with pytest.raises(PlacementError, match="input column"):
        suggest(_df(), k=1, bounds=[[0, 10]], pending=np.zeros((2, 2)), **FAST)
    with pytest.raises(PlacementError, match="outside the bounds"):
        suggest(_df(), k=1, bounds=[[0, 10]], pending=[11.0], **FAST)
    with pytest.raises(PlacementError, match="does not exist"):
        suggest(_df(), k=1, bounds=[[0, 10]], pending="/no/such/file.csv", **FAST)


def test_cli_pending_file_and_kernel_options(tmp_path, monkeypatch):
    from inprocess import placement as run

    monkeypatch.setenv("PLACEMENT_CACHE", str(tmp_path.parent / "jaxcache"))
    monkeypatch.setenv("PLACEMENT_RAW_STDERR", "1")
    _df().to_csv(tmp_path / "d.csv", index=False)
    pd.DataFrame({"pred_mean": [0.0, 1.0], "x": [2.0, 7.5]}).to_csv(tmp_path / "p.csv", index=False)  # by name
    out = tmp_path / "out"
    r = run("suggest", f"data={tmp_path / 'd.csv'}", f"pending={tmp_path / 'p.csv'}", "k=2", "kernel=periodic",
            "kernel.period=6", "sampler=map", "criterion=integrated_variance", "bounds=[[0,10]]",
            f"hydra.run.dir={out}", "search.restarts=2", "search.steps=40", "search.grid=64")
    assert r.code == 0 and "Traceback" not in r.err, r.show()
    res = json.loads((out / "suggest.json").read_text())
    np.testing.assert_allclose(np.asarray(res["pending"]).ravel(), [2.0, 7.5])
    s = pd.read_csv(out / "suggestions.csv")
    assert list(s.columns) == ["x", "pred_mean", "pred_sd", "integrated_variance_before", "integrated_variance_after"]
    bad = run("suggest", f"data={tmp_path / 'd.csv'}", f"pending={tmp_path / 'nope.csv'}", f"hydra.run.dir={tmp_path / 'o2'}")
    assert bad.code == 2 and "pending file" in bad.err and not (tmp_path / "o2").exists()
