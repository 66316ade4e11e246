"""One problem, compiled once: a sampler behind one interface, and the gradient estimate.

``Engine(jm, sampler_cfg)`` builds the sampler registered for the config's type and the
identity's jitted terms;
``init(key, X, y)`` returns a sampler state and ``gradient(key, state, X, y)`` returns
``(new_state, GradientEstimate)``. Passing the returned state to the next call at a new
X is the warm start (NUTS positions, step sizes and mass matrix; the importance
sampler's posterior fit; the Laplace mode).
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from placement import budget, distributed, gradcheck, precision, samplers
from placement.errors import PlacementError
from placement.estimator import GradientEstimate, Sample, estimate, normalised_weights, shared_logdensity, shared_terms
from placement.model import JaxModel

# every built-in sampler registers itself on import
from placement import importance, laplace, nuts, quadrature, reweight  # noqa: E402,F401  isort: skip


class Engine:
    """Compiled functions for one model and one sampler configuration: the glue between a
    sampler (placement/samplers.py) and the gradient identity (placement/estimator.py)."""

    def __init__(self, jm: JaxModel, sampler_cfg: Any, gradient_check: str = "error"):
        if gradient_check not in gradcheck.MODES:
            raise PlacementError(f"gradient_check must be one of {', '.join(gradcheck.MODES)}; got {gradient_check!r}.")
        self.jm = jm
        self.cfg = sampler_cfg
        self.gradient_check = gradient_check
        self.check_result: gradcheck.CheckResult | None = None  # set by the first estimate
        self.sampler = samplers.build(jm, sampler_cfg)
        self.kind = self.sampler.name
        self.terms = shared_terms(jm)
        self.vlogp = shared_logdensity(jm)  # in the terms' chunks: planned memory, the budget between chunks

    # -- sampler state -------------------------------------------------------------
    def init(self, key, X, y):
        """Initial sampler state (cold start) at design X."""
        X, y = self._xy(X, y)
        try:  # a sampler's first fit (the importance pilot) checks the time budget between chunks
            return self.sampler.init(key, X, y)
        except budget.OutOfTime:
            raise budget.nothing_yet(budget.current().max_seconds, "the sampler's first fit was complete") from None

    def draw(self, key, state, X, y) -> tuple[Any, Sample]:
        """Draw (or lay out) points for the identity at design X."""
        X, y = self._xy(X, y)
        return self.sampler.draw(key, state, X, y)

    def sample_weights(self, sample: Sample, X, y) -> np.ndarray:
        """Normalised weights of a sample's draws at design X (uniform for MCMC)."""
        if sample.log_q is None:
            return np.full(sample.theta.shape[0], 1.0 / sample.theta.shape[0])
        X, y = self._xy(X, y)
        return normalised_weights(self.vlogp(sample.theta, X, y), sample.log_q)

    # -- the estimate ----------------------------------------------------------------
    def gradient(self, key, state, X, y=None) -> tuple[Any, GradientEstimate]:
        """F and dF/dX at design X with standard errors; returns the new sampler state."""
        t0 = time.perf_counter()
        X, y = self._xy(X, y)
        try:  # the first estimate is all or nothing; a time budget (placement.budget) may only cut what follows
            state, sample = self.sampler.draw(key, state, X, y)
            evaluated = None if self.sampler.plug_in is not None else self.terms(jnp.asarray(sample.theta), X, y)
        except budget.OutOfTime:
            raise budget.nothing_yet(budget.current().max_seconds, "the first estimate was complete") from None
        if self.sampler.plug_in is not None:
            est = self._plug_in(key, state, sample, X, y)
        else:
            if self.check_result is None and self.gradient_check != "off":
                W = None if sample.log_q is None else normalised_weights(evaluated[0], sample.log_q)  # logp is in hand
                idx = gradcheck.pick_draws(W, sample.theta.shape[0], 8)
                _, _, df, s = evaluated
                self._self_check(key, sample.theta[idx], np.asarray(s)[idx], np.asarray(df)[idx], X, y)
            est = estimate(self.terms, sample, X, y, evaluated=evaluated)
            target = precision.target_of(self.cfg)
            budget.status(f"{precision.describe(est, target)} from {sample.theta.shape[0]} draws")
            if self.sampler.extend is not None and target.active:
                state, est, sample = self._more_draws(key, state, sample, evaluated, est, X, y, target, t0)
            precision.record(est, target, int(sample.theta.shape[0]), time.perf_counter() - t0)
        if "ess_weights" in est.diagnostics:  # weighted draws: the share the sampler promises
            est.diagnostics["min_ess_fraction"] = float(getattr(self.cfg, "min_ess_fraction", 0.0))
        self._mark(est)
        est.diagnostics.setdefault("divergences", 0)
        est.diagnostics["sampler"] = self.kind
        est.diagnostics["num_draws"] = 0 if self.sampler.plug_in is not None else int(sample.theta.shape[0])
        est.diagnostics["seconds"] = time.perf_counter() - t0
        return state, est._replace(sample=sample)

    def _plug_in(self, key, state, sample, X, y) -> GradientEstimate:
        """A deterministic answer (MAP): no identity, no Monte Carlo error."""
        F, grad = self.sampler.plug_in(state, X, y)
        if self.check_result is None and self.gradient_check != "off":
            mode = jnp.asarray(sample.theta)
            s, df = gradcheck.make_derivatives(self.jm)(mode, X, y)
            self._self_check(key, np.asarray(mode), s, df, X, y)
        grad = np.asarray(grad)
        diag = dict(samplers.as_dict(sample.info), rhat_max=float("nan"), ess_bulk_min=float("nan"))
        return GradientEstimate(float(F), grad, 0.0, np.zeros_like(grad), diag)

    def _more_draws(self, key, state, sample, evaluated, est, X, y, target, t0):
        """``extend`` batches at the same design until the precision target is met or the
        budget (max_draws, max_seconds) runs out. Every batch has the compiled size."""
        n, i = sample.theta.shape[0], 0
        out_of_time = lambda: distributed.agree(  # noqa: E731 - several processes: process 0's clock decides
            (target.max_seconds > 0 and time.perf_counter() - t0 >= target.max_seconds) or budget.current().passed())
        batch, cut = n, False
        try:
            while not precision.reached(est, target) and n + batch <= target.max_draws and not out_of_time():
                want = min(precision.draws_needed(est, n, target), target.max_draws)
                budget.checkpoint(n, want)  # the standing status says the precision reached
                while n < want and n + batch <= target.max_draws and not out_of_time():
                    i += 1
                    with budget.counting(n, max(want, n + batch)):  # progress: n + this batch's draws
                        state, new = self.sampler.extend(jax.random.fold_in(key, 5000 + i), state, X, y)
                        batch = new.theta.shape[0]
                        sample, evaluated = merge(sample, evaluated, new, self.terms(jnp.asarray(new.theta), X, y))
                    n = sample.theta.shape[0]
                est = estimate(self.terms, sample, X, y, evaluated=evaluated)
                budget.status(f"{precision.describe(est, target)} from {n} draws")
        except budget.OutOfTime:  # the batch in flight is dropped; the draws merged so far stand
            est, cut = estimate(self.terms, sample, X, y, evaluated=evaluated), True
        if cut or budget.current().passed():
            est.diagnostics["cut_short"] = "max_seconds"
        if not precision.reached(est, target):
            est.diagnostics["target_stop"] = "max_seconds" if out_of_time() or cut else "max_draws"
        return state, est, sample

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


