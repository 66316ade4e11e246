"""The log-determinant of a symmetric positive definite matrix, as a PyTensor Op whose JAX form
differentiates without a Cholesky's reverse pass.

A multivariate normal's log density as PyMC writes it takes ``L = cholesky(K)`` and adds
``sum(log(diag(L)))``. Differentiated in JAX, that runs the Cholesky's reverse pass: two n x n
triangular solves and an n x n product per draw, most of a GP draw's cost at n = 500.
``logdet_pos`` has the derivative d log|K| = tr(K^-1 dK) written out (a custom JVP), so its
reverse pass is one inverse from the same factor and an elementwise product.
``placement.rewrites.gp_solves`` puts it in place of the pattern.

The inverse comes from ``placement.gpjax.inverse_from_factor`` (a blocked potri).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytensor.tensor as pt
from jax.scipy.linalg import cholesky
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.link.jax.dispatch import jax_funcify

from placement.gpjax import inverse_from_factor

__all__ = ["LogDetPos", "logdet_pos", "logdet_pos_jax"]


@jax.custom_jvp
def logdet_pos_jax(K):
    """log |K| for symmetric positive definite K (NaN when the factorisation fails). The lower
    triangle is read, as ``jax.scipy.linalg.cholesky(K, lower=True)`` reads it, so that XLA
    shares one factorisation with the model's other Choleskys and solves of K."""
    L = cholesky(K, lower=True)
    return 2.0 * jnp.sum(jnp.log(jnp.diagonal(L)))


@logdet_pos_jax.defjvp
def _logdet_pos_jvp(primals, tangents):
    (K,), (dK,) = primals, tangents
    L = cholesky(K, lower=True)
    Kinv = inverse_from_factor(L)
    # tr(K^-1 dK) with dK symmetrised: the factor reads one triangle, so the value is a function
    # of sym(K), and K^-1 is symmetric
    return 2.0 * jnp.sum(jnp.log(jnp.diagonal(L))), jnp.sum(Kinv * (dK + dK.T)) / 2.0


class LogDetPos(Op):
    """log |K| of a symmetric positive definite 2-D K (a scalar; NaN when K is not positive
    definite), from K's lower triangle. In JAX (``logdet_pos_jax``) its derivative is tr(K^-1 dK)
    with dK symmetrised, as JAX's own Cholesky treats it."""

    __props__ = ()

    def make_node(self, K):
        K = pt.as_tensor_variable(K)
        if K.ndim != 2:
            raise TypeError(f"LogDetPos needs a 2-D matrix; got {K.ndim} dimensions")
        return Apply(self, [K], [pt.scalar(dtype=K.dtype)])

    def perform(self, node, inputs, outputs):
        (K,) = inputs
        try:
            L = np.linalg.cholesky(np.tril(K) + np.tril(K, -1).T)
            value = 2.0 * np.sum(np.log(np.diag(L)))
        except np.linalg.LinAlgError:
            value = np.nan
        outputs[0][0] = np.asarray(value, dtype=node.outputs[0].dtype)

    def infer_shape(self, fgraph, node, shapes):
        return [()]

    def L_op(self, inputs, outputs, output_grads):
        """The gradient of ``perform``, which reads the lower triangle: K^-1 on the diagonal,
        2 K^-1 below it, 0 above (PyTensor's own Cholesky gradient has the same form)."""
        (K,), (g,) = inputs, output_grads
        Kinv = pt.linalg.solve(K, pt.eye(K.shape[0], dtype=K.dtype), assume_a="pos", lower=True)
        return [g * (2.0 * pt.tril(Kinv, -1) + pt.diag(pt.diagonal(Kinv)))]


logdet_pos = LogDetPos()


@jax_funcify.register(LogDetPos)
def _jax_logdet_pos(op, **kwargs):
    return logdet_pos_jax
