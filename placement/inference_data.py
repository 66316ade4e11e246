"""ArviZ output: the posterior draws behind an estimate as an ``arviz.InferenceData``.

Groups:
    posterior: the model's free variables on their natural scale and the objective f, per
        draw. MCMC draws keep their chains. Weighted draws (importance sampling, quadrature
        nodes, reweighted NUTS draws) are resampled to equal weight (systematic resampling,
        then shuffled and split into ``chains`` groups of independent draws), so every ArviZ
        function treats them like MCMC output.
    sample_stats: ``lp`` (log density on the unconstrained scale, Jacobian included) and
        ``weight`` (the normalised weight the draw had before resampling, times the number
        of weighted draws; 1 for MCMC) per draw; ``all_weights`` holds the normalised
        weights of every weighted draw. The estimate (F, F_se) and the sampler's scalar
        diagnostics are the group's attributes.
    constant_data / observed_data: the design X and the observed y it was made at.

Limits: resampled draws repeat; the ESS that ``az.summary`` reports for them counts the
repeats as independent draws. The weights' own ESS is ``sample_stats.attrs["ess_weights"]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from placement.errors import PlacementError


def resample(W: np.ndarray, num: int, seed: int = 0) -> np.ndarray:
    """Indices of ``num`` equal-weight draws from normalised weights W (systematic
    resampling: each draw is kept floor or ceil of num * W_i times), in random order."""
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(W)
    cdf[-1] = 1.0
    idx = np.searchsorted(cdf, (rng.random() + np.arange(num)) / num, side="right")
    return rng.permutation(np.minimum(idx, len(W) - 1))


def clean_weights(W) -> np.ndarray:
    """Normalised weights with non-finite entries (nodes where the model is undefined) at 0."""
    W = np.where(np.isfinite(np.asarray(W, dtype=np.float64)), W, 0.0)
    total = W.sum()
    if not total > 0:
        raise PlacementError("every draw behind this estimate has zero weight; there is no posterior to export.")
    return W / total


def _attrs(diagnostics: dict, F: float, F_se: float) -> dict:
    out = {"F": float(F), "F_se": float(F_se)}
    for k, v in diagnostics.items():
        if isinstance(v, (bool, np.bool_)):
            out[k] = int(v)
        elif isinstance(v, (int, float, str, np.integer, np.floating)):
            out[k] = v
    return out


def draws_of(sample, weights, num_draws: int | None, chains: int, seed: int):
    """(theta (c, m, p), weight (c, m)): the draws to export, chain-major."""
    theta = np.asarray(sample.theta, dtype=np.float64)
    N = theta.shape[0]
    if sample.log_q is None:  # MCMC: equal weights, chains as sampled
        c = sample.chains or 1
        return theta.reshape(c, N // c, -1), np.ones((c, N // c))
    W = clean_weights(weights)
    num = min(N, 4000) if num_draws is None else int(num_draws)
    num -= num % chains
    if num < chains:
        raise PlacementError(f"num_draws must be at least chains ({chains}); got {num_draws}.")
    idx = resample(W, num, seed)
    return theta[idx].reshape(chains, num // chains, -1), (N * W[idx]).reshape(chains, -1)


def to_inference_data(estimate: Any, jm, X, y, weights=None, num_draws: int | None = None, chains: int = 4,
                      seed: int = 0):
    """An ``arviz.InferenceData`` of the posterior draws behind ``estimate`` (see the module
    docstring for its groups).

    Args:
        estimate: a ``GradientEstimate`` that carries its ``sample``.
        jm: the model (``placement.model.JaxModel``) it was made with.
        X, y: the design and the observed data of the estimate.
        weights: normalised weights of the sample's draws (None for MCMC draws).
        num_draws: equal-weight draws to resample weighted draws to (default min(N, 4000));
            MCMC draws are exported as they are.
        chains: groups the resampled draws are split into.
        seed: seed of the resampling.
    """
    import arviz as az
    import jax
    import jax.numpy as jnp
    import xarray as xr

    sample = getattr(estimate, "sample", None)
    if sample is None or estimate.diagnostics.get("sampler") == "map":
        raise PlacementError("this estimate has no posterior draws (sampler=map gives the posterior mode only); "
                             "use sampler=importance, quadrature or nuts to export a posterior.")
    theta, weight = draws_of(sample, weights, num_draws, chains, seed)
    c, m, p = theta.shape
    Xj = jnp.asarray(X, dtype=jnp.float64)
    yj = jnp.zeros(0) if y is None else jnp.asarray(y, dtype=jnp.float64)
    per_draw = jax.jit(jax.vmap(lambda t: (jm.constrain(t), jm.objective(t, Xj, yj), jm.logdensity(t, Xj, yj))))
    named, f, lp = per_draw(jnp.asarray(theta.reshape(c * m, p)))
    posterior = {k: np.asarray(v).reshape(c, m, *np.shape(v)[1:]) for k, v in named.items()}
    posterior[jm.objective_name] = np.asarray(f).reshape(c, m)
    stats = {"lp": np.asarray(lp).reshape(c, m), "weight": weight}
    constant = {jm.data_name: np.asarray(X, dtype=np.float64)}
    observed = {} if y is None or jm.observed_name is None else {jm.observed_name: np.asarray(y, dtype=np.float64)}
    idata = az.from_dict(posterior=posterior, sample_stats=stats, constant_data=constant,
                         observed_data=observed or None, attrs={"inference_library": "placement"})
    if sample.log_q is not None:
        idata.sample_stats["all_weights"] = xr.DataArray(clean_weights(weights), dims=["weighted_draw"])
    idata.sample_stats.attrs.update(_attrs(estimate.diagnostics, estimate.F, estimate.F_se))
    return idata


def write_netcdf(idata, path) -> Any:
    """``idata.to_netcdf`` to a temporary file in the same folder, renamed into place."""
    from pathlib import Path

    from placement.io import atomic_target

    with atomic_target(path) as tmp:
        idata.to_netcdf(tmp)
    return Path(path)
