"""Expected information gain about chosen parameters: the ``eig`` objective of predictive mode.

For parameters of interest psi (the rest, nu, are nuisance) and a design X,

    EIG(X) = E_{theta ~ p(theta), y ~ p(y | theta, X)} [ log p(y | psi, X) - log p(y | X) ],

the expected drop in entropy of psi from the data the design could give (Lindley 1956). It is
a property of X alone (no measured y), so it is defined only in ``y_mode=predictive``.

Estimator: prior contrastive estimation (PCE; Foster et al. 2020, "A unified stochastic
gradient approach to designing Bayesian-optimal experiments", eq. 11; pyro.contrib.oed's
``pce_eig``). Fantasy j of predictive mode supplies theta0_j from the prior and y_j(X), a draw
of p(y | theta0_j, X) that moves smoothly with X (common random numbers); L contrastive draws
theta_jl from the prior, fixed for the whole run and independent across fantasies, give

    g_j(X) = log p(y_j | theta0_j, X) - log[ (p(y_j | theta0_j, X) + sum_l p(y_j | theta_jl, X)) / (L + 1) ],

and EIG_hat = mean_j g_j. With nuisance parameters (``params`` a subset), the first term
becomes the same log-mean with psi held at psi0_j and nu from the contrastive draws,
log[(p(y_j | theta0_j) + sum_l p(y_j | psi0_j, nu_jl)) / (L + 1)], a nested Monte Carlo
estimate of log p(y | psi0) (Foster et al. 2019, "Variational Bayesian optimal experimental
design", section on nuisance variables); this needs nu's prior to be free of psi (checked).

Bias and variance:
- all parameters: E[g_j] <= EIG (a lower bound, since the log of an unbiased estimate of
  p(y | X) that includes the true theta0 is biased up on average); the gap falls like O(1/L)
  once L is much larger than exp(EIG), and g_j <= log(L + 1) always, so L must exceed
  exp(EIG) by a margin (measured on the linear-Gaussian model in docs/concepts/design-mode.md).
- nuisance parameters: both log-means are biased low by O(1/L); their difference is neither
  a lower nor an upper bound.
- the reported SE is the spread of the J independent g_j, sd / sqrt(J): the variance, not the
  bias. Each g_j is a smooth function of X, so the gradient is their X-derivative by autodiff
  (through y_j(X): the reparameterisation gradient of Foster et al. 2020), with the same SE.

Cost: J (L + 1) (or J (2L + 1) with nuisance) evaluations of log p(y | theta, X) per design,
no posterior sampling.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from placement.errors import PlacementError
from placement.estimator import GradientEstimate

NAME = "eig"
DEFAULT_CONTRASTIVE = 512


class EIGConfig(NamedTuple):
    """params: names of the free variables of interest (empty = all); contrastive: L."""

    params: tuple = ()
    contrastive: int = DEFAULT_CONTRASTIVE


def eig_config(options: dict | None) -> EIGConfig:
    """EIGConfig from the objective's options {"params": [...], "contrastive": L}, checked."""
    options = dict(options or {})
    unknown = set(options) - {"params", "contrastive", "name", "direction"}
    if unknown:
        raise PlacementError(f"unknown eig option {sorted(unknown)[0]!r}; the options are params, contrastive.")
    params = options.get("params") or ()
    if isinstance(params, str):
        params = (params,)
    L = options.get("contrastive", DEFAULT_CONTRASTIVE)
    try:
        L = int(L)
    except (TypeError, ValueError):
        raise PlacementError(f"objective.contrastive must be a whole number >= 1; got {L!r}.") from None
    if L < 1:
        raise PlacementError(f"objective.contrastive must be >= 1; got {L}.")
    return EIGConfig(tuple(str(p) for p in params), L)


def params_mask(model, params: tuple) -> np.ndarray:
    """Boolean mask over the flat unconstrained coordinates: True for the parameters of
    interest. One PlacementError for an unknown name, or a nuisance prior that depends on them."""
    from pytensor.graph.traversal import ancestors

    from placement.model import _flat_layout

    free = {rv.name: rv for rv in model.free_RVs}
    bad = [p for p in params if p not in free]
    if bad:
        raise PlacementError(f"objective.params: {bad[0]!r} is not a free variable of the model; choose from "
                             f"{', '.join(free)}.")
    chosen = set(params) or set(free)
    names, _, sizes, _ = _flat_layout(model)
    value_of = {model.rvs_to_values[rv].name: rv.name for rv in model.free_RVs}
    mask = np.concatenate([np.full(s, value_of[v] in chosen) for v, s in zip(names, sizes)])
    for name, rv in free.items():
        if name in chosen:
            continue
        parents = set(ancestors(rv.owner.inputs)) & {free[p] for p in chosen}
        if parents:
            raise PlacementError(f"objective=eig: the prior of nuisance parameter {name!r} depends on "
                                 f"{sorted(p.name for p in parents)[0]!r}; the nuisance estimator needs independent "
                                 "priors. Add it to objective.params or leave params empty (all parameters).")
    return mask


def check(y_mode: str, objective: str | None) -> None:
    """objective=eig needs y_mode=predictive."""
    if objective == NAME and y_mode != "predictive":
        raise PlacementError(f"objective=eig is an expectation over the data a design could give, so it needs "
                             f"problem.y_mode=predictive (y_mode='predictive' in the API); got y_mode={y_mode}.")


