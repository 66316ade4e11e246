"""Graph rewrites applied when a PyMC model is exported, so its X-gradients are right.

PyMC's stock stationary kernels (``pm.gp.cov.ExpQuad``, ``Matern12/32/52``, ``RatQuad``,
``Exponential``, ``Cosine``, and ``Gibbs``) form squared distances by the expanded form

    r2 = clip(-2 A B^T + |a|^2 + |b|^2, 0, inf)

(``Stationary.square_dist``). At and near coincident points the expression is a
difference of large, nearly equal numbers: on the diagonal it rounds to about +-1e-16
instead of 0, and the clip then passes or blocks the gradient depending on the sign of
that rounding. Downstream ``sqrt(r2 + 1e-12)`` multiplies the spurious derivative by up to
5e5, so d log p / dX and df / dX come out wrong (measured: a 1-D Matern52 model's dF/dX
off by a factor of 12-20) while the values look fine.

``exact_distances`` finds every such sub-graph and replaces it by the difference form
``sum((a_i - b_j)^2)``, which is exactly zero on the diagonal and has the exact gradient.
The values are unchanged up to rounding; the user's model is not modified.

``solve_after_product`` is for speed: a GP's predictive mean as PyMC writes it,
``A = solve(L, K_xs); mu = A^T v``, solves against all m columns of K_xs (n^2 m work, n^3 for
the mean at the n data points themselves) where ``K_xs^T solve(L^T, v)`` needs n^2.
"""

from __future__ import annotations

import numpy as np
import pytensor.tensor as pt
from pytensor.graph.basic import Variable
from pytensor.graph.replace import graph_replace
from pytensor.graph.traversal import ancestors
from pytensor.scalar.basic import Add, Clip, Mul
from pytensor.tensor.elemwise import DimShuffle, Elemwise
from pytensor.tensor.blockwise import Blockwise
from pytensor.tensor.math import Dot
from pytensor.tensor.slinalg import SolveTriangular
from pytensor.tensor.variable import TensorConstant

__all__ = ["exact_distances", "expanded_square_distance", "solve_after_product"]


def _scalar_op(var: Variable):
    node = var.owner
    if node is None or not isinstance(node.op, Elemwise):
        return None
    return node.op.scalar_op


def _constant_value(var: Variable):
    """The value of a (possibly broadcast) scalar constant, else None."""
    while var.owner is not None and isinstance(var.owner.op, DimShuffle):
        var = var.owner.inputs[0]
    if isinstance(var, TensorConstant) and var.data.size == 1:
        return float(np.asarray(var.data).ravel()[0])
    return None


def _transposed(var: Variable):
    """B when ``var`` is B.T (a 2-D transpose), else None."""
    node = var.owner
    if node is not None and isinstance(node.op, DimShuffle) and tuple(node.op.new_order) == (1, 0):
        return node.inputs[0]
    return None


def expanded_square_distance(clip_out: Variable):
    """(A, B) if ``clip_out`` is clip(-2 A B^T + (...), 0, inf), else None.

    The remaining terms of the sum are not inspected; ``placement.model.from_pymc``
    checks that the rewritten graph has the same values as the original."""
    if not isinstance(_scalar_op(clip_out), Clip):
        return None
    x, lo, hi = clip_out.owner.inputs
    if _constant_value(lo) != 0.0 or _constant_value(hi) != np.inf:
        return None
    if not isinstance(_scalar_op(x), Add):  # canonicalised graphs flatten the sum
        return None
    for term in x.owner.inputs:
        if not isinstance(_scalar_op(term), Mul) or len(term.owner.inputs) != 2:
            continue
        a, b = term.owner.inputs
        for const, prod in ((a, b), (b, a)):
            if _constant_value(const) != -2.0 or prod.owner is None or not isinstance(prod.owner.op, Dot):
                continue
            A, Bt = prod.owner.inputs
            B = _transposed(Bt)
            if B is not None and A.ndim == 2 and B.ndim == 2:
                return A, B
    return None


def exact_distances(outputs: list[Variable]) -> tuple[list[Variable], int]:
    """Replace every expanded-form squared distance in ``outputs``' graphs by the
    difference form. Returns the new outputs and how many sub-graphs were replaced."""
    replace = {}
    for var in ancestors(outputs):
        found = expanded_square_distance(var)
        if found is not None:
            A, B = found
            diff = A[:, None, :] - B[None, :, :]
            replace[var] = pt.sum(pt.square(diff), axis=-1).astype(var.dtype)
    if not replace:
        return list(outputs), 0
    return list(graph_replace(list(outputs), replace, strict=False)), len(replace)


def _triangular_solve(var: Variable):
    """(L, B, lower) if ``var`` is a 2-D right-hand side triangular solve L^-1 B, else None."""
    node = var.owner
    if node is None:
        return None
    op = node.op.core_op if isinstance(node.op, Blockwise) else node.op
    if not isinstance(op, SolveTriangular) or op.unit_diagonal or op.b_ndim != 2 or var.ndim != 2:
        return None
    L, B = node.inputs
    return (L, B, op.lower) if L.ndim == 2 else None


def _is_column(var: Variable) -> bool:
    """True for a vector, or a vector made a column (x[:, None]): one right-hand side."""
    if var.ndim == 1:
        return True
    node = var.owner
    return (var.ndim == 2 and node is not None and isinstance(node.op, DimShuffle)
            and tuple(node.op.new_order) == (0, "x"))


def solve_after_product(outputs: list[Variable]) -> tuple[list[Variable], int]:
    """Replace every ``dot(solve(L, B)^T, x)`` with one column x by ``dot(B^T, solve(L^T, x))``:
    the same value (up to rounding) for n^2 work instead of n^2 times B's columns. The solve of
    all of B stays where something else still uses it. Returns the new outputs and the count."""
    replace = {}
    for var in ancestors(outputs):
        node = var.owner
        if node is None or not isinstance(node.op, Dot):
            continue
        At, x = node.inputs
        A = _transposed(At)
        found = None if A is None else _triangular_solve(A)
        if found is None or not _is_column(x):
            continue
        L, B, lower = found
        v = x if x.ndim == 1 else x.owner.inputs[0]
        z = pt.linalg.solve_triangular(L, v, lower=lower, trans=1, b_ndim=1)
        z = z if x.ndim == 1 else z[:, None]
        replace[var] = pt.dot(B.T, z).astype(var.dtype)
    if not replace:
        return list(outputs), 0
    return list(graph_replace(list(outputs), replace, strict=False)), len(replace)
