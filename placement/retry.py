"""Sampler trouble: detect it, retry with safer settings, and say what was done.

``diagnose`` is the one trust rule: it turns an estimate's diagnostics into trouble codes
(non-finite values, divergences, r_hat, tiny ESS, heavy-tailed importance weights, a
proposal narrower than the posterior, a low weight ESS, grid-edge mass, grid mass at nodes where the model is not finite, a failed
gradient self-check). ``placement gradient``,
``placement run`` and the Python API all decide "trusted" by it and nothing else.
``robust_gradient`` calls the engine and, while there is trouble, retries from
re-initialised sampler state with safer settings (NUTS: higher target_accept, longer
warm-up, more draws; importance: a fresh pilot, longer adaptation, more draws). Every
attempt is recorded; if the last one still fails the estimate is returned marked
untrusted, and the caller must not step on it.

The safer engines are built lazily and cached on the engine, so a run without trouble
compiles nothing extra, and one with trouble compiles each level once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import jax
import numpy as np

from placement.engine import Engine
from placement.errors import PlacementError
from placement.estimator import GradientEstimate
from placement.samplers import safer as safer_config


@dataclass(frozen=True)
class RetryConfig:
    """max_retries: safer attempts after the first; rhat_max, min_ess, max_divergences,
    max_pareto_k, max_spread_ratio, max_edge_mass, max_nonfinite_mass: what counts as trouble; max_untrusted:
    consecutive untrusted steps after which a run stops (0 = never)."""

    max_retries: int = 2
    rhat_max: float = 1.01
    min_ess: float = 100.0
    max_divergences: int = 0
    max_pareto_k: float = 0.7
    max_spread_ratio: float = 1.5
    max_edge_mass: float = 1e-4
    max_nonfinite_mass: float = 1e-4
    max_untrusted: int = 5

    def __post_init__(self):
        if self.max_retries < 0 or self.max_untrusted < 0:
            raise PlacementError("retry.max_retries and retry.max_untrusted must be >= 0.")


class Attempts(NamedTuple):
    """What robust_gradient did: trouble codes per attempt and the actions taken."""

    trouble: list  # list of lists of codes, one per attempt
    actions: list  # one string per retry
    trusted: bool

    def summary(self) -> dict:
        return {"attempts": len(self.trouble), "trouble": "+".join(self.trouble[0]) if self.trouble else "",
                "actions": "; ".join(self.actions), "trusted": int(self.trusted)}


def diagnose(est: GradientEstimate, cfg: RetryConfig = RetryConfig()) -> list[tuple[str, str]]:
    """(code, message with what to try) for each kind of trouble in ``est``; empty if none."""
    d = est.diagnostics
    out = []
    finite = np.isfinite(est.F) and np.all(np.isfinite(est.grad)) and np.isfinite(est.F_se) and np.all(np.isfinite(est.grad_se))
    if not finite:
        out.append(("nan", "the estimate is not finite: the log density may be undefined at this design "
                           "(check the model there, or tighten the constraints)."))
    rhat = d.get("rhat_max")
    if rhat is not None and np.isfinite(rhat) and rhat > cfg.rhat_max:
        out.append(("rhat", f"chains disagree (r_hat {rhat:.3f} > {cfg.rhat_max}): raise sampler.num_warmup / "
                            "num_draws, or use sampler=importance."))
    if d.get("divergences", 0) > cfg.max_divergences:
        out.append(("divergences", f"{d['divergences']} divergent transitions: raise sampler.target_accept "
                                   "(e.g. 0.99) or use sampler=importance."))
    ess = d.get("ess_bulk_min")
    if d.get("sampler") in ("nuts", "reweight") and ess is not None and np.isfinite(ess) and ess < cfg.min_ess:
        out.append(("ess", f"bulk ESS {ess:.0f} < {cfg.min_ess:.0f}: raise sampler.num_draws."))
    if d.get("sampler") in ("importance", "reweight") and "pareto_k" in d:
        k = d.get("pareto_k", 0.0)
        if np.isfinite(k) and k > cfg.max_pareto_k:
            out.append(("pareto_k", f"importance weights are heavy-tailed (Pareto k {k:.2f} > {cfg.max_pareto_k}): "
                                    "raise sampler.adapt_iters or sampler.pilot_iters, or use sampler=quadrature."))
    spread = d.get("spread_ratio")
    if d.get("sampler") == "importance" and spread is not None and np.isfinite(spread) and spread > cfg.max_spread_ratio:
        out.append(("spread", f"the weighted draws vary {spread:.1f}x as much as the proposal's own in some direction "
                              f"(variance ratio > {cfg.max_spread_ratio}): the proposal is narrower than the posterior there; raise "
                              "sampler.pilot_iters, sampler.adapt_iters or sampler.pilot_scale."))
    if "ess_weights" in d and d.get("num_draws"):
        frac = d["ess_weights"] / d["num_draws"]
        if frac < d.get("min_ess_fraction", 0.0):
            out.append(("weight_ess", f"weight ESS is {100 * frac:.1f}% of the draws (< {100 * d['min_ess_fraction']:.0f}%): "
                                      "raise sampler.adapt_iters or sampler.pilot_iters."))
        elif d["ess_weights"] < cfg.min_ess:  # too few effective draws for any standard error to be trusted
            out.append(("weight_ess", f"weight ESS is {d['ess_weights']:.0f} (< {cfg.min_ess:.0f}): raise "
                                      "sampler.num_samples (and sampler.adapt_samples)."))
    check = d.get("gradient_check")
    if check not in (None, "passed"):
        out.append(("gradient_check", check))
    if d.get("sampler") == "quadrature" and d.get("edge_mass", 0.0) > cfg.max_edge_mass:
        out.append(("edge", f"{d['edge_mass']:.1e} of the mass sits on the grid's edge: raise sampler.drop or "
                            "sampler.max_sds (a tail the box cuts off), or use sampler=importance."))
    if d.get("sampler") == "quadrature" and d.get("nonfinite_mass", 0.0) > cfg.max_nonfinite_mass:
        out.append(("nonfinite", f"{d.get('nonfinite_draws', 0)} grid nodes where the model is not finite may carry up "
                                 f"to {d['nonfinite_mass']:.1e} of the mass: check the model there, or tighten its "
                                 "priors, or use sampler=importance."))
    return out


NOT_RETRIED = ("gradient_check",)  # trouble in the model, not the sampler: a retry cannot help


def _safer_engine(engine: Engine, level: int) -> tuple[Engine | None, str]:
    cache = engine.__dict__.setdefault("_safer", {})
    if level not in cache:
        cfg, what = safer_config(engine.cfg, level)
        safer = None
        if cfg is not None:
            safer = Engine(engine.jm, cfg, gradient_check=engine.gradient_check)
            safer.check_result = engine.check_result  # the model's derivatives were checked once
        cache[level] = (safer, what)
    return cache[level]


def robust_gradient(engine: Engine, key, state, X, y, cfg: RetryConfig = RetryConfig()):
    """``engine.gradient`` with retries. Returns (state, estimate, Attempts).

    The returned state is the one of the last attempt (a retry's re-initialised,
    re-adapted state is a good warm start for the next step)."""
    new_state, est = _safe_call(engine, key, state, X, y)
    found = diagnose(est, cfg)
    trouble = [[c for c, _ in found]]
    actions = []
    level = 0
    while any(c not in NOT_RETRIED for c, _ in found) and level < cfg.max_retries:
        level += 1
        safer, what = _safer_engine(engine, level)
        if safer is None:
            actions.append(what)
            break
        k_init, k_grad = jax.random.split(jax.random.fold_in(key, 1000 + level))
        cand_state, cand = _safe_call(safer, k_grad, safer.init(k_init, X, y), X, y)
        actions.append(f"retry {level} ({'+'.join(trouble[-1])}): {what}")
        found = diagnose(cand, cfg)
        trouble.append([c for c, _ in found])
        # keep the latest attempt; its sampler state carries the safer adaptation forward
        new_state, est = cand_state, cand
    est.diagnostics["trusted"] = not found
    est.diagnostics["warnings"] = [m for _, m in found]
    return new_state, est, Attempts(trouble, actions, not found)


def _safe_call(engine, key, state, X, y):
    """engine.gradient, with a non-finite failure inside the sampler turned into a NaN estimate."""
    try:
        return engine.gradient(key, state, X, y)
    except (FloatingPointError, np.linalg.LinAlgError) as e:
        shape = np.shape(X)
        nan = np.full(shape, np.nan)
        return state, GradientEstimate(float("nan"), nan, float("nan"), nan, {"sampler": engine.kind, "error": str(e)})
