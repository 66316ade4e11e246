"""Kernel gradients (w.r.t. X and hyperparameters) against finite differences, including
coincident points where PyMC's stock kernels differentiate wrongly under JAX."""

import jax
import jax.numpy as jnp
import numpy as np
import pymc as pm
import pytensor.tensor as pt
import pytest
from pymc.sampling.jax import get_jaxified_graph

import placement  # noqa: F401
from placement.kernels import KERNELS

XLA_OPTIMIZED = True  # our kernels at coincident points, where stock ones fail only when optimised

SMOOTH = ["matern32", "matern52", "expquad", "ratquad", "periodic"]


def jax_kernel(name, d):
    X = pt.matrix("X", shape=(5, d))
    ls = pt.vector("ls", shape=(d,))
    K = KERNELS[name](d, ls=ls)(X)
    # a scalar functional that touches every entry, weighted so symmetric errors show
    W = np.arange(25, dtype=float).reshape(5, 5) / 25.0
    out = pt.sum(K * W) + pt.log(pt.linalg.det(K + 0.1 * pt.eye(5)))
    fn = get_jaxified_graph(inputs=[X, ls], outputs=[out, K])
    return lambda X, ls: fn(X, ls)


def central_diff(f, x, h=1e-6):
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = h
        g[i] = (f(x + e) - f(x - e)) / (2 * h)
    return g


@pytest.mark.parametrize("name", SMOOTH)
@pytest.mark.parametrize("d", [1, 2])
def test_gradients_match_finite_differences_with_coincident_points(name, d):
    fn = jax_kernel(name, d)
    rng = np.random.default_rng(1)
    X = rng.uniform(0, 3, (5, d))
    X[3] = X[1]  # two coincident points
    ls = np.linspace(0.7, 1.3, d)
    val = lambda X, ls: float(fn(jnp.asarray(X), jnp.asarray(ls))[0])
    gX, gls = jax.grad(lambda X, ls: fn(X, ls)[0], argnums=(0, 1))(jnp.asarray(X), jnp.asarray(ls))
    assert np.all(np.isfinite(gX)) and np.all(np.isfinite(gls))
    np.testing.assert_allclose(gX, central_diff(lambda x: val(x, ls), X), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gls, central_diff(lambda l: val(X, l), ls), rtol=1e-5, atol=1e-6)


def test_matern12_gradient_finite_away_from_and_at_coincidence():
    fn = jax_kernel("matern12", 1)
    X = np.array([[0.0], [0.5], [1.3], [2.0], [2.9]])
    ls = np.array([1.1])
    val = lambda X, ls: float(fn(jnp.asarray(X), jnp.asarray(ls))[0])
    gX, gls = jax.grad(lambda X, ls: fn(X, ls)[0], argnums=(0, 1))(jnp.asarray(X), jnp.asarray(ls))
    np.testing.assert_allclose(gls, central_diff(lambda l: val(X, l), ls), rtol=1e-5)
    np.testing.assert_allclose(gX, central_diff(lambda x: val(x, ls), X), rtol=1e-5, atol=1e-6)
    X[3] = X[1]
    gX, gls = jax.grad(lambda X, ls: fn(X, ls)[0], argnums=(0, 1))(jnp.asarray(X), jnp.asarray(ls))
    assert np.all(np.isfinite(gX)) and np.all(np.isfinite(gls))


@pytest.mark.parametrize("name,stock", [("matern12", pm.gp.cov.Matern12), ("matern32", pm.gp.cov.Matern32),
                                        ("matern52", pm.gp.cov.Matern52), ("expquad", pm.gp.cov.ExpQuad)])
def test_values_match_pymc_stock_kernels(name, stock):
    X = np.linspace(0, 4, 6)[:, None]
    ours = KERNELS[name](1, ls=1.7)(X).eval()
    theirs = stock(1, ls=1.7)(X).eval()
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_ratquad_and_periodic_values():
    X = np.array([[0.0], [1.0]])
    k = KERNELS["ratquad"](1, ls=2.0, alpha=3.0)(X).eval()
    assert k[0, 1] == pytest.approx((1 + 0.25 / 6.0) ** -3.0)
    p = KERNELS["periodic"](1, ls=1.5, period=4.0)(X).eval()
    assert p[0, 1] == pytest.approx(np.exp(-2 * np.sin(np.pi / 4.0) ** 2 / 1.5**2))
    assert p[0, 0] == pytest.approx(1.0)


def test_the_light_name_table_names_every_kernel_class():
    import subprocess
    import sys

    from placement.gpjax import KERNEL_CLASSES

    assert {n: c.__name__ for n, c in KERNELS.items()} == KERNEL_CLASSES
    # placement suggest (closed-form path) runs without importing PyMC
    code = ("import sys, numpy as np\nfrom placement.suggest import SuggestConfig, suggest_arrays\n"
            "x = np.linspace(0, 1, 8)[:, None]\n"
            "suggest_arrays(x, np.sin(6 * x[:, 0]), None, SuggestConfig(k=1, restarts=4, steps=5, num_hyper=4, "
            "num_fantasies=4, grid=16, progress='off'))\n"
            "print(sorted(m for m in ('pymc', 'pytensor', 'arviz') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "[]", r.stdout
