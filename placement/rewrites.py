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

``gp_solves`` is for speed: a GP's predictive as PyMC writes it (``A = solve(L, K_xs)``, mean
``A^T solve(L, y)``, covariance ``K_ss - A^T A``) and a multivariate normal's log density
(``sum(solve(L, y - mu)^2)``, ``sum(log(diag(L)))``) become solves with K and a log-determinant
of K, whose X-derivatives reuse the factorisation instead of running a Cholesky's reverse pass.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytensor.tensor as pt
from pytensor.graph.basic import Variable
from pytensor.graph.replace import graph_replace
from pytensor.graph.rewriting.basic import GraphRewriter
from pytensor.graph.traversal import ancestors
from pytensor.scalar.basic import Add, Clip, Log, Mul, Pow, Sqr
from pytensor.tensor.basic import ExtractDiag
from pytensor.tensor.elemwise import DimShuffle, Elemwise
from pytensor.tensor.blockwise import Blockwise
from pytensor.tensor.math import Dot, Sum
from pytensor.tensor.slinalg import Cholesky, SolveTriangular
from pytensor.tensor.variable import TensorConstant

from placement.posdef import logdet_pos

__all__ = ["exact_distances", "expanded_square_distance", "gp_solves"]


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


def _core_op(var: Variable):
    node = var.owner
    if node is None:
        return None
    return node.op.core_op if isinstance(node.op, Blockwise) else node.op


def _triangular_solve(var: Variable):
    """(L, B, lower) if ``var`` is L^-1 B, a triangular solve with B 2-D, or a solve with a vector
    b made a column (solve(L, b)[:, None]; then B is the vector b), else None."""
    column = _is_column(var) and var.ndim == 2
    inner = var.owner.inputs[0] if column else var
    op = _core_op(inner)
    if not isinstance(op, SolveTriangular) or op.unit_diagonal or op.b_ndim != inner.ndim or var.ndim != 2:
        return None
    L, B = inner.owner.inputs
    return (L, B, op.lower) if L.ndim == 2 else None


def _lower_cholesky_of(L: Variable):
    """K if L = cholesky(K) (lower triangular, L L^T = K), else None."""
    op = _core_op(L)
    return L.owner.inputs[0] if isinstance(op, Cholesky) and op.lower else None


def _is_column(var: Variable) -> bool:
    """True for a vector, or a vector made a column (x[:, None]): one right-hand side."""
    if var.ndim == 1:
        return True
    node = var.owner
    return (var.ndim == 2 and node is not None and isinstance(node.op, DimShuffle)
            and tuple(node.op.new_order) == (0, "x") and node.inputs[0].ndim == 1)


def _solve_pos(K: Variable, B: Variable) -> Variable:
    """K^-1 B for symmetric positive definite K: JAX's solve then reuses the factorisation for
    the reverse pass (``lax.custom_linear_solve``), n^2 per column instead of a Cholesky's
    reverse pass (n^3)."""
    return pt.linalg.solve(K, B, assume_a="pos", lower=True, b_ndim=B.ndim)


def _as_column(z: Variable, like: Variable) -> Variable:
    return z[:, None] if like.ndim == 2 and z.ndim == 1 else z


