"""Vectorised NUTS with explicit, carryable state (blackjax kernel, our adaptation).

Everything is pure: ``(key, state, X, y) -> state`` with X and y as runtime arguments,
so one compilation serves every design. All work (warm-up, re-warm-up, sampling) goes
through one jitted function that runs a fixed-length chunk of NUTS transitions under a
runtime schedule of adaptation flags, so NUTS is traced and compiled exactly once per
problem. Chains are vmapped; the state carries position, log density, gradient,
per-chain step size and a pooled diagonal inverse mass matrix, so an outer step can
continue where the previous one ended.

Sign convention: blackjax wants +log density; the model's ``logdensity`` is +log p.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from blackjax.adaptation.step_size import DualAveragingAdaptationState, dual_averaging_adaptation
from blackjax.mcmc import nuts as bj_nuts
from blackjax.mcmc.hmc import HMCState

from placement import budget, distributed
from placement.estimator import Sample
from placement.samplers import Sampler, register

Array = jax.Array

CHUNK = 50  # most transitions per compiled call (the compiled scan's length)
CALL_SECONDS = 1.0  # aim for one call: signals, the time budget and progress act between calls


class SamplerState(NamedTuple):
    """NUTS state for all chains (leading axis c = chain)."""

    position: Array  # (c, p)
    logdensity: Array  # (c,)
    grad: Array  # (c, p)
    step_size: Array  # (c,)
    inv_mass: Array  # (p,) pooled diagonal inverse mass matrix


class AdaptState(NamedTuple):
    """Dual averaging per chain and pooled running sums for the mass matrix."""

    da: DualAveragingAdaptationState  # fields of shape (c,)
    count: Array  # ()
    total: Array  # (p,)
    total_sq: Array  # (p,)


class Draws(NamedTuple):
    """Draws and per-draw diagnostics, shapes (c, n, ...)."""

    position: Array  # (c, n, p)
    diverging: Array  # (c, n) bool
    accept: Array  # (c, n)
    num_steps: Array  # (c, n)


@dataclass(frozen=True)
class NUTSConfig:
    """Settings for ``sampler=nuts`` (documented in conf/sampler/nuts.yaml)."""

    num_chains: int = 4
    num_warmup: int = 500
    num_draws: int = 1000
    target_accept: float = 0.9
    max_doublings: int = 10
    init_jitter: float = 2.0
    warm_start: bool = True
    rewarmup: int = 50
    rel_se: float = 0.0  # precision target |grad_se| / |grad|: continue the chains until met (0 = off)
    abs_se: float = 0.0  # absolute target on |grad_se| (0 = off)
    max_draws: int = 1 << 18  # draw budget (all chains) for the target
    max_seconds: float = 0.0  # time budget for the target (0 = none)

    def safer(self, level: int):
        """Retry settings: higher target_accept, longer warm-up and sampling, fresh chains."""
        f = 2**level
        ta = 1.0 - (1.0 - self.target_accept) / f
        new = replace(self, target_accept=ta, num_warmup=self.num_warmup * f, num_draws=self.num_draws * f, warm_start=False)
        return new, (f"re-initialised chains, target_accept={ta:.3g}, num_warmup={new.num_warmup}, "
                     f"num_draws={new.num_draws}")


class NUTSState(NamedTuple):
    """What a NUTS sampler carries between calls: the chains and whether they are adapted."""

    chains: SamplerState
    warm: bool


class NUTSInfo(NamedTuple):
    divergences: int
    mean_accept: float
    mean_tree_size: float
    step_size: list


# Schedule columns: adapt step size, collect for mass matrix, end a window, set mass at window end.
ADAPT, COLLECT, END, SET_MASS = range(4)


def _strong(tree):
    """Drop weak types so every call of a jitted function sees one signature."""
    return jax.tree.map(lambda a: jnp.asarray(a, dtype=jnp.asarray(a).dtype), tree)


def warmup_schedule(num_steps: int, adapt_mass: bool = True) -> np.ndarray:
    """Stan-like schedule: fast step-size window, two mass windows, final step-size window."""
    s = np.zeros((num_steps, 4), dtype=bool)
    if num_steps == 0:
        return s
    s[:, ADAPT] = True
    s[-1, END] = True
    if adapt_mass and num_steps >= 40:
        n_fast = max(num_steps * 15 // 100, 10)
        n_end = max(num_steps // 10, 10)
        n_slow = num_steps - n_fast - n_end
        w1_end = n_fast + n_slow // 3
        w2_end = n_fast + n_slow
        s[n_fast:w2_end, COLLECT] = True
        for e in (w1_end - 1, w2_end - 1):
            s[e, END] = s[e, SET_MASS] = True
    return s


def sampling_schedule(num_draws: int) -> np.ndarray:
    return np.zeros((num_draws, 4), dtype=bool)


class Nuts(NamedTuple):
    init: Callable
    run: Callable
    refresh: Callable
    config: NUTSConfig


def make_nuts(logdensity: Callable, config: NUTSConfig) -> Nuts:
    """Build the NUTS functions for one model.

    Returns ``Nuts(init, run, refresh)``:
        init(key, theta0[p], X, y) -> (SamplerState, AdaptState), dispersed starts
        run(key, state, X, y, schedule[n, 4]) -> (SamplerState, Draws[c, n])
        refresh(state, X, y) -> SamplerState with log density and gradient at new X, y
    """
    kernel = bj_nuts.build_kernel()
    c = config.num_chains
    da_init, da_update, _ = dual_averaging_adaptation(config.target_accept)
    value_and_grad = jax.vmap(jax.value_and_grad(logdensity), in_axes=(0, None, None))

    def one_chain(key, pos, ld, g, eps, inv_mass, X, y):
        state, info = kernel(key, HMCState(pos, ld, g), lambda t: logdensity(t, X, y), eps, inv_mass, config.max_doublings)
        return state, info

    vstep = jax.vmap(one_chain, in_axes=(0, 0, 0, 0, 0, None, None, None))

    @jax.jit
    def fresh_adapt(state):
        p = state.position.shape[1]
        return _strong(AdaptState(jax.vmap(da_init)(state.step_size), jnp.zeros(()), jnp.zeros(p), jnp.zeros(p)))

    @jax.jit
    def init(key, theta0, X, y):
        p = theta0.shape[0]
        jitter = jax.random.uniform(key, (c, p), minval=-config.init_jitter, maxval=config.init_jitter)
        pos = theta0[None, :] + jitter
        ld, g = value_and_grad(pos, X, y)
        return _strong(SamplerState(pos, ld, g, jnp.full((c,), 0.1), jnp.ones((p,))))

    def transition(carry, key, f, X, y):
        state, adapt = carry
        eps = jnp.where(f[ADAPT], jnp.exp(adapt.da.log_step_size), state.step_size)
        new, info = vstep(jax.random.split(key, c), state.position, state.logdensity, state.grad, eps, state.inv_mass, X, y)
        acc = jnp.where(jnp.isfinite(info.acceptance_rate), info.acceptance_rate, 0.0)
        da = jax.tree.map(lambda a, b: jnp.where(f[ADAPT], a, b), jax.vmap(da_update)(adapt.da, acc), adapt.da)
        w = f[COLLECT].astype(jnp.float64)
        count = adapt.count + w * c
        total = adapt.total + w * new.position.sum(0)
        total_sq = adapt.total_sq + w * jnp.square(new.position).sum(0)
        # Window end: regularised pooled variance (Stan's shrinkage), restart dual averaging.
        n = jnp.maximum(count, 1.0)
        var = total_sq / n - jnp.square(total / n)
        var = (n / (n + 5.0)) * var + 1e-3 * (5.0 / (n + 5.0))
        set_mass = f[END] & f[SET_MASS]
        inv_mass = jnp.where(set_mass, var, state.inv_mass)
        eps_avg = jnp.exp(da.log_step_size_avg)
        step_size = jnp.where(f[END], eps_avg, state.step_size)
        restarted = jax.vmap(da_init)(eps_avg)
        da = jax.tree.map(lambda a, b: jnp.where(f[END], a, b), restarted, da)
        zero = jnp.where(set_mass, 0.0, 1.0)
        adapt = AdaptState(da, count * zero, total * zero, total_sq * zero)
        state = SamplerState(new.position, new.logdensity, new.logdensity_grad, step_size, inv_mass)
        return _strong((state, adapt)), (new.position, info.is_divergent, acc, info.num_integration_steps.astype(jnp.int32))

    @jax.jit
    def chunk(keys, state, adapt, X, y, flags, active):
        """Up to CHUNK transitions in one call: row i runs with keys[i] and flags[i] where
        active[i], and is skipped (state unchanged) where not, so one compiled program serves
        every chunk length and a transition's result never depends on how calls were cut."""

        def skip(carry, key, f, X, y):
            p = carry[0].position
            return carry, (jnp.zeros_like(p), jnp.zeros((c,), bool), jnp.zeros((c,)), jnp.zeros((c,), jnp.int32))

        def body(carry, inp):
            key, f, on = inp
            return jax.lax.cond(on, transition, skip, carry, key, f, X, y)

        (state, adapt), out = jax.lax.scan(body, _strong((state, adapt)), (keys, flags, active))
        return _strong((state, adapt, out))

    pace = {"m": 4}  # transitions in the next call; learnt from timed calls, kept across runs

    def run(key, state, X, y, schedule, note="NUTS transitions"):
        """Run len(schedule) transitions in compiled calls of about CALL_SECONDS each (at most
        CHUNK transitions); between calls ``budget.checkpoint`` reports progress and lets the
        time budget and signals act. Transition i uses the i-th of len(schedule) keys split
        from ``key``, so the draws do not depend on where calls were cut. Returns the final
        state and the draws of all transitions."""
        schedule = np.asarray(schedule, dtype=bool)
        n = schedule.shape[0]
        p = state.position.shape[1]
        if n == 0:
            return state, Draws(np.zeros((c, 0, p)), np.zeros((c, 0), bool), np.zeros((c, 0)), np.zeros((c, 0), np.int32))
        keys = np.asarray(jax.random.split(key, n))
        adapt = fresh_adapt(state)
        outs, i = [], 0
        while i < n:
            m = min(pace["m"], n - i)
            flags = np.zeros((CHUNK, 4), dtype=bool)
            flags[:m] = schedule[i : i + m]
            ks = np.zeros((CHUNK,) + keys.shape[1:], keys.dtype)
            ks[:m] = keys[i : i + m]
            t0 = time.perf_counter()
            state, adapt, out = chunk(jnp.asarray(ks), state, adapt, X, y, jnp.asarray(flags), jnp.asarray(np.arange(CHUNK) < m))
            out = jax.device_get(out)
            # an over-estimate on a call that compiled: the next call is short. Several processes
            # pace by process 0's clock, so that all reach the same checkpoints
            per = distributed.agree_value((time.perf_counter() - t0) / m)
            pace["m"] = int(min(CHUNK, 2 * pace["m"], max(1.0, CALL_SECONDS / max(per, 1e-9))))
            outs.append(tuple(o[:m] for o in out))
            i += m
            if i < n:
                budget.checkpoint(i, n, note, report=not budget.counted())  # inside extra draws: theirs
        pos, div, acc, nst = (np.concatenate(x) for x in zip(*outs))
        return state, Draws(np.swapaxes(pos, 0, 1), div.T, acc.T, nst.T)

    @jax.jit
    def refresh(state, X, y):
        ld, g = value_and_grad(state.position, X, y)
        return _strong(state._replace(logdensity=ld, grad=g))

    return Nuts(init, run, refresh, config)


