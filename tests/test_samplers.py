"""The sampler interface: a new sampler is one module (here: this file) registering a
builder for its config type; NUTS continues its chains to a precision target."""

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_within_se
from conjugate import build, closed_form
from placement.api import Problem, gradient
from placement.engine import Engine
from placement.errors import PlacementError
from placement.estimator import Sample
from placement.model import from_pymc
from placement.nuts import NUTSConfig
from placement.samplers import Sampler, register

XLA_OPTIMIZED = True  # NUTS and importance runs of many draws per compiled program (tests/conftest.py)


@pytest.fixture(scope="module")
def conj():
    jm = from_pymc(build(), "f")
    F, g = closed_form(jm.X, jm.y)
    return Problem("conjugate", jm), F, g


@dataclass(frozen=True)
class WideGaussianConfig:
    """A deliberately plain sampler: independent draws from N(0, scale^2 I), self-normalised."""

    num_samples: int = 80000
    scale: float = 2.0


class WideState(NamedTuple):
    calls: int


@register(WideGaussianConfig)
def _build_wide(jm, cfg):
    p = jm.ndim

    @jax.jit
    def draws(key):
        theta = cfg.scale * jax.random.normal(key, (cfg.num_samples, p))
        log_q = jnp.sum(jax.scipy.stats.norm.logpdf(theta, scale=cfg.scale), axis=1)
        return theta, log_q

    def init(key, X, y):
        return WideState(0)

    def draw(key, state, X, y):
        theta, log_q = draws(key)
        return WideState(state.calls + 1), Sample(np.asarray(theta), np.asarray(log_q), None, None, {"calls": state.calls})

    return Sampler("wide_gaussian", init, draw)


def test_a_registered_sampler_runs_through_the_engine_and_is_right(conj):
    problem, F, g = conj
    est = gradient(problem, WideGaussianConfig(), seed=0)
    assert est.diagnostics["sampler"] == "wide_gaussian"
    assert est.diagnostics["calls"] == 0 and est.diagnostics["num_draws"] == 80000
    assert est.F == pytest.approx(F, abs=4 * est.F_se + 1e-9)
    assert_within_se(est.grad, est.grad_se, g, se_cap=0.15)


def test_an_unregistered_config_is_refused_with_the_known_ones(conj):
    problem, _, _ = conj

    @dataclass(frozen=True)
    class Nobody:
        x: int = 1

    with pytest.raises(PlacementError, match="unknown sampler configuration Nobody.*placement.importance.ISConfig"):
        Engine(problem.jm, Nobody())


def test_nuts_continues_its_chains_until_the_precision_target(conj):
    """rel_se=0.06 from 4 x 250 draws needs several extensions; the chains keep going (one
    series each), the target is met, and the answer is right within its SE."""
    problem, F, g = conj
    cfg = NUTSConfig(num_chains=4, num_warmup=300, num_draws=250, rel_se=0.06)
    est = gradient(problem, cfg, seed=1)
    d = est.diagnostics
    assert d["target_met"] and d["rel_se"] <= 0.06
    assert d["num_draws"] > 1000 and d["num_draws"] % 1000 == 0
    assert d["rhat_max"] < 1.01
    assert_within_se(est.grad, est.grad_se, g, se_cap=0.08)
    # and a budget that cannot reach the target says so
    short = gradient(problem, NUTSConfig(num_chains=4, num_warmup=300, num_draws=250, rel_se=0.01, max_draws=2000), seed=1)
    assert not short.diagnostics["target_met"] and short.diagnostics["num_draws"] == 2000
    assert "precision target missed" in short.diagnostics["target_note"]


def test_merge_keeps_each_chain_one_series():
    """Extending MCMC draws joins chain by chain (chain-major), independent draws end to end."""
    from placement.engine import merge

    c, n1, n2 = 3, 4, 2
    code = lambda chain, start, n: chain * 100 + start + np.arange(n)  # noqa: E731  (chain, position in chain)
    a = np.concatenate([code(k, 0, n1) for k in range(c)])
    b = np.concatenate([code(k, n1, n2) for k in range(c)])
    sa = Sample(a[:, None].astype(float), None, c, None, {"divergences": 1})
    sb = Sample(b[:, None].astype(float), None, c, None, {"divergences": 2})
    joined, ev = merge(sa, (a, a), sb, (b, b))
    want = np.concatenate([code(k, 0, n1 + n2) for k in range(c)])
    np.testing.assert_array_equal(joined.theta[:, 0], want)
    np.testing.assert_array_equal(np.asarray(ev[1]), want)
    assert joined.info["divergences"] == 3
    flat, _ = merge(sa._replace(chains=None), (a,), sb._replace(chains=None), (b,))
    np.testing.assert_array_equal(flat.theta[:, 0], np.concatenate([a, b]))
    # randomised-QMC sets of independent draws: the groups add up (the SE comes from them)
    qa, qb = sa._replace(chains=None, groups=4), sb._replace(chains=None, groups=2)
    assert merge(qa, (a,), qb, (b,))[0].groups == 6


