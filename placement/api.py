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
from placement.retry import RetryConfig, robust_gradient
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


def gradient(problem: Problem, sampler_cfg: Any, X=None, seed: int = 0, engine: Engine | None = None,
             retry: RetryConfig | None = None, gradient_check: str = "error") -> GradientEstimate:
    """F and dF/dX at X (default: the problem's design) with standard errors. On sampler
    trouble it retries with safer settings (``retry``); ``diagnostics["attempts"]`` and
    ``["actions"]`` say what was done, ``["trusted"]`` whether it worked (by
    ``placement.retry.diagnose``, the one trust rule) and ``["warnings"]`` why not.
    ``gradient_check``: "error" (stop when the model's X-derivatives disagree with finite
    differences), "untrusted" (go on, every estimate untrusted) or "off"."""
    t0 = time.perf_counter()
    jm = problem.jm
    X = jm.X if X is None else check_design(X, jm)
    engine = engine or Engine(jm, sampler_cfg, gradient_check=gradient_check)
    key = jax.random.PRNGKey(seed)
    k1, k2 = jax.random.split(key)
    state = engine.init(k1, X, jm.y)
    _, est, attempts = robust_gradient(engine, k2, state, X, jm.y, retry or RetryConfig())
    est.diagnostics.update(attempts.summary())
    est.diagnostics["seconds_total"] = time.perf_counter() - t0
    return est