def pce_terms(loglik, y_of, mask):
    """g(u, theta0, theta_c, X) -> the PCE term of one fantasy (module docstring)."""
    nuisance = not bool(np.all(mask))
    m = jnp.asarray(mask)

    def g(u, theta0, theta_c, X):
        y = y_of(u, X)
        ll0 = loglik(theta0, X, y)
        llc = jax.vmap(lambda t: loglik(t, X, y))(theta_c)
        L = theta_c.shape[0]
        den = jax.nn.logsumexp(jnp.concatenate([ll0[None], llc])) - jnp.log(L + 1.0)
        if not nuisance:
            return ll0 - den
        lln = jax.vmap(lambda t: loglik(jnp.where(m, theta0, t), X, y))(theta_c)
        num = jax.nn.logsumexp(jnp.concatenate([ll0[None], lln])) - jnp.log(L + 1.0)
        return num - den

    return g


class EIGSetup(NamedTuple):
    """What the EIG engine needs besides the model: contrastive (J, L, p) prior draws, fixed
    for the run; mask (p,) the parameters of interest; cfg."""

    contrastive: np.ndarray
    mask: np.ndarray
    cfg: EIGConfig


def prepare(model, fantasies, options: dict | None, seed: int) -> EIGSetup:
    """Check the options and draw the contrastive parameters from the prior (seed [seed, 3])."""
    from placement.predictive import prior_draws

    cfg = eig_config(options)
    mask = params_mask(model, cfg.params)
    J = fantasies.theta0.shape[0]
    theta = prior_draws(model, J * cfg.contrastive, int(np.random.default_rng([seed, 3]).integers(2**31)))
    return EIGSetup(theta.reshape(J, cfg.contrastive, -1), mask, cfg)


class EIGEngine:
    """The ``eig`` objective over a problem's fantasies, with the ``Engine`` interface the
    loop and the API use (no sampler state: the fantasies and contrastive draws are fixed)."""

    kind = "eig"

    def __init__(self, jm, fantasies, setup: EIGSetup):
        contrastive, mask, cfg = setup
        self.jm = jm
        self.fantasies, self.cfg = fantasies, cfg
        self.theta0 = jnp.asarray(fantasies.theta0)
        self.contrastive = jnp.asarray(contrastive)  # (J, L, p)
        self.mask = mask
        g = pce_terms(jm.loglik, fantasies.y_of, mask)
        vg = jax.value_and_grad(g, argnums=3)
        self._terms = jax.jit(lambda X: jax.lax.map(lambda a: vg(a[0], a[1], a[2], X),
                                                    (jnp.asarray(fantasies.u), self.theta0, self.contrastive)))
        self.check_result = None

    @property
    def J(self) -> int:
        return int(self.theta0.shape[0])

    def y_at(self, X, j: int = 0) -> np.ndarray:
        return np.asarray(self.fantasies.y_of(jnp.asarray(self.fantasies.u[j]), jnp.asarray(X, dtype=jnp.float64)))

    def terms(self, X):
        """(J,) PCE terms g_j and (J, *X.shape) their X-gradients at design X."""
        g, dg = self._terms(jnp.asarray(X, dtype=jnp.float64))
        return np.asarray(g), np.asarray(dg)

    def estimate(self, X) -> GradientEstimate:
        t0 = time.perf_counter()
        g, dg = self.terms(X)
        J = g.shape[0]
        se = float(g.std(ddof=1) / np.sqrt(J)) if J > 1 else float("inf")
        gse = dg.std(axis=0, ddof=1) / np.sqrt(J) if J > 1 else np.full(dg.shape[1:], np.inf)
        grad = dg.mean(0)
        L = int(self.contrastive.shape[1])
        d = {"sampler": "pce", "y_mode": "predictive", "objective": NAME, "fantasies": J, "contrastive": L,
             "params": list(self.cfg.params) or "all", "nuisance": bool(not np.all(self.mask)),
             "eig_max": float(np.log(L + 1.0)), "num_draws": int(J * (L + 1)),
             "rel_se": float(np.linalg.norm(gse) / max(np.linalg.norm(grad), 1e-300)),
             "seconds": time.perf_counter() - t0, "warnings": []}
        if np.all(self.mask) and g.mean() > np.log(L + 1.0) - 1.0:
            d["warnings"].append(f"the EIG estimate {g.mean():.3g} is near its ceiling log(L + 1) = {np.log(L + 1.0):.3g}: "
                                 "it is biased low; raise objective.contrastive.")
        if not np.isfinite(g).all() or not np.isfinite(dg).all():
            d["warnings"].append("the EIG terms are not finite at this design: log p(y | theta, X) is undefined there.")
        d["trusted"] = not d["warnings"]
        return GradientEstimate(float(g.mean()), grad, se, gse, d)

    # -- the Engine interface ------------------------------------------------------------
    def init(self, key, X, y=None):
        return ()

    def gradient(self, key, state, X, y=None):
        return state, self.estimate(X)

    def robust_gradient(self, key, state, X, y, cfg):
        from placement.retry import Attempts

        est = self.estimate(X)
        trusted = est.diagnostics["trusted"]
        return state, est, Attempts([[] if trusted else ["eig"]], [], trusted)
