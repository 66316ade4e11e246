"""``sampler=reweight``: reuse the last NUTS draws at a new design with importance weights.

The weights are p(theta, y | X_new) / p(theta, y | X_ref), where X_ref is the design the
draws were made at. While their effective sample size stays above ``min_ess_fraction``
of the draws the outer step costs one vectorised log-density pass; when it drops, warm
NUTS runs at the new design and its draws become the new reference. The draws stay a
chain-major series, so the estimator takes the SE from the ESS of the ratio estimator's
influence values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from placement.estimator import Sample, normalised_weights, shared_logdensity
from placement.nuts import NUTSConfig, NUTSState, make_nuts, run_chains
from placement.samplers import Sampler, register


@dataclass(frozen=True)
class ReweightConfig(NUTSConfig):
    """``sampler=reweight`` (conf/sampler/reweight.yaml): NUTS settings plus the weight-ESS
    share below which NUTS runs again."""

    min_ess_fraction: float = 0.3


class ReweightState(NamedTuple):
    nuts: NUTSState
    theta: np.ndarray | None  # (N, p) reference draws, chain-major
    logp_ref: np.ndarray | None  # (N,) log p(theta, y | X_ref)
    chains: int | None


class ReweightInfo(NamedTuple):
    nuts_ran: bool
    reweight_ess_fraction: float


@register(ReweightConfig)
def build(jm, cfg: ReweightConfig) -> Sampler:
    nuts = make_nuts(jm.logdensity, cfg)
    theta0 = jnp.asarray(jm.initial_point)
    vlogp = shared_logdensity(jm)  # chunked: planned memory, the budget between chunks

    def init(key, X, y):
        return ReweightState(NUTSState(nuts.init(key, theta0, X, y), False), None, None, None)

    def draw(key, state, X, y):
        if state.theta is not None:
            W = normalised_weights(vlogp(state.theta, X, y), state.logp_ref)
            frac = 1.0 / np.sum(W**2) / len(W)
            if frac >= cfg.min_ess_fraction:
                info = ReweightInfo(False, float(frac))
                return state, Sample(state.theta, state.logp_ref, state.chains, None, info)
        ns, sample = run_chains(nuts, theta0, key, state.nuts, X, y)
        logp_ref = vlogp(sample.theta, X, y)
        info = dict(sample.info._asdict(), nuts_ran=True)
        return ReweightState(ns, sample.theta, logp_ref, sample.chains), sample._replace(info=info)

    return Sampler("reweight", init, draw)
