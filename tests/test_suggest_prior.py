"""The hyperparameter priors of `placement suggest`: the fixed and the spacing-scaled
length-scale priors against SciPy's InverseGamma and PyMC's log density."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import invgamma

import placement  # noqa: F401
from placement.errors import PlacementError
from placement.kernels import KERNELS
from placement.suggest import SuggestConfig
from placement.suggest.hyper import (SPACING_FLOOR, SPACING_TAIL, _hyper_score, fixed_prior, hyper_logdensity,
                                     inverse_gamma_from_tails, make_prior, spacing_prior, suggest_model)


@pytest.mark.parametrize("lo,hi", [(0.004, 1.0), (0.05, 1.0), (0.3, 1.0)])
def test_inverse_gamma_from_tails_puts_the_asked_mass_in_each_tail(lo, hi):
    a, b = inverse_gamma_from_tails(lo, hi)
    assert invgamma.cdf(lo, a, scale=b) == pytest.approx(SPACING_TAIL, rel=1e-8)
    assert invgamma.sf(hi, a, scale=b) == pytest.approx(SPACING_TAIL, rel=1e-6)


def test_fixed_prior_is_the_inverse_gamma_with_mean_0_3_and_sd_0_2():
    pr = fixed_prior(3)
    assert invgamma.mean(pr.a, scale=pr.b) == pytest.approx(np.full(3, 0.3), rel=1e-12)
    assert invgamma.std(pr.a, scale=pr.b) == pytest.approx(np.full(3, 0.2), rel=1e-12)


def test_spacing_prior_takes_each_columns_smallest_gap_between_distinct_values():
    X = np.array([[0.0, 0.5, 0.2], [0.1, 0.5, 0.2 + 1e-6], [0.15, 0.2, 0.7], [1.0, 0.9, 1.0]])
    pr = spacing_prior(X)
    lo = np.array([0.05, 0.3, SPACING_FLOOR])  # gaps .1 .05 .85 | .3 .4 (repeated .5 once) | 1e-6 -> floor
    np.testing.assert_allclose(invgamma.cdf(lo, pr.a, scale=pr.b), SPACING_TAIL, rtol=1e-8)
    np.testing.assert_allclose(invgamma.sf(1.0, pr.a, scale=pr.b), SPACING_TAIL, rtol=1e-6)
    fixed = make_prior("fixed", X)
    np.testing.assert_allclose(fixed.a, fixed_prior(3).a)
    with pytest.raises(PlacementError, match="ell_prior must be one of fixed, spacing"):
        make_prior("wide", X)


@pytest.mark.parametrize("kind,noise_sd", [("spacing", 0.5), ("spacing", 0.2), ("fixed", 0.1), ("default", None)])
def test_prior_density_matches_the_pymc_model(kind, noise_sd):
    """hyper_logdensity (used for the mode, the Newton steps and the importance weights), with
    a HyperPrior or the default one (None), is the PyMC model's log density with the same
    priors (Jacobians included); the closed-form gradient and observed information agree
    with autodiff of it."""
    from placement.model import from_pymc

    rng = np.random.default_rng(11)
    X, y = rng.uniform(0, 1, (7, 2)), rng.normal(size=7)
    pr = None if kind == "default" else make_prior(kind, X, noise_sd)
    jm = from_pymc(suggest_model(X, y, KERNELS["matern52"], pr), "eta_sq")
    assert [p.split("_log__")[0] for p in jm.param_names] == ["ell", "ell", "eta", "sigma"]  # our layout
    jpr = None if pr is None else type(pr)(*(jnp.asarray(v, dtype=jnp.float64) for v in pr))
    # jitted: eager calls would compile every operation of the closed form one by one
    density = jax.jit(hyper_logdensity, static_argnums=0)
    score = jax.jit(_hyper_score, static_argnums=0)
    grad = jax.jit(jax.grad(hyper_logdensity, argnums=1), static_argnums=0)
    hess = jax.jit(jax.hessian(hyper_logdensity, argnums=1), static_argnums=0)
    pymc_density = jax.jit(jm.logdensity)
    for _ in range(3):
        th = rng.normal(scale=0.5, size=4) + np.array([np.log(0.1), np.log(0.3), 0.0, np.log(0.3)])
        args = ("matern52", jnp.asarray(th), jnp.asarray(X), jnp.asarray(y), jpr)
        ours = float(density(*args))
        assert ours == pytest.approx(float(pymc_density(jnp.asarray(th), jnp.asarray(X), jnp.asarray(y))), rel=1e-8)
        lp, g, H, _ = score(*args)
        assert float(lp) == pytest.approx(ours, rel=1e-10)
        np.testing.assert_allclose(np.asarray(g), np.asarray(grad(*args)), rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(np.asarray(H), -np.asarray(hess(*args)), rtol=1e-7, atol=1e-9)
    if kind == "spacing":  # the prior is not the fixed one: the densities differ
        fixed = float(density("matern52", jnp.asarray(th), jnp.asarray(X), jnp.asarray(y)))
        assert abs(fixed - ours) > 1e-2


def test_the_spacing_prior_reaches_the_suggestion():
    """sampler=map with ell_prior=spacing returns the mode of the spacing-prior density:
    its gradient vanishes there, and that of the fixed-prior density does not."""
    import pandas as pd

    from placement.suggest import suggest

    rng = np.random.default_rng(5)
    x = np.sort(rng.uniform(0, 10, 12))
    y = np.sin(3 * x) + 0.05 * rng.normal(size=12)
    out = suggest(pd.DataFrame({"x": x, "y": y}), k=2, bounds=[[0, 10]], sampler="map", ell_prior="spacing",
                  restarts=2, steps=20, grid=32, progress="off")
    info = out.attrs["info"]
    ell, eta, sigma = info["hyper"]
    th = jnp.asarray(np.log(np.concatenate([ell[0], eta, sigma])))
    X, yn = jnp.asarray(info["Xn"]), jnp.asarray(info["yn"])
    pr = make_prior("spacing", info["Xn"])
    g = np.asarray(jax.grad(hyper_logdensity, argnums=1)("matern52", th, X, yn, pr))
    g_fixed = np.asarray(jax.grad(hyper_logdensity, argnums=1)("matern52", th, X, yn))
    assert np.abs(g).max() < 1e-5
    assert np.abs(g_fixed).max() > 1e-2


@pytest.mark.parametrize("opts,message", [({"ell_prior": "wide"}, "ell_prior must be one of fixed, spacing"),
                                          ({"noise_sd": 0}, "noise_sd must be a positive number"),
                                          ({"noise_sd": "x"}, "noise_sd must be a positive number")])
def test_bad_prior_settings_are_one_clear_error(opts, message):
    with pytest.raises(PlacementError, match=message):
        SuggestConfig(**opts)
