"""Batch suggestions: the criteria's algebra, the CLI outputs, and clear errors."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import placement  # noqa: F401
from placement import gpjax
from placement.kernels import KERNELS
from placement.suggest import grid_points, make_criterion, suggest


@pytest.mark.parametrize("name", ["matern12", "matern32", "matern52", "expquad", "ratquad"])
def test_jax_kernels_match_the_pymc_kernels(name):
    X = np.random.default_rng(0).uniform(0, 2, (5, 2))
    ls = np.array([0.7, 1.3])
    ours = np.asarray(gpjax.kernel_matrix(name, jnp.asarray(X), jnp.asarray(X), jnp.asarray(ls), 1.5))
    ref = 1.5**2 * KERNELS[name](2, ls=ls)(X).eval()
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)


def _setup(M, seed=0):
    rng = np.random.default_rng(seed)
    Xn = rng.uniform(0, 1, (6, 1))
    yn = np.sin(6 * Xn[:, 0])
    hyper = (rng.uniform(0.2, 0.4, (M, 1)), rng.uniform(0.8, 1.2, M), rng.uniform(0.05, 0.2, M))
    z = jnp.asarray(rng.normal(size=(8, 2)))
    return Xn, yn, grid_points(1, 64), hyper, z


def test_expected_total_variance_reduces_to_integrated_variance_for_one_hyperparameter_draw():
    Xn, yn, G, hyper, z = _setup(M=1)
    etv, etv_now = make_criterion("expected_total_variance", "matern52", Xn, yn, G, hyper, z)
    iv, iv_now = make_criterion("integrated_variance", "matern52", Xn, yn, G, hyper, z)
    B = jnp.asarray([[0.1], [0.8]])
    assert float(etv(B)) == pytest.approx(float(iv(B)), rel=1e-9)
    assert float(etv_now()) == pytest.approx(float(iv_now()), rel=1e-9)
    assert float(iv(B)) < float(iv_now())


def test_expected_total_variance_counts_hyperparameter_uncertainty():
    Xn, yn, G, hyper, z = _setup(M=8)
    etv, etv_now = make_criterion("expected_total_variance", "matern52", Xn, yn, G, hyper, z)
    iv, iv_now = make_criterion("integrated_variance", "matern52", Xn, yn, G, hyper, z)
    assert float(etv_now()) > float(iv_now())  # the between-draws term is positive
    B = jnp.asarray([[0.1], [0.8]])
    g = np.asarray(jax.grad(etv)(B))
    h = 1e-6
    fd = [(float(etv(B + h * e)) - float(etv(B - h * e))) / (2 * h) for e in jnp.eye(2)[:, :, None]]
    np.testing.assert_allclose(g.ravel(), fd, rtol=1e-4, atol=1e-8)


def test_python_api_returns_a_batch_inside_the_bounds():
    rng = np.random.default_rng(1)
    x = np.sort(rng.uniform(0, 10, 7))
    df = pd.DataFrame({"x": x, "y": np.sin(x)})
    out = suggest(df, k=3, bounds=[[0, 10]], restarts=2, steps=40, num_hyper=8, num_fantasies=4, grid=64)
    assert list(out.columns[:3]) == ["x", "pred_mean", "pred_sd"]
    assert len(out) == 3 and out["x"].between(0, 10).all()
    assert len(np.unique(np.round(out["x"], 3))) == 3  # a batch, not one point three times
    assert (out["criterion_after"] < out["criterion_before"]).all()


def run(args, tmp_path):
    env = dict(os.environ, PLACEMENT_CACHE=str(tmp_path.parent / "jaxcache"))
    return subprocess.run([sys.executable, "-m", "placement.cli", "suggest", *args], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path, env=env)


FAST = ["search.restarts=2", "search.steps=40", "search.num_hyper=8", "search.num_fantasies=4", "search.grid=64"]


def test_cli_suggest_2d(tmp_path):
    rng = np.random.default_rng(2)
    X = rng.uniform(0, 1, (9, 2))
    pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "y": np.cos(3 * X[:, 0]) + X[:, 1]}).to_csv(tmp_path / "d.csv", index=False)
    out = tmp_path / "out"
    r = run([f"data={tmp_path / 'd.csv'}", "k=2", f"hydra.run.dir={out}", *FAST], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    s = pd.read_csv(out / "suggestions.csv")
    assert list(s.columns[:4]) == ["a", "b", "pred_mean", "pred_sd"] and len(s) == 2
    assert ((s[["a", "b"]] >= X.min(0) - 1e-9) & (s[["a", "b"]] <= X.max(0) + 1e-9)).all().all()
    assert (out / "suggestions.png").exists() and json.loads((out / "suggest.json").read_text())["criterion"]


BAD = [
    ("missing.csv", None, [], "does not exist"),
    ("d.csv", "x,z\n1,2\n3,4\n", [], "no column 'y'"),
    ("d.csv", "x,y\n1,2\n,4\n3,5\n", [], "NaN, empty or infinite"),
    ("d.csv", "x,y\n1,2\n1,4\n3,5\n", [], "duplicate input rows"),
    ("d.csv", "x,y\n1,2\n", [], "at least two"),
    ("d.csv", "x,y\n1,2\n2,3\n3,5\n", ["k=0"], "k must be at least 1"),
    ("d.csv", "x,y\n1,2\n2,3\n3,5\n", ["bounds=[[3,1]]"], "lo < hi"),
    ("d.csv", "x,y\n1,2\n2,3\n3,5\n", ["bounds=[[1.5,3]]"], "outside the given bounds"),
    ("d.csv", "x,y\n1,2\n2,3\n3,5\n", ["x_columns=[q]"], "lacks input columns"),
    ("d.csv", "x,y\n1,a\n2,3\n3,5\n", [], "numbers only"),
    ("d.csv", "", [], "cannot read"),
    ("d.csv", "x,y\n1,2\n2,3\n3,5\n", ["criterion=best"], "unknown criterion"),
]


def _preflight(path, extra):
    """The checks the CLI runs before any work, called in process with the same overrides."""
    import yaml

    from placement.suggest import SuggestConfig, prepare, read_table

    kw = {k: yaml.safe_load(v) for k, v in (e.split("=", 1) for e in extra)}
    X, y, _ = read_table(path, kw.pop("x_columns", None), kw.pop("y_column", "y"))
    prepare(X, y, kw.pop("bounds", None), SuggestConfig(**kw))


@pytest.mark.parametrize("fname,content,extra,message", BAD)
def test_suggest_bad_input_is_caught_before_any_work(tmp_path, fname, content, extra, message):
    from placement.errors import PlacementError

    if content is not None:
        (tmp_path / fname).write_text(content)
    with pytest.raises(PlacementError, match=message.replace("(", r"\(")):
        _preflight(tmp_path / fname, extra)


@pytest.mark.parametrize("fname,content,extra,message", [BAD[0], BAD[2], BAD[5], BAD[7]])
def test_cli_suggest_bad_input(tmp_path, fname, content, extra, message):
    if content is not None:
        (tmp_path / fname).write_text(content)
    out = tmp_path / "out"
    r = run([f"data={tmp_path / fname}", f"hydra.run.dir={out}", *FAST, *extra], tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    assert message in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not out.exists()


def test_map_mode_suggests_from_one_hyperparameter_setting():
    rng = np.random.default_rng(3)
    x = np.sort(rng.uniform(0, 10, 7))
    out = suggest(pd.DataFrame({"x": x, "y": np.sin(x)}), k=2, bounds=[[0, 10]], sampler="map",
                  restarts=2, steps=40, num_fantasies=4, grid=64)
    ell, eta, sigma = out.attrs["info"]["hyper"]
    assert ell.shape == (1, 1) and len(out) == 2 and out["x"].between(0, 10).all()


def test_nuts_hyperparameters_agree_with_importance_sampling():
    """sampler=nuts draws the same hyperparameter posterior as the default importance sampler:
    the mixture predictive on a grid agrees within Monte Carlo noise."""
    from placement.suggest import hyper_draws, mixture_predictive

    rng = np.random.default_rng(4)
    Xn = np.sort(rng.uniform(0, 1, (8, 1)), axis=0)
    yn = np.sin(6 * Xn[:, 0])
    yn = (yn - yn.mean()) / yn.std()
    G = np.linspace(0, 1, 50)[:, None]
    preds = {}
    for s in ("bayes", "nuts"):
        ell, eta, sigma, ess = hyper_draws(Xn, yn, "matern52", 64, 0, s)
        assert ell.shape == (64, 1) and ess > 50
        preds[s] = mixture_predictive("matern52", Xn, yn, G, (ell, eta, sigma))
    np.testing.assert_allclose(preds["nuts"][0], preds["bayes"][0], atol=0.1)
    np.testing.assert_allclose(preds["nuts"][1], preds["bayes"][1], atol=0.1, rtol=0.25)