def gp_solves(outputs: list[Variable]) -> tuple[list[Variable], int]:
    """Rewrite the triangular-solve products of a GP's predictive (``pm.gp.Marginal.predict``,
    ``conditional``) into solves with the covariance K = L L^T:

        solve(L, B)^T solve(L, C)  ->  B^T solve_pos(K, C)     (mean: C = y; covariance: C = B)
        sum(solve(L, B)^2, axis=0) ->  sum(B * solve_pos(K, B), axis=0)   (diagonal variance)
        sum(solve(L, b)^2, axis=-1) -> sum(b * solve_pos(K, b), axis=-1)  (normal's quadratic form)
        sum(log(diag(L)))          ->  logdet_pos(K) / 2                    (normal's log-determinant)

    The same values up to rounding. Cheaper both ways: a predictive mean at the n data points
    solved all n columns of K_xs (n^3), and every X-derivative ran a Cholesky's reverse pass
    (two n x n triangular solves and a product) where the solve's reverse pass reuses the
    factorisation. Where L is not a Cholesky factor, ``solve(L, B)^T x`` with one column x still
    becomes ``B^T solve(L^T, x)``. Returns the new outputs and how many products were replaced."""
    replace = {}
    for var in ancestors(outputs):
        node = var.owner
        if node is None:
            continue
        if isinstance(node.op, Dot):
            At, C = node.inputs
            A = _transposed(At)
            left = None if A is None else _triangular_solve(A)
            if left is None or left[2] is not True or _is_column(A):
                continue
            L, B, _ = left
            right = _triangular_solve(C)
            K = _lower_cholesky_of(L)
            if K is not None and right is not None and right[0] is L and right[2] is True:
                replace[var] = pt.dot(B.T, _as_column(_solve_pos(K, right[1]), C)).astype(var.dtype)
            elif _is_column(C):
                v = C if C.ndim == 1 else C.owner.inputs[0]
                z = pt.linalg.solve_triangular(L, v, lower=True, trans=1, b_ndim=1)
                replace[var] = pt.dot(B.T, _as_column(z, C)).astype(var.dtype)
        elif (A := _sum_of_squares_over_rows(var)) is not None:
            found = _triangular_solve(A)
            K = None if found is None or found[2] is not True else _lower_cholesky_of(found[0])
            if K is not None and not _is_column(A):
                B = found[1]
                replace[var] = pt.sum(B * _solve_pos(K, B), axis=0).astype(var.dtype)
        elif (found := _quadratic_form(var)) is not None:
            K, b = found
            replace[var] = _quadratic_pos(K, b).astype(var.dtype)
        elif (K := _half_logdet_of(var)) is not None:
            half = 0.5 * logdet_pos(K)
            replace[var] = (pt.reshape(half, (1,) * var.ndim) if var.ndim else half).astype(var.dtype)
    if not replace:
        return list(outputs), 0
    return list(graph_replace(list(outputs), replace, strict=False)), len(replace)


def _sum_of_squares_over_rows(var: Variable):
    """A if ``var`` is sum(A ** 2, axis=0) for a 2-D A, else None."""
    node = var.owner
    if node is None or not isinstance(node.op, Sum) or tuple(node.op.axis or ()) != (0,):
        return None
    (sq,) = node.inputs
    return sq.owner.inputs[0] if sq.ndim == 2 and _is_square(sq) else None


def _over_last_axis(node) -> bool:
    """True for a Sum node that sums its (at least 1-D) input over the last axis only."""
    (x,) = node.inputs
    if x.ndim == 0:
        return False
    axes = tuple(range(x.ndim)) if node.op.axis is None else tuple(a % x.ndim for a in node.op.axis)
    return axes == (x.ndim - 1,)


def _is_square(var: Variable) -> bool:
    """True for var ** 2 or sqr(var) (elementwise)."""
    op = _scalar_op(var)
    return isinstance(op, Sqr) or (isinstance(op, Pow) and _constant_value(var.owner.inputs[1]) == 2.0)


def _cholesky_matrix(L: Variable):
    """The 2-D K if L = cholesky(K) lower, where L and K may carry leading axes of length 1
    (one matrix broadcast over a batch), else None."""
    while L.ndim > 2 and L.owner is not None and isinstance(L.owner.op, DimShuffle):
        inner = L.owner.inputs[0]  # strip only L[None, ...]: leading new axes, the rest in order
        if tuple(L.owner.op.new_order) != ("x",) * (L.ndim - inner.ndim) + tuple(range(inner.ndim)):
            break
        L = inner
    K = _lower_cholesky_of(L)
    if K is None or K.ndim < 2 or any(s != 1 for s in K.type.shape[:-2]):
        return None
    return K if K.ndim == 2 else pt.reshape(K, K.shape[-2:], ndim=2)


def _quadratic_form(var: Variable):
    """(K, b) if ``var`` is sum(solve(L, b)^2) over the last axis, L = cholesky(K) lower and b a
    vector or a batch of vectors (``solve_triangular(..., b_ndim=1)``, one K for the whole
    batch), else None: the quadratic form b^T K^-1 b of a multivariate normal."""
    node = var.owner
    if node is None or not isinstance(node.op, Sum):
        return None
    (sq,) = node.inputs
    if not _over_last_axis(node) or not _is_square(sq):
        return None
    z = sq.owner.inputs[0]
    op = _core_op(z)
    if not isinstance(op, SolveTriangular) or op.unit_diagonal or not op.lower or op.b_ndim != 1:
        return None
    L, b = z.owner.inputs
    K = _cholesky_matrix(L)
    if K is None or b.ndim != z.ndim or z.ndim != sq.ndim:
        return None
    return K, b


