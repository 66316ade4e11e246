"""One problem, compiled once: samplers behind one interface, and the gradient estimate.

``Engine(jm, sampler_cfg)`` builds every jitted function for the model up front;
``init(key, X, y)`` returns a sampler state and ``gradient(key, state, X, y)`` returns
``(new_state, GradientEstimate)``. Passing the returned state to the next call at a new
X is the warm start (NUTS positions, step sizes and mass matrix; the importance
proposal; the Laplace mode).
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from placement import gradcheck, precision
from placement.errors import PlacementError
from placement.estimator import GradientEstimate, Sample, estimate, make_terms, normalised_weights
from placement.importance import ISConfig, make_importance, proposal_from_moments
from placement.laplace import MAPConfig, make_laplace, make_map_gradient
from placement.model import JaxModel
from placement.quadrature import QuadConfig, check_supported, sinh_grid
from placement.sampler import NUTSConfig, ReweightConfig, make_nuts, sampling_schedule, warmup_schedule


class Engine:
    """Compiled functions for one model and one sampler configuration."""

    def __init__(self, jm: JaxModel, sampler_cfg: Any, gradient_check: str = "error"):
        if gradient_check not in gradcheck.MODES:
            raise PlacementError(f"gradient_check must be one of {', '.join(gradcheck.MODES)}; got {gradient_check!r}.")
        self.jm = jm
        self.cfg = sampler_cfg
        self.gradient_check = gradient_check
        self.check_result: gradcheck.CheckResult | None = None  # set by the first estimate
        self.terms = make_terms(jm)
        self.theta0 = jnp.asarray(jm.initial_point)
        self.vlogp = jax.jit(jax.vmap(jm.logdensity, in_axes=(0, None, None)))
        if isinstance(sampler_cfg, NUTSConfig):
            self.kind = "reweight" if isinstance(sampler_cfg, ReweightConfig) else "nuts"
            self.nuts = make_nuts(jm.logdensity, sampler_cfg)
        elif isinstance(sampler_cfg, ISConfig):
            self.kind = "importance"
            if sampler_cfg.pilot not in ("wide", "laplace"):
                raise PlacementError(f"sampler.pilot must be 'wide' or 'laplace' (got {sampler_cfg.pilot!r}).")
            if sampler_cfg.pilot == "laplace":
                self.laplace = make_laplace(jm.logdensity)
            self.is_adapt, self.is_draw = make_importance(jm.logdensity, sampler_cfg)
        elif isinstance(sampler_cfg, MAPConfig):
            self.kind = "map"
            self.laplace = make_laplace(jm.logdensity, sampler_cfg.num_starts, sampler_cfg.num_steps)
            self.map_grad = make_map_gradient(jm.logdensity, jm.objective)
        elif isinstance(sampler_cfg, QuadConfig):
            self.kind = "quadrature"
            self.laplace = make_laplace(jm.logdensity)
            check_supported(jm.ndim, sampler_cfg)
        else:
            raise PlacementError(f"unknown sampler configuration {type(sampler_cfg).__name__}.")

    # -- sampler state -------------------------------------------------------------
    def init(self, key, X, y):
        """Initial sampler state (cold start) at design X."""
        X, y = self._xy(X, y)
        if self.kind in ("nuts", "reweight"):
            return {"nuts": self.nuts.init(key, self.theta0, X, y), "warm": False}
        if self.kind == "importance":
            cfg = self.cfg
            if cfg.pilot == "laplace":
                lap = self.laplace(key, self.theta0, X, y)
                prop = proposal_from_moments(lap.mode, lap.cov)
            else:  # a wide proposal around the initial point, adapted from its own draws
                p = self.jm.ndim
                prop = proposal_from_moments(self.theta0, cfg.pilot_scale**2 * jnp.eye(p))
                prop = self.is_adapt(key, prop, X, y, iters=cfg.pilot_iters)
            return {"prop": prop}
        return {"laplace": self.laplace(key, self.theta0, X, y)}

    def _map_estimate(self, key, state, X, y):
        lap = self.laplace(key, state["laplace"].mode, X, y)
        F, grad = self.map_grad(lap.mode, X, y)
        diag = {"sampler": "map", "map_converged": bool(lap.converged), "divergences": 0, "rhat_max": float("nan"),
                "ess_bulk_min": float("nan"), "note": "plug-in value at the MAP; not a posterior mean, no Monte Carlo error"}
        grad = np.asarray(grad)
        return {"laplace": lap}, GradientEstimate(float(F), grad, 0.0, np.zeros_like(grad), diag)

    def draw(self, key, state, X, y) -> tuple[dict, Sample]:
        """Draw (or lay out) points for the identity at design X."""
        X, y = self._xy(X, y)
        if self.kind == "nuts":
            return self._draw_nuts(key, state, X, y)
        if self.kind == "reweight":
            return self._draw_reweight(key, state, X, y)
        if self.kind == "importance":
            k1, k2 = jax.random.split(key)
            prop = self.is_adapt(k1, state["prop"], X, y)
            theta, log_q = self.is_draw(k2, prop)
            new = dict(state, prop=prop)
            return new, Sample(np.asarray(theta), np.asarray(log_q), None, None, {})
        lap = self.laplace(key, state["laplace"].mode, X, y)  # re-centred, warm-started from the last mode
        if self.kind == "map":  # the plug-in: one draw at the mode
            return {"laplace": lap}, Sample(np.asarray(lap.mode)[None], None, 1, None, {})
        # quadrature: a grid around the current mode
        theta, log_q, coarse, edge = sinh_grid(np.asarray(lap.mode), np.asarray(lap.cov), self.cfg)
        return {"laplace": lap}, Sample(theta, log_q, None, coarse, {}, edge)

    def _draw_nuts(self, key, state, X, y):
        cfg = self.cfg
        k1, k2, k3 = jax.random.split(key, 3)
        st = state["nuts"]
        if state["warm"] and cfg.warm_start:
            st = self.nuts.refresh(st, X, y)
            st, _ = self.nuts.run(k1, st, X, y, warmup_schedule(cfg.rewarmup, adapt_mass=False))
        else:
            if state["warm"]:  # cold start requested: start over from dispersed points
                st = self.nuts.init(k3, self.theta0, X, y)
            st, _ = self.nuts.run(k1, st, X, y, warmup_schedule(cfg.num_warmup))
        st, draws = self.nuts.run(k2, st, X, y, sampling_schedule(cfg.num_draws))
        c, n, p = draws.position.shape
        info = {
            "divergences": int(draws.diverging.sum()),
            "mean_accept": float(draws.accept.mean()),
            "mean_tree_size": float(draws.num_steps.mean()),
            "step_size": [float(v) for v in np.asarray(st.step_size)],
        }
        return {"nuts": st, "warm": True}, Sample(draws.position.reshape(c * n, p), None, c, None, info)

    def _draw_reweight(self, key, state, X, y):
        """Reuse stored draws with weights p(.|X)/p(.|X_ref) while their ESS allows."""
        if "theta" in state:
            theta = state["theta"]
            W = normalised_weights(self.vlogp(jnp.asarray(theta), X, y), state["logp_ref"])
            frac = 1.0 / np.sum(W**2) / len(W)
            if frac >= self.cfg.min_ess_fraction:
                info = {"nuts_ran": False, "reweight_ess_fraction": float(frac)}
                return state, Sample(theta, state["logp_ref"], state["chains"], None, info)
        new, sample = self._draw_nuts(key, state, X, y)
        new.update(theta=sample.theta, logp_ref=np.asarray(self.vlogp(jnp.asarray(sample.theta), X, y)),
                   chains=sample.chains)
        sample.info["nuts_ran"] = True
        return new, sample

    def sample_weights(self, sample: Sample, X, y) -> np.ndarray:
        """Normalised weights of a sample's draws at design X (uniform for MCMC)."""
        if sample.log_q is None:
            return np.full(sample.theta.shape[0], 1.0 / sample.theta.shape[0])
        X, y = self._xy(X, y)
        return normalised_weights(self.vlogp(jnp.asarray(sample.theta), X, y), sample.log_q)

    # -- the estimate ----------------------------------------------------------------
    def gradient(self, key, state, X, y=None) -> tuple[dict, GradientEstimate]:
        """F and dF/dX at design X with standard errors; returns the new sampler state."""
        t0 = time.perf_counter()
        X, y = self._xy(X, y)
        if self.kind == "map":
            state, est = self._map_estimate(key, state, X, y)
            if self.check_result is None and self.gradient_check != "off":
                mode = jnp.asarray(state["laplace"].mode)[None]
                s, df = gradcheck.make_derivatives(self.jm)(mode, X, y)
                self._self_check(key, np.asarray(mode), s, df, X, y)
            self._mark(est)
            est.diagnostics["num_draws"] = 0
            est.diagnostics["seconds"] = time.perf_counter() - t0
            return state, est
        state, sample = self.draw(key, state, X, y)
        evaluated = self.terms(jnp.asarray(sample.theta), X, y)
        if self.check_result is None and self.gradient_check != "off":
            W = None if sample.log_q is None else normalised_weights(evaluated[0], sample.log_q)  # logp is in hand
            idx = gradcheck.pick_draws(W, sample.theta.shape[0], 8)
            _, _, df, s = evaluated
            self._self_check(key, sample.theta[idx], np.asarray(s)[idx], np.asarray(df)[idx], X, y)
        est = estimate(self.terms, sample, X, y, evaluated=evaluated)
        target = precision.target_of(self.cfg)
        if self.kind == "importance" and target.active:
            est, sample = self._more_draws(key, state, sample, evaluated, est, X, y, target, t0)
        precision.record(est, target, int(sample.theta.shape[0]), time.perf_counter() - t0)
        if "ess_weights" in est.diagnostics:  # weighted draws: the share the sampler promises
            est.diagnostics["min_ess_fraction"] = float(getattr(self.cfg, "min_ess_fraction", 0.0))
        self._mark(est)
        est.diagnostics.setdefault("divergences", 0)
        est.diagnostics["sampler"] = self.kind
        est.diagnostics["num_draws"] = int(sample.theta.shape[0])
        est.diagnostics["seconds"] = time.perf_counter() - t0
        return state, est

    def _more_draws(self, key, state, sample, evaluated, est, X, y, target, t0):
        """Importance batches from the adapted proposal until the precision target is met or
        the budget (max_draws, max_seconds) runs out. Every batch has the compiled size."""
        thetas, log_qs, evs = [sample.theta], [sample.log_q], [evaluated]
        n, batch, i = sample.theta.shape[0], sample.theta.shape[0], 0
        out_of_time = lambda: target.max_seconds > 0 and time.perf_counter() - t0 >= target.max_seconds  # noqa: E731
        while not precision.reached(est, target) and n + batch <= target.max_draws and not out_of_time():
            want = min(precision.draws_needed(est, n, target), target.max_draws)
            while n < want and n + batch <= target.max_draws and not out_of_time():
                i += 1
                theta, log_q = self.is_draw(jax.random.fold_in(key, 5000 + i), state["prop"])
                thetas.append(np.asarray(theta))
                log_qs.append(np.asarray(log_q))
                evs.append(self.terms(theta, X, y))
                n += batch
            sample = sample._replace(theta=np.concatenate(thetas), log_q=np.concatenate(log_qs))
            evaluated = tuple(jnp.concatenate([e[j] for e in evs]) for j in range(4))
            est = estimate(self.terms, sample, X, y, evaluated=evaluated)
        if not precision.reached(est, target):
            est.diagnostics["target_stop"] = "max_seconds" if out_of_time() else "max_draws"
        return est, sample

    def _self_check(self, key, thetas, s, df, X, y):
        """Compare the derivatives the estimate uses with finite differences (once per engine)."""
        values = gradcheck.make_values(self.jm)
        self.check_result = gradcheck.check_gradients(values, self.jm, thetas, s, df, X, y, jax.random.fold_in(key, 7))
        if self.check_result.problem and self.gradient_check == "error":
            raise PlacementError(self.check_result.problem)

    def _mark(self, est: GradientEstimate) -> None:
        """Carry a failed self-check into the estimate's diagnostics (diagnose() flags it)."""
        r = self.check_result
        if r is not None:
            est.diagnostics["gradient_check"] = r.problem or "passed"
            est.diagnostics["gradient_check_worst"] = r.worst_rel

    def _xy(self, X, y):
        X = jnp.asarray(X, dtype=jnp.float64)
        if X.shape != self.jm.X.shape:
            raise PlacementError(
                f"X has shape {tuple(X.shape)} but the model was built for {self.jm.X.shape}; "
                "the number of points and columns is fixed per problem."
            )
        if y is None:
            y = self.jm.y
        y = None if y is None else jnp.asarray(y, dtype=jnp.float64)
        return X, (y if y is not None else jnp.zeros(0))
