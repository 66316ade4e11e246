"""Adaptive importance sampling with a heavy-tailed, defensive mixture proposal.

Why: on the seed posterior plain NUTS under-visits a small "noise explains the data"
region (0.3% of the mass) whose weight the gradient identity amplifies about forty-fold;
r_hat does not flag it and MCMC standard errors do not cover the error. Independent
draws from a proposal wider than the posterior reach every region in proportion, and
the delta-method standard error of the self-normalised estimator is honest as long as
the weights have finite variance (the Student-t tails here are heavier than the
posterior's, and the Pareto k diagnostic reports when they are not).

The proposal is a two-component multivariate Student-t mixture around the current
mean and covariance (from a Laplace fit, or from the previous outer step); it is
re-fitted from the weighted draws ``adapt_iters`` times before the final batch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln

from placement.errors import PlacementError
from placement.estimator import Sample
from placement.laplace import make_laplace
from placement.samplers import Sampler, register

Array = jax.Array


@dataclass(frozen=True)
class ISConfig:
    """Settings for ``sampler=importance`` (documented in conf/sampler/importance.yaml)."""

    num_samples: int = 16384
    adapt_samples: int = 4096
    adapt_iters: int = 2
    pilot: str = "wide"
    pilot_scale: float = 2.0
    pilot_iters: int = 6
    df: float = 4.0
    scales: tuple = (1.3, 3.0)
    mix: tuple = (0.7, 0.3)
    min_ess_fraction: float = 0.05
    rel_se: float = 0.0  # precision target |grad_se| / |grad|: draw more batches until met (0 = off)
    abs_se: float = 0.0  # absolute target on |grad_se| (0 = off)
    max_draws: int = 1 << 20  # budget for the target
    max_seconds: float = 0.0  # time budget for the target (0 = none)

    def safer(self, level: int):
        """Retry settings: a fresh pilot, longer adaptation, more draws."""
        f = 2**level
        new = replace(self, adapt_iters=self.adapt_iters * f, pilot_iters=self.pilot_iters * f,
                      num_samples=self.num_samples * f)
        return new, (f"re-initialised proposal, adapt_iters={new.adapt_iters}, pilot_iters={new.pilot_iters}, "
                     f"num_samples={new.num_samples}")


class Proposal(NamedTuple):
    mean: Array  # (p,)
    chol: Array  # (p, p) Cholesky factor of the base covariance


def _mvt_logpdf(z, df, p):
    """log density of a standard multivariate t at z (..., p)."""
    q = jnp.sum(z**2, axis=-1)
    return gammaln((df + p) / 2) - gammaln(df / 2) - 0.5 * p * jnp.log(df * jnp.pi) - 0.5 * (df + p) * jnp.log1p(q / df)


def proposal_logpdf(prop: Proposal, theta, cfg: ISConfig):
    p = theta.shape[-1]
    z = jax.scipy.linalg.solve_triangular(prop.chol, (theta - prop.mean).T, lower=True).T
    logdet = jnp.sum(jnp.log(jnp.diag(prop.chol)))
    comps = [jnp.log(w) + _mvt_logpdf(z / s, cfg.df, p) - p * jnp.log(s) - logdet for s, w in zip(cfg.scales, cfg.mix)]
    return jax.scipy.special.logsumexp(jnp.stack(comps), axis=0)


def proposal_sample(key, prop: Proposal, n: int, cfg: ISConfig):
    p = prop.mean.shape[0]
    k1, k2, k3 = jax.random.split(key, 3)
    z = jax.random.normal(k1, (n, p))
    g = jax.random.gamma(k2, cfg.df / 2, (n,)) / (cfg.df / 2)
    comp = jax.random.choice(k3, len(cfg.scales), (n,), p=jnp.asarray(cfg.mix))
    scale = jnp.asarray(cfg.scales)[comp]
    t = z / jnp.sqrt(g)[:, None] * scale[:, None]
    return prop.mean + t @ prop.chol.T


def proposal_from_moments(mean, cov) -> Proposal:
    p = mean.shape[0]
    cov = 0.5 * (cov + cov.T) + 1e-9 * jnp.eye(p)
    return Proposal(mean, jnp.linalg.cholesky(cov))


def make_importance(logdensity: Callable, cfg: ISConfig):
    """Build jitted ``adapt(key, prop, X, y) -> prop`` and ``draw(key, prop) -> (theta, log_q)``."""
    vlogp = jax.vmap(logdensity, in_axes=(0, None, None))

    @partial(jax.jit, static_argnames=("iters",))
    def adapt(key, prop, X, y, iters=cfg.adapt_iters):
        def body(i, prop):
            k = jax.random.fold_in(key, i)
            theta = proposal_sample(k, prop, cfg.adapt_samples, cfg)
            log_w = vlogp(theta, X, y) - proposal_logpdf(prop, theta, cfg)
            log_w = jnp.where(jnp.isfinite(log_w), log_w, -jnp.inf)
            W = jax.nn.softmax(log_w)
            mean = W @ theta
            d = theta - mean
            cov = (W[:, None] * d).T @ d
            new = proposal_from_moments(mean, cov)
            ok = jnp.all(jnp.isfinite(new.chol)) & jnp.all(jnp.isfinite(new.mean))
            return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, prop)

        return jax.lax.fori_loop(0, iters, body, prop)

    @jax.jit
    def draw(key, prop):
        theta = proposal_sample(key, prop, cfg.num_samples, cfg)
        return theta, proposal_logpdf(prop, theta, cfg)

    return adapt, draw


class ISState(NamedTuple):
    prop: Proposal  # the adapted proposal, carried to the next design


@register(ISConfig)
def build(jm, cfg: ISConfig) -> Sampler:
    """``sampler=importance``: adapt the proposal at each design, then one batch of draws;
    ``extend`` draws further batches from the same adapted proposal."""
    if cfg.pilot not in ("wide", "laplace"):
        raise PlacementError(f"sampler.pilot must be 'wide' or 'laplace' (got {cfg.pilot!r}).")
    adapt, draw_batch = make_importance(jm.logdensity, cfg)
    laplace = make_laplace(jm.logdensity) if cfg.pilot == "laplace" else None
    theta0 = jnp.asarray(jm.initial_point)

    def init(key, X, y):
        if laplace is not None:
            lap = laplace(key, theta0, X, y)
            return ISState(proposal_from_moments(lap.mode, lap.cov))
        # a wide proposal around the initial point, adapted from its own draws
        prop = proposal_from_moments(theta0, cfg.pilot_scale**2 * jnp.eye(jm.ndim))
        return ISState(adapt(key, prop, X, y, iters=cfg.pilot_iters))

    def draw(key, state, X, y):
        k1, k2 = jax.random.split(key)
        prop = adapt(k1, state.prop, X, y)
        theta, log_q = draw_batch(k2, prop)
        return ISState(prop), Sample(np.asarray(theta), np.asarray(log_q), None, None, {})

    def extend(key, state, X, y):
        theta, log_q = draw_batch(key, state.prop)
        return state, Sample(np.asarray(theta), np.asarray(log_q), None, None, {})

    return Sampler("importance", init, draw, extend)
