"""The t-mixture machinery of the importance sampler: draws follow their density (the aimed
proposal's variance cut is tested against the seed quadrature in test_exact_seed.py)."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from placement import mixtures


def test_gammaincinv_matches_scipy():
    v = np.concatenate([np.logspace(-12, -1, 30), np.linspace(0.05, 0.95, 30), 1 - np.logspace(-12, -1, 30)])
    for a in (0.5, 2.0, 5.5):
        got = np.asarray(mixtures.gammaincinv(a, jnp.asarray(v)))
        np.testing.assert_allclose(got, special.gammaincinv(a, v), rtol=1e-10)


def test_transform_draws_follow_the_mixture_density():
    """Uniforms mapped by ``transform`` are draws of the mixture whose density ``logpdf``
    gives: a KS test per axis against the CDF integrated from logpdf on a grid."""
    mix = mixtures.Mixture(jnp.array([[0.0, 0.0], [3.0, -1.0]]),
                           jnp.array([[[1.0, 0.0], [0.5, 0.8]], [[0.4, 0.0], [0.0, 2.0]]]), jnp.log(jnp.array([0.3, 0.7])))
    u = mixtures.mc_uniforms(0, n=20000, p=2)
    theta = np.asarray(mixtures.transform(mix, u, df=4.0))
    # marginals of a t mixture: each component's marginal is t(df) with the scale of that axis
    for axis in range(2):
        scale = np.sqrt(np.sum(np.asarray(mix.chols)[:, axis, :] ** 2, axis=1))
        loc = np.asarray(mix.means)[:, axis]
        w = np.exp(np.asarray(mix.logw))
        cdf = lambda x: sum(wk * stats.t.cdf(x, 4.0, loc=lk, scale=sk) for wk, lk, sk in zip(w, loc, scale))  # noqa: E731
        assert stats.kstest(theta[:, axis], cdf).pvalue > 1e-3
    # and logpdf is that density: it integrates to 1 on a wide grid
    g = np.linspace(-40, 40, 801)
    G = jnp.asarray(np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2))
    mass = np.exp(np.asarray(mixtures.logpdf(mix, G, 4.0))).sum() * (g[1] - g[0]) ** 2
    assert mass == pytest.approx(1.0, abs=5e-3)


def test_padded_mixture_has_the_same_density_and_the_same_draws():
    """``pad_components`` (zero-weight copies in front, so mixtures of every size share one
    compiled shape) changes neither the density nor the draws from the same uniforms, including
    uniforms at the ends of the component coordinate."""
    mix = mixtures.Mixture(jnp.array([[0.0, 0.0], [3.0, -1.0]]),
                           jnp.array([[[1.0, 0.0], [0.5, 0.8]], [[0.4, 0.0], [0.0, 2.0]]]), jnp.log(jnp.array([0.3, 0.7])))
    padded = mixtures.pad_components(mix, 5)
    assert padded.logw.shape == (5,) and np.all(np.isneginf(padded.logw[:3]))
    u = mixtures.mc_uniforms(1, n=4000, p=2)
    u[:3, 0] = [0.0, 0.3, 1.0 - 1e-17]  # the ends, and the boundary between the two components
    np.testing.assert_array_equal(np.asarray(mixtures.transform(padded, u, df=4.0)),
                                  np.asarray(mixtures.transform(mix, u, df=4.0)))
    theta = np.asarray(mixtures.transform(mix, u, df=4.0))
    np.testing.assert_allclose(np.asarray(mixtures.logpdf(padded, theta, 4.0)),
                               np.asarray(mixtures.logpdf(mix, theta, 4.0)), rtol=1e-14)
    assert mixtures.pad_components(mix, 2).logw.shape == (2,)


def test_aim_fit_ignores_rows_padded_with_zero_weight():
    """The importance sampler pads each aim stage's pooled rows to all stages' rows (log p =
    -inf: zero weight) so its EM fit compiles once; the fitted proposal is the one of the rows
    alone."""
    from placement.importance import ISConfig, Proposal, make_aim, pad_aim_rows

    rng = np.random.default_rng(0)
    N, p, k = 600, 3, 4
    theta = rng.normal(size=(N, p))
    rows = [theta, -0.5 * np.sum(theta**2, 1), rng.normal(size=N), rng.normal(size=(N, k)), rng.normal(size=(N, k)),
            -0.4 * np.sum(theta**2, 1)]
    prop = Proposal(jnp.zeros(p), jnp.eye(p))
    fit = make_aim(ISConfig(aim_samples=2 * N))
    alone = fit(prop, *rows)
    padded = pad_aim_rows(rows, 2 * N)
    assert [a.shape[0] for a in padded] == [2 * N] * 6
    padded = fit(prop, *padded)
    for a, b in zip(alone, padded):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-9, atol=1e-12)
