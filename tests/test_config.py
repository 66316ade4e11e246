"""Every option of every config group composes and instantiates (no sampling here)."""

from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from placement.cli import CONF_DIR
from placement.importance import ISConfig
from placement.laplace import MAPConfig
from placement.quadrature import QuadConfig
from placement.nuts import NUTSConfig

GROUPS = {g: sorted(p.stem for p in (Path(CONF_DIR) / g).glob("*.yaml")) for g in
          ["problem", "kernel", "objective", "optimizer", "sampler", "experiment"]}


def _compose(overrides, name="run"):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def test_groups_have_the_documented_options():
    assert {"matern12", "matern32", "matern52", "expquad", "ratquad", "periodic"} <= set(GROUPS["kernel"])
    assert {"posterior_mean", "integrated_variance", "max_variance", "target_variance", "custom"} <= set(GROUPS["objective"])
    assert {"adam", "sgd", "momentum", "rmsprop"} <= set(GROUPS["optimizer"])
    assert {"nuts", "reweight", "importance", "quadrature"} <= set(GROUPS["sampler"])
    assert {"seed_gp", "simulator", "custom"} <= set(GROUPS["problem"])


@pytest.mark.parametrize("opt", GROUPS["optimizer"])
def test_optimizers_instantiate(opt):
    cfg = _compose([f"optimizer={opt}"])
    tx = instantiate(cfg.optimizer)
    import numpy as np

    state = tx.init(np.zeros(3))
    upd, _ = tx.update(np.ones(3), state, np.zeros(3))
    assert np.all(np.asarray(upd) < 0)


@pytest.mark.parametrize("sampler", GROUPS["sampler"])
def test_samplers_instantiate(sampler):
    cfg = instantiate(_compose([f"sampler={sampler}"]).sampler)
    assert isinstance(cfg, (NUTSConfig, ISConfig, QuadConfig, MAPConfig))


@pytest.mark.parametrize("kernel", GROUPS["kernel"])
def test_kernels_build_a_covariance(kernel):
    import numpy as np

    k = instantiate(_compose([f"kernel={kernel}"]).kernel)
    K = k(1, ls=1.5)(np.linspace(0, 3, 4)[:, None]).eval()
    assert K.shape == (4, 4) and np.allclose(K, K.T) and np.allclose(np.diag(K), 1.0)


@pytest.mark.parametrize("experiment", GROUPS["experiment"])
def test_experiments_compose(experiment):
    cfg = _compose([f"experiment={experiment}"])
    assert cfg.steps >= 1
    instantiate(cfg.sampler)
    instantiate(cfg.optimizer)


@pytest.mark.parametrize("objective", [o for o in GROUPS["objective"] if o not in ("custom", "eig")])
def test_builtin_objectives_exist_in_the_builtin_problems(objective):
    from placement.api import build_problem

    cfg = _compose([f"objective={objective}", "problem=simulator"])
    problem = build_problem(cfg.problem, instantiate(cfg.kernel), cfg.objective.name)
    assert problem.jm.objective_name == cfg.objective.name
    assert cfg.objective.direction in ("minimize", "maximize")


def test_importance_large_preset():
    """sampler=importance_large is the importance sampler (its paths are tested there) with the
    sizes its docs promise: a Laplace pilot, 32 RQMC sets of 16 extended to 5% relative SE."""
    cfg = instantiate(_compose(["sampler=importance_large"], name="gradient").sampler)
    assert isinstance(cfg, ISConfig)
    assert (cfg.pilot, cfg.num_samples, cfg.qmc_groups, cfg.rel_se) == ("laplace", 512, 32, 0.05)
    assert cfg.aim_samples + cfg.num_samples + cfg.adapt_samples <= 1280


def test_build_problem_exports_a_configuration_once_and_rebuilds_on_any_change(monkeypatch):
    """A sweep in one process (Hydra's default launcher) exports each problem once: the same
    configuration gives the same exported model without calling the builder; a change of any
    argument, the kernel, the objective or the design mode builds and exports anew."""
    import placement.api as api
    import placement.problems as problems

    calls = []
    real = problems.seed_gp

    def counting(kernel, **kw):  # takes the kernel, as seed_gp does
        calls.append(kw)
        return real(kernel=kernel, **kw)

    monkeypatch.setattr(problems, "seed_gp", counting)
    monkeypatch.setattr(api, "_EXPORTS", {})

    def build(*overrides):
        cfg = _compose(["problem=seed_gp", *overrides])
        return api.build_problem(cfg.problem, instantiate(cfg.kernel), cfg.objective.name)

    a = build()
    b = build()
    assert b.jm is a.jm and len(calls) == 1
    for change in (["problem.args.n=8"], ["kernel=matern32"], ["objective=posterior_mean"], ["problem.fantasies=4"],
                   ["problem.y_mode=predictive", "problem.fantasies=2"]):
        c = build(*change)
        assert c.jm is not a.jm, change
    assert len(calls) == 6
    assert build("problem.args.n=8").jm.X.shape == (8,) and len(calls) == 6  # still kept
    assert api._export_key(counting, {"X": np.zeros(3)}, None, ()) is None  # an array argument: never cached