def _chain_major(a, chains):
    return np.asarray(a).reshape(chains, -1, *np.shape(a)[1:])


def merge(a: Sample, ev_a, b: Sample, ev_b):
    """Join two samples (and their evaluated terms) at one design. Chain-major MCMC series
    are joined chain by chain, so each chain stays one continuing series."""
    if a.chains is None:
        cat = lambda u, v: None if u is None else np.concatenate([np.asarray(u), np.asarray(v)])  # noqa: E731
    else:
        c = a.chains
        cat = lambda u, v: None if u is None else np.concatenate(  # noqa: E731
            [_chain_major(u, c), _chain_major(v, c)], axis=1).reshape(-1, *np.shape(u)[1:])
    info = samplers.as_dict(a.info)  # the first batch's (adaptation, aim); divergences add up
    new = samplers.as_dict(b.info)
    if "divergences" in info and "divergences" in new:
        info["divergences"] = int(info["divergences"]) + int(new["divergences"])
    groups = a.groups + b.groups if a.groups and b.groups else None  # RQMC sets add up
    joined = Sample(cat(a.theta, b.theta), cat(a.log_q, b.log_q), a.chains, cat(a.twos, b.twos), info,
                    cat(a.edge, b.edge), groups)
    return joined, tuple(jnp.asarray(cat(u, v)) for u, v in zip(ev_a, ev_b))
