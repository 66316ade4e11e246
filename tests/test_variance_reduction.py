"""The t-mixture machinery of the importance sampler: draws follow their density (the aimed
proposal's variance cut is tested against the seed quadrature in test_exact_seed.py)."""

import jax
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
    u = mixtures.mc_uniforms(jax.random.PRNGKey(0), n=20000, p=2)
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