def _quadratic_pos(K: Variable, b: Variable) -> Variable:
    """sum(b * K^-1 b, axis=-1) for b of shape (..., n), by one solve with all vectors as columns."""
    if b.ndim == 1:
        return pt.dot(b, _solve_pos(K, b))
    B = pt.reshape(b, (-1, b.shape[-1])).T
    return pt.reshape(pt.sum(B * _solve_pos(K, B), axis=0), b.shape[:-1])


def _half_logdet_of(var: Variable):
    """K (2-D) if ``var`` is sum(log(diag(L))) over the diagonal with L = cholesky(K) lower (one
    matrix, possibly with leading axes of length 1), else None."""
    node = var.owner
    if node is None or not isinstance(node.op, Sum):
        return None
    (lg,) = node.inputs
    if not _over_last_axis(node) or not isinstance(_scalar_op(lg), Log):
        return None
    diag = lg.owner.inputs[0]
    dnode = diag.owner
    if dnode is None or not isinstance(dnode.op, ExtractDiag) or dnode.op.offset != 0:
        return None
    L = dnode.inputs[0]
    if {dnode.op.axis1, dnode.op.axis2} != {L.ndim - 2, L.ndim - 1}:
        return None
    return _cholesky_matrix(L)


# -- one copy of each covariance -----------------------------------------------------------------
class SharedSums(GraphRewriter):
    """One node for sums of the same matrices in another order.

    PyMC builds a GP's data covariance twice, for the likelihood and for the predictive, adding
    the noise and the jitter in different orders (after PyTensor flattens nested sums:
    ``add(k, jitter, noise)`` and ``add(k, noise, jitter)``, whose noise terms are also built
    twice), so the compiled program factorised the same matrix twice. Here a sum (of matrices or
    larger) is replaced by an earlier one when its terms are the same computations in some order.
    That is proved on the graph, not on values: one pass in topological order numbers every
    variable by (op, output, the numbers of its inputs, type), with a sum's input numbers sorted,
    constants by value and graph inputs by identity; equal numbers are equal computations, as
    PyTensor's own merge decides, plus commutativity of the sum. XLA then factorises once. Only the
    rounding of the summation order changes."""

    def apply(self, fgraph):
        numbers: dict = {}  # structural key -> number
        number_of: dict = {}  # variable -> number
        first: dict = {}  # number -> the first sum variable with it

        def leaf(var):
            if isinstance(var, TensorConstant):
                data = np.ascontiguousarray(var.data)
                key = ("constant", var.type, data.shape, hashlib.sha256(data.tobytes()).hexdigest())
            else:
                key = ("input", id(var))
            return numbers.setdefault(key, len(numbers))

        for node in list(fgraph.toposort()):
            if node not in fgraph.apply_nodes:
                continue
            ins = [number_of[v] if v in number_of else number_of.setdefault(v, leaf(v)) for v in node.inputs]
            is_sum = (isinstance(node.op, Elemwise) and isinstance(node.op.scalar_op, Add) and len(node.inputs) >= 2
                      and node.outputs[0].ndim >= 2)
            if is_sum:
                ins = sorted(ins)
            for k, out in enumerate(node.outputs):
                number = numbers.setdefault((node.op, k, tuple(ins), out.type), len(numbers))
                number_of[out] = number
                if is_sum:
                    twin = first.setdefault(number, out)
                    if twin is not out:
                        fgraph.replace(out, twin, reason="shared_sums")


SHARED_SUMS = "placement_shared_sums"  # the query tag; the rewrite is registered as "placement_sharedsums"


def shared_sums_tag() -> str:
    """Register ``SharedSums`` in PyTensor's rewrite database (once), after the sums are flattened
    (position 48) and before elementwise fusion (49), under a tag of its own: only queries that
    include the tag run it (placement's export). Returns the tag."""
    from pytensor.compile import optdb

    if "placement_sharedsums" not in optdb:  # once per process, also across reloads of this module
        optdb.register("placement_sharedsums", SharedSums(), SHARED_SUMS, position=48.6)
    return SHARED_SUMS