def draws_info(draws: Draws, st: SamplerState) -> NUTSInfo:
    return NUTSInfo(int(draws.diverging.sum()), float(draws.accept.mean()), float(draws.num_steps.mean()),
                    [float(v) for v in np.asarray(st.step_size)])


def as_sample(draws: Draws, st: SamplerState) -> Sample:
    c, n, p = draws.position.shape
    return Sample(draws.position.reshape(c * n, p), None, c, None, draws_info(draws, st))


def run_chains(nuts: Nuts, theta0, key, state: NUTSState, X, y) -> tuple[NUTSState, Sample]:
    """Adapt (fully when cold, a short step-size re-adaptation when warm) and draw."""
    cfg = nuts.config
    k1, k2, k3 = jax.random.split(key, 3)
    st = state.chains
    if state.warm and cfg.warm_start:
        st = nuts.refresh(st, X, y)
        st, _ = nuts.run(k1, st, X, y, warmup_schedule(cfg.rewarmup, adapt_mass=False), "NUTS re-warm-up")
    else:
        if state.warm:  # cold start requested: start over from dispersed points
            st = nuts.init(k3, theta0, X, y)
        st, _ = nuts.run(k1, st, X, y, warmup_schedule(cfg.num_warmup), "NUTS warm-up")
    st, draws = nuts.run(k2, st, X, y, sampling_schedule(cfg.num_draws), "NUTS draws")
    return NUTSState(st, True), as_sample(draws, st)


@register(NUTSConfig)
def build(jm, cfg: NUTSConfig) -> Sampler:
    """``sampler=nuts``: vmapped NUTS chains, warm-started from the previous design."""
    nuts = make_nuts(jm.logdensity, cfg)
    theta0 = jnp.asarray(jm.initial_point)

    def init(key, X, y):
        return NUTSState(nuts.init(key, theta0, X, y), False)

    def draw(key, state, X, y):
        return run_chains(nuts, theta0, key, state, X, y)

    def extend(key, state, X, y):
        """Continue the chains from where they stopped (no adaptation) for num_draws more."""
        st, draws = nuts.run(key, state.chains, X, y, sampling_schedule(cfg.num_draws), "NUTS draws")
        return NUTSState(st, True), as_sample(draws, st)

    return Sampler("nuts", init, draw, extend)
