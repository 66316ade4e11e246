"""The Python API on a PyMC model in hand: numbers against the conjugate model's closed form,
the ArviZ posterior against the closed-form posterior, relocate against the command line
(one loop, one set of defaults), and one clear error per bad argument before any compilation."""

import json

import numpy as np
import pytest

import placement
from conftest import assert_within_se
from conjugate import build, closed_form, features_np
from inprocess import assert_ok
from inprocess import placement as cli
from placement import PlacementError

# small, fast settings of the CLI's run default (importance_run); the qmc sets need 32 x 2^k draws
SMALL = dict(num_samples=2048, adapt_samples=512, aim_samples=1024)
RUN = dict(steps=4, learning_rate=0.1, constraints={"lower": -3.0, "upper": 3.0}, sampler="importance_run", seed=0)


def posterior_moments(X, y, prior_sd=1.0, noise=0.5):
    """Closed-form posterior of the conjugate model's weights: mean m, covariance S."""
    Phi = np.asarray(features_np(np.asarray(X)))
    S = np.linalg.inv(np.eye(3) / prior_sd**2 + Phi.T @ Phi / noise**2)
    return S @ Phi.T @ np.asarray(y) / noise**2, S


@pytest.fixture(scope="module")
def model():
    return build()


@pytest.fixture(scope="module")
def est(model):
    return placement.gradient(model, objective="f", sampler="importance", seed=0, num_samples=4096, adapt_samples=1024,
                              rel_se=0.0)


@pytest.fixture(scope="module")
def run(model):
    return placement.relocate(model, objective="f", progress=False, **RUN, **SMALL)


def test_gradient_of_a_model_in_hand_matches_the_closed_form(model, est):
    F, g = closed_form(model["X"].get_value(), model["y"].get_value())
    assert est.trusted and est.warnings == []
    assert abs(est.F - F) <= 4 * est.F_se + 1e-9
    assert_within_se(est.grad, est.grad_se, g, se_cap=0.05)  # measured 0.02
    assert est.X.shape == (8,) and est.diagnostics["sampler"] == "importance"


def test_inference_data_is_the_posterior_behind_the_estimate(model, est, tmp_path):
    import arviz as az

    idata = est.to_inference_data(num_draws=4000)
    m, S = posterior_moments(model["X"].get_value(), model["y"].get_value())
    w = idata.posterior["w"].values.reshape(-1, 3)
    assert idata.posterior["w"].shape == (4, 1000, 3)
    ess = idata.sample_stats.attrs["ess_weights"]
    sd = np.sqrt(np.diag(S))
    # resampling adds the noise of 4000 equal-weight draws to that of the weighted draws
    tol = 4 * sd * np.sqrt(1 / ess + 1 / 4000)
    np.testing.assert_array_less(np.abs(w.mean(0) - m), tol)
    np.testing.assert_array_less(np.abs(w.std(0) / sd - 1), 4 * np.sqrt(1 / (2 * ess) + 1 / 8000) + 0.02)
    # f per draw averages to the estimate (same draws, resampled)
    f = idata.posterior["f"].values.ravel()
    assert abs(f.mean() - est.F) <= 4 * f.std() * np.sqrt(1 / ess + 1 / 4000)
    # weights and diagnostics
    W = idata.sample_stats["all_weights"].values
    assert W.shape == (4096,) and abs(W.sum() - 1) < 1e-12 and np.all(W >= 0)
    assert idata.sample_stats.attrs["F"] == est.F and idata.sample_stats.attrs["sampler"] == "importance"
    np.testing.assert_array_equal(idata.constant_data["X"].values, est.X)
    # ArviZ works on it, also after a round trip through netCDF
    summary = az.summary(idata, var_names=["w", "f"])
    assert list(summary.index) == ["w[0]", "w[1]", "w[2]", "f"] and (summary["r_hat"] < 1.01).all()
    idata.to_netcdf(tmp_path / "p.nc")
    back = az.from_netcdf(tmp_path / "p.nc")
    np.testing.assert_array_equal(back.posterior["w"].values, idata.posterior["w"].values)
    import matplotlib

    matplotlib.use("Agg")
    axes = az.plot_posterior(idata, var_names=["f"])
    assert np.size(axes) == 1


