"""Export-time rewrites for speed keep the model's values and X-derivatives."""

import jax
import jax.numpy as jnp
import numpy as np
import pytensor.tensor as pt
from pymc.sampling.jax import get_jaxified_graph
from pytensor.graph.replace import graph_replace
from pytensor.graph.traversal import ancestors
from pytensor.tensor.blockwise import Blockwise
from pytensor.tensor.slinalg import SolveTriangular

from placement import rewrites
from placement.problems import seed_gp


def _solves(outputs, b_ndim):
    ops = [v.owner.op for v in ancestors(outputs) if v.owner is not None]
    ops = [op.core_op if isinstance(op, Blockwise) else op for op in ops]
    return sum(isinstance(op, SolveTriangular) and op.b_ndim == b_ndim for op in ops)


def test_the_predictive_mean_solves_one_column_with_the_same_values_and_gradients():
    """gp_mu = mean of K_xs^T K^-1 y as PyMC writes it (solve(L, K_xs)^T solve(L, y)) solves
    against all n columns of K_xs; rewritten, only against vectors. Values and dF/dX agree."""
    model = seed_gp(n=12)
    X_in = pt.tensor("X_in", dtype="float64", shape=(12,))
    (f,) = model.replace_rvs_by_values([model["gp_mu"]])
    (f,) = graph_replace([f], {model["X"]: X_in}, strict=False)
    (new,), count = rewrites.solve_after_product([f])
    assert count == 1
    assert _solves([f], 2) == 1 and _solves([new], 2) == 0  # the n-column solve is gone

    inputs = list(model.value_vars) + [X_in]
    before, after = (get_jaxified_graph(inputs=inputs, outputs=[g]) for g in (f, new))
    rng = np.random.default_rng(0)
    for _ in range(3):
        theta = [np.asarray(v) for v in rng.normal(0.0, 0.5, 3) + np.log([2.0, 4.0, 0.1])]
        X = jnp.asarray(np.sort(rng.uniform(0, 10, 12)))
        val_b, grad_b = jax.value_and_grad(lambda x: before(*theta, x)[0])(X)
        val_a, grad_a = jax.value_and_grad(lambda x: after(*theta, x)[0])(X)
        np.testing.assert_allclose(val_a, val_b, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(grad_a, grad_b, rtol=1e-7, atol=1e-10 * float(np.abs(grad_b).max()))