def test_nuts_draws_do_not_depend_on_how_its_calls_are_cut(conj, monkeypatch):
    """NUTS runs its transitions in compiled calls sized by timing (about CALL_SECONDS each,
    so a signal or the time budget acts between them); transition i always uses key i, so
    one transition per call and CHUNK per call give the same chains, bit for bit, and the
    progress callback sees every call."""
    import placement.nuts as nuts
    from placement import budget

    jm = conj[0].jm
    cfg = NUTSConfig(num_chains=2, num_warmup=60, num_draws=30)
    X, y = jnp.asarray(jm.X), jnp.asarray(jm.y)

    def chains(call_seconds):
        monkeypatch.setattr(nuts, "CALL_SECONDS", call_seconds)
        sampler = nuts.make_nuts(jm.logdensity, cfg)
        seen = []
        with budget.scope(progress=lambda done, total, note: seen.append((done, total, note))):
            st = sampler.init(jax.random.PRNGKey(1), jnp.asarray(jm.initial_point), X, y)
            st, _ = sampler.run(jax.random.PRNGKey(2), st, X, y, nuts.warmup_schedule(cfg.num_warmup), "warm-up")
            st, draws = sampler.run(jax.random.PRNGKey(3), st, X, y, nuts.sampling_schedule(cfg.num_draws), "draws")
        return draws, seen

    one, seen_one = chains(0.0)  # a first call of 4 transitions, then one per call
    full, seen_full = chains(float("inf"))  # calls of 4, 8, 16, 32, then (pace kept) CHUNK
    np.testing.assert_array_equal(one.position, full.position)
    np.testing.assert_array_equal(one.accept, full.accept)
    assert one.position.shape == (2, 30, jm.ndim)
    assert len(seen_one) == (1 + 56 - 1) + (30 - 1)  # a checkpoint between every two calls
    assert [s[0] for s in seen_full] == [4, 12, 28]  # the draws: one call of 30
    assert all(total == {"warm-up": 60, "draws": 30}[note] for _, total, note in seen_one)


def test_importance_warm_step_follows_a_posterior_that_moved_beyond_its_width():
    """sampler=importance_large on a 60-point seed problem: one Adam-like step moves every point
    by 0.1, and the narrow hyperparameter posterior moves further than its width. The warm step
    (from the last design's state) has healthy weights and agrees with a cold start at the new
    design within their standard errors. Carrying the old posterior fit unchanged and aiming
    from the old proposal, its weights degenerated here (Pareto k 1.6, weight ESS 2 of 512)."""
    from placement.api import make_engine, problem_from_model
    from placement.problems import seed_gp
    from placement.retry import diagnose
    from placement.settings import sampler_config

    problem = problem_from_model(seed_gp(n=60), "integrated_variance")
    engine = make_engine(problem, sampler_config("importance_large", "run", rel_se=0.0), gradient_check="off")
    X0, y = np.asarray(problem.jm.X), problem.jm.y
    key = jax.random.PRNGKey(0)
    state, est0 = engine.gradient(key, engine.init(key, X0, y), X0, y)
    X1 = X0 - 0.1 * np.sign(np.asarray(est0.grad))
    _, warm = engine.gradient(jax.random.PRNGKey(1), state, X1, y)
    k = jax.random.PRNGKey(2)
    _, cold = engine.gradient(k, engine.init(k, X1, y), X1, y)
    for est in (warm, cold):
        assert not diagnose(est) and est.diagnostics["pareto_k"] < 0.5, est.diagnostics
        assert est.diagnostics["ess_weights"] > 0.3 * est.diagnostics["num_draws"]
    assert abs(warm.F - cold.F) < 4 * np.hypot(warm.F_se, cold.F_se), (warm.F, cold.F, warm.F_se, cold.F_se)
    gap = np.linalg.norm(np.asarray(warm.grad) - np.asarray(cold.grad))
    assert gap < 4 * np.linalg.norm(np.hypot(warm.grad_se, cold.grad_se)), gap


def test_importance_ess_floor_draws_more_batches_until_the_weight_ess_is_reached(conj):
    """sampler.ess_floor: with small batches (weight ESS about 60) and a floor of 150, the sampler
    extends from the same proposal until the weight ESS is at least 150, and the estimate agrees
    with the closed form; without the floor, or with one too far above the weights, it stops at
    one batch."""
    problem, F, g = conj
    opts = dict(sampler="importance", num_samples=32, qmc_groups=8, aim_samples=256, rel_se=0.0, seed=3)
    one = gradient(problem, **opts)
    n0 = one.diagnostics["num_draws"]
    assert one.diagnostics["ess_weights"] < 100, one.diagnostics
    est = gradient(problem, ess_floor=150, **opts)
    assert est.diagnostics["ess_weights"] >= 150 and est.diagnostics["num_draws"] > n0, est.diagnostics
    assert est.diagnostics["num_draws"] <= 8 * n0  # extended in proportion, not to the draw budget
    assert_within_se(est.grad, est.grad_se, g, se_cap=0.5)
    # a floor far above the weights (more than 8x the ESS) is left to the retry: no draws added
    far = gradient(problem, ess_floor=1000, **opts)
    assert far.diagnostics["num_draws"] == n0, far.diagnostics