def test_relocate_lowers_the_objective_and_reports_a_trajectory(run):
    df = run.trajectory
    assert list(df["step"]) == [0, 1, 2, 3] and run.stop_reason == "steps"
    assert {"F", "F_se", "grad_norm", "x0", "x7", "trusted", "projection"} <= set(df.columns)
    first, last = df.iloc[0], df.iloc[-1]
    assert last["F"] < first["F"] - 4 * np.hypot(first["F_se"], last["F_se"])
    assert run.F == last["F"] and np.all(np.abs(run.X) <= 3.0)
    assert not np.allclose(run.X, run.X0)
    fig = run.plot()
    assert len(fig.axes) == 2
    idata = run.to_inference_data()
    np.testing.assert_array_equal(idata.constant_data["X"].values, run.X)


def test_the_command_line_runs_the_same_loop_and_writes_the_posterior(run, tmp_path, monkeypatch):
    import arviz as az

    monkeypatch.setenv("PLACEMENT_RAW_STDERR", "1")
    out = tmp_path / "run"
    r = cli("run", "problem=custom", "problem.builder=conjugate:build", "objective=custom", "objective.name=f",
            "objective.direction=minimize", f"steps={RUN['steps']}", "optimizer.learning_rate=0.1",
            "constraints.lower=-3.0", "constraints.upper=3.0", *[f"sampler.{k}={v}" for k, v in SMALL.items()],
            "plots=false", "compile_cache=false", f"hydra.run.dir={out}")
    assert_ok(r)
    result = json.loads((out / "result.json").read_text())
    np.testing.assert_array_equal(np.asarray(result["X"]), run.X)  # same loop, same defaults: same numbers
    idata = az.from_netcdf(out / "posterior.nc")
    np.testing.assert_array_equal(idata.constant_data["X"].values, run.X)
    assert set(idata.posterior.data_vars) == {"w", "f"} and idata.sample_stats.attrs["trusted"] == 1


def _no_compilation(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("compiled before checking the arguments")

    monkeypatch.setattr("placement.model.get_jaxified_graph", refuse)
    monkeypatch.setattr("placement.api.Engine", refuse)


@pytest.mark.parametrize("call, needle", [
    (lambda m: placement.gradient(m, objective="nope"), "no variable named 'nope'"),
    (lambda m: placement.gradient(m, objective="f", design="Z"), "no pm.Data container named 'Z'"),
    (lambda m: placement.gradient(m, objective="f", observed="yy"), "no pm.Data container named 'yy'"),
    (lambda m: placement.gradient(m), "name the objective"),
    (lambda m: placement.gradient(m, objective="f", X=np.zeros(5)), "shape (5,)"),
    (lambda m: placement.gradient(m, objective="f", X=[0.0] * 7 + [np.nan]), "NaN"),
    (lambda m: placement.gradient(m, objective="f", sampler="mcmc"), "unknown sampler 'mcmc'"),
    (lambda m: placement.gradient(m, objective="f", num_sample=10), "unknown sampler=importance option 'num_sample'"),
    (lambda m: placement.gradient(m, objective="f", num_samples=1000), "num_samples"),
    (lambda m: placement.gradient("model.py", objective="f"), "must be a pm.Model"),
    (lambda m: placement.gradient(m, objective="f", retry={"tries": 3}), "retry"),
    (lambda m: placement.relocate(m, objective="f", optimizer="lbfgs"), "unknown optimizer 'lbfgs'"),
    (lambda m: placement.relocate(m, objective="f", optimizer_options={"momentum_": 1}), "unknown optimizer=adam option"),
    (lambda m: placement.relocate(m, objective="f", constraints={"low": 0}), "unknown constraints option 'low'"),
    (lambda m: placement.relocate(m, objective="f", direction="down"), "minimize or maximize"),
    (lambda m: placement.relocate(m, objective="f", X0=np.zeros((8, 2))), "shape (8, 2)"),
], ids=["objective", "design", "observed", "no-objective", "shape", "nan", "sampler", "option", "option-value",
        "not-a-model", "retry", "optimizer", "optimizer-option", "constraint", "direction", "X0-shape"])
def test_bad_arguments_raise_one_clear_error_before_compiling(model, monkeypatch, call, needle):
    _no_compilation(monkeypatch)
    with pytest.raises(PlacementError) as e:
        call(model)
    assert needle in str(e.value)


def test_placement_suggest_is_the_subpackage_and_calls_its_function(monkeypatch):
    import placement.suggest as sub

    assert placement.suggest is sub and placement.suggest.SuggestConfig is sub.SuggestConfig
    monkeypatch.setattr(sub, "suggest", lambda df, k=5, **kw: ("called", df, k, kw))
    assert placement.suggest("table", k=3, seed=1) == ("called", "table", 3, {"seed": 1})
    assert placement.gradient.__module__ == "placement.api" and placement.relocate.__module__ == "placement.api"
