"""Python API mirroring the command line: build a problem from a config, estimate gradients."""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from placement.engine import Engine
from placement.errors import PlacementError
from placement.estimator import GradientEstimate
from placement.model import JaxModel, from_pymc
from placement.problems import load_builder
from placement.simulate import simulator_of, with_simulator


@dataclass
class Problem:
    """A model exported to JAX plus the name it came from."""

    name: str
    jm: JaxModel


def build_problem(problem_cfg: Any, kernel: Any = None, objective: str | None = None) -> Problem:
    """Call the configured builder and export its model to JAX.

    Args:
        problem_cfg: mapping with keys builder ("module:function"), args, data, observed
            (see conf/problem/*.yaml).
        kernel: covariance class or partial, passed to builders that take ``kernel``.
        objective: name of the model quantity used as f (default: problem_cfg["objective"]).
    """
    builder = load_builder(problem_cfg["builder"])
    args = dict(problem_cfg.get("args") or {})
    params = inspect.signature(builder).parameters
    if kernel is not None and "kernel" in params and "kernel" not in args:
        args["kernel"] = kernel
    try:
        model = builder(**args)
    except PlacementError:
        raise
    except TypeError as e:
        raise PlacementError(f"problem.builder {problem_cfg['builder']} rejected its arguments: {e}") from None
    import pymc as pm

    if not isinstance(model, pm.Model):
        raise PlacementError(
            f"problem.builder {problem_cfg['builder']} returned {type(model).__name__}, not a pm.Model."
        )
    objective = objective or problem_cfg.get("objective")
    if not objective:
        raise PlacementError("no objective named: set objective.name=... (the model's Deterministic to use as f).")
    jm = from_pymc(model, objective=objective, data=problem_cfg.get("data", "X"), observed=problem_cfg.get("observed", "y"),
                   extras=("pred_mu", "pred_var"))
    sim = simulator_of(model)
    if sim is not None:
        jm = with_simulator(jm, *sim)
    return Problem(problem_cfg.get("name", "custom"), jm)


def predictive_summary(engine: Engine, state, X, key, max_draws: int = 400):
    """Posterior predictive mean and sd of f on the model's plotting grid at design X.

    Uses the model's ``pred_mu`` and ``pred_var`` quantities (None if it has none); the
    mixture over hyperparameters gives var = E[pred_var] + Var[pred_mu].
    """
    jm = engine.jm
    if jm.extras is None:
        return None
    y = jm.y_at(X)
    _, sample = engine.draw(key, state, X, y)
    theta = jnp.asarray(sample.theta)
    W = engine.sample_weights(sample, X, y)
    idx = np.random.default_rng(0).choice(len(theta), size=min(max_draws, len(theta)), p=W)
    ex = jax.vmap(lambda t: jm.extras(t, jnp.asarray(X), jnp.asarray(y)))(theta[idx])
    if "pred_mu" not in ex or "pred_var" not in ex:
        return None
    mu, var = np.asarray(ex["pred_mu"]), np.asarray(ex["pred_var"])
    return mu.mean(0), np.sqrt(var.mean(0) + mu.var(0))


def check_design(X, jm: JaxModel) -> np.ndarray:
    """Validate a user design against the model: shape, finiteness, distinct points."""
    try:
        X = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError):
        raise PlacementError("X must be a list of numbers (or a list of lists for d > 1 columns).") from None
    if X.shape != jm.X.shape:
        raise PlacementError(
            f"X has shape {X.shape} but the problem's design has shape {jm.X.shape}; give one value "
            "per point (a row of d values per point when d > 1)."
        )
    if not np.all(np.isfinite(X)):
        raise PlacementError("X contains NaN or infinite values; every coordinate must be a finite number.")
    return X


def gradient(problem: Problem, sampler_cfg: Any, X=None, seed: int = 0, engine: Engine | None = None) -> GradientEstimate:
    """F and dF/dX at X (default: the problem's design) with standard errors."""
    t0 = time.perf_counter()
    jm = problem.jm
    X = jm.X if X is None else check_design(X, jm)
    engine = engine or Engine(jm, sampler_cfg)
    key = jax.random.PRNGKey(seed)
    k1, k2 = jax.random.split(key)
    state = engine.init(k1, X, jm.y)
    _, est = engine.gradient(k2, state, X, jm.y)
    est.diagnostics["seconds_total"] = time.perf_counter() - t0
    return est


def trust_problems(est: GradientEstimate, sampler_cfg: Any = None) -> list[str]:
    """Reasons not to trust an estimate, each with what to try; empty when it looks fine."""
    d = est.diagnostics
    out = []
    if not (np.isfinite(est.F) and np.all(np.isfinite(est.grad))):
        out.append("the estimate is not finite: check the model's log density at the design.")
    rhat = d.get("rhat_max")
    if rhat is not None and np.isfinite(rhat) and rhat > 1.01:
        out.append(f"chains disagree (r_hat {rhat:.3f} > 1.01): raise sampler.num_warmup / num_draws, "
                   "or use sampler=importance.")
    if d.get("divergences", 0) > 0:
        out.append(f"{d['divergences']} divergent transitions: raise sampler.target_accept (e.g. 0.99) "
                   "or use sampler=importance.")
    if d.get("sampler") == "nuts" and d.get("ess_bulk_min", np.inf) < 100:
        out.append(f"bulk ESS {d['ess_bulk_min']:.0f} < 100: raise sampler.num_draws.")
    if d.get("sampler") in ("importance", "reweight") and "pareto_k" in d:
        k = d.get("pareto_k", 0.0)
        if np.isfinite(k) and k > 0.7:
            out.append(f"importance weights are heavy-tailed (Pareto k {k:.2f} > 0.7): raise "
                       "sampler.adapt_iters or sampler.pilot_iters, or use sampler=quadrature.")
        frac = d.get("ess_weights", 0.0) / max(d.get("num_draws", 1), 1)
        if sampler_cfg is not None and frac < getattr(sampler_cfg, "min_ess_fraction", 0.0):
            out.append(f"weight ESS is {100 * frac:.1f}% of the draws: raise sampler.adapt_iters.")
    if d.get("sampler") == "quadrature" and d.get("edge_mass", 0.0) > 1e-4:
        out.append(f"{d['edge_mass']:.1e} of the mass sits on the grid's edge: raise sampler.reach.")
    return out
