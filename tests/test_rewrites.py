"""Export-time rewrites for speed keep the model's values and X-derivatives."""

import jax
import jax.numpy as jnp
import numpy as np
import pymc as pm
import pytensor.tensor as pt
import pytest
from pymc.sampling.jax import get_jaxified_graph
from pytensor.graph.replace import graph_replace
from pytensor.graph.traversal import ancestors
from pytensor.tensor.blockwise import Blockwise
from pytensor.tensor.slinalg import SolveTriangular

from placement import rewrites
from placement.kernels import Matern52
from placement.problems import seed_gp

N = 12


def diag_variance_model() -> pm.Model:
    """A Marginal GP whose objective is the mean predictive variance on a grid, from
    ``_predict_at(diag=True)``: sum(solve(L, K_xs)^2, axis=0)."""
    X = np.linspace(0.5, 9.5, N)
    with pm.Model() as m:
        Xd = pm.Data("X", X)
        ell = pm.InverseGamma("ell", mu=1.0, sigma=0.6)
        eta = pm.Exponential("eta", scale=3.0)
        sigma = pm.HalfNormal("sigma", 1.0)
        gp = pm.gp.Marginal(cov_func=eta**2 * Matern52(1, ls=ell))
        gp.marginal_likelihood("y_obs", X=Xd[:, None], y=np.sin(X), sigma=sigma)
        _, var = gp._predict_at(np.linspace(0, 10, 7)[:, None], diag=True)
        pm.Deterministic("v", var.mean())
    return m


def _wide_solves(outputs):
    """Triangular solves against more than one column (n^2 per column, and a Cholesky's
    reverse pass behind their X-derivatives)."""
    found = 0
    for v in ancestors(outputs):
        op = v.owner.op if v.owner is not None else None
        op = op.core_op if isinstance(op, Blockwise) else op
        if isinstance(op, SolveTriangular) and op.b_ndim == 2:
            found += 1
    return found


CASES = [(lambda: seed_gp(n=N), "gp_mu"), (lambda: seed_gp(n=N), "integrated_variance"),
         (lambda: seed_gp(n=N), "target_variance"), (diag_variance_model, "v")]


@pytest.mark.parametrize("build, name", CASES, ids=[c[1] for c in CASES])
def test_gp_predictive_solves_keep_values_and_gradients(build, name):
    """PyMC's predictive mean, covariance and diagonal variance (products of solve(L, K_xs)),
    rewritten into solves with K: no wide triangular solve is left, and the value and dF/dX
    agree with the original graph at random parameters and designs."""
    model = build()
    X_in = pt.tensor("X_in", dtype="float64", shape=(N,))
    (f,) = model.replace_rvs_by_values([model[name]])
    (f,) = graph_replace([f], {model["X"]: X_in}, strict=False)
    (new,), count = rewrites.gp_solves([f])
    assert count >= 1 and _wide_solves([f]) >= 1 and _wide_solves([new]) == 0

    inputs = list(model.value_vars) + [X_in]
    before, after = (get_jaxified_graph(inputs=inputs, outputs=[g]) for g in (f, new))
    rng = np.random.default_rng(0)
    for _ in range(3):
        theta = [np.asarray(v) for v in rng.normal(0.0, 0.5, 3) + np.log([2.0, 4.0, 0.1])]
        X = jnp.asarray(np.sort(rng.uniform(0, 10, N)))
        val_b, grad_b = jax.value_and_grad(lambda x: before(*theta, x)[0])(X)
        val_a, grad_a = jax.value_and_grad(lambda x: after(*theta, x)[0])(X)
        np.testing.assert_allclose(val_a, val_b, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(grad_a, grad_b, rtol=1e-6, atol=1e-9 * float(np.abs(grad_b).max()))


def test_a_column_product_with_a_non_cholesky_factor_solves_one_column():
    """solve(L, B)^T c[:, None] for a triangular L that is not a Cholesky factor becomes
    B^T solve(L^T, c): the same values (PyTensor's own evaluation)."""
    import pytensor

    L, B, c = pt.matrix("L"), pt.matrix("B"), pt.vector("c")
    expr = pt.dot(pt.linalg.solve_triangular(L, B, lower=True).T, c[:, None])
    (new,), count = rewrites.gp_solves([expr])
    assert count == 1 and _wide_solves([new]) == 0
    rng = np.random.default_rng(1)
    args = (np.tril(rng.normal(size=(5, 5))) + 5 * np.eye(5), rng.normal(size=(5, 3)), rng.normal(size=5))
    before, after = (pytensor.function([L, B, c], g)(*args) for g in (expr, new))
    np.testing.assert_allclose(after, before, rtol=1e-12)


def batched_normal_model() -> pm.Model:
    """Three observed rows sharing one X-dependent covariance: a batched quadratic form
    (a blockwise triangular solve with one vector per row) and one log-determinant."""
    X = np.linspace(0.5, 9.5, N)
    rows = np.sin(X)[None, :] + np.arange(3)[:, None] * 0.1
    with pm.Model() as m:
        Xd = pm.Data("X", X)
        ell = pm.InverseGamma("ell", mu=1.0, sigma=0.6)
        eta = pm.Exponential("eta", scale=3.0)
        sigma = pm.HalfNormal("sigma", 1.0)
        K = eta**2 * Matern52(1, ls=ell)(Xd[:, None]) + sigma**2 * pt.eye(N)
        pm.MvNormal("y_obs", mu=pt.zeros(N), cov=K, observed=rows)
    return m


def _log_density_graphs(model):
    X_in = pt.tensor("X_in", dtype="float64", shape=(N,))
    (logp,) = graph_replace([model.logp(jacobian=True)], {model["X"]: X_in}, strict=False)
    return logp, list(model.value_vars) + [X_in]


def _log_determinants_by_cholesky(outputs) -> int:
    """sum(log(diag(cholesky(K)))) sub-graphs: each runs a Cholesky's reverse pass when differentiated."""
    return sum(rewrites._half_logdet_of(v) is not None for v in ancestors(outputs))


@pytest.mark.parametrize("build", [lambda: seed_gp(n=N), batched_normal_model], ids=["marginal_gp", "batched_rows"])
def test_normal_log_density_solves_keep_values_and_derivatives(build):
    """A multivariate normal's log density (PyMC's quadratic form through solve(L, y - mu) and
    sum(log(diag(L)))), rewritten into a solve with K and a log-determinant of K: the value,
    the gradient in theta and X and the Hessian in theta (what the Laplace fit uses) agree with
    the original graph at random parameters and designs; a covariance that is not positive
    definite gives the same non-finite log density."""
    logp, inputs = _log_density_graphs(build())
    (new,), count = rewrites.gp_solves([logp])
    assert count == 2 and _log_determinants_by_cholesky([logp]) == 1 and _log_determinants_by_cholesky([new]) == 0
    before, after = (get_jaxified_graph(inputs=inputs, outputs=[g]) for g in (logp, new))
    flat = lambda fn: lambda t, x: fn(t[0], t[1], t[2], x)[0]  # noqa: E731
    # value, theta-gradient, X-gradient, theta-Hessian (each jitted once: run eagerly, every
    # primitive of the Hessian compiled on its own, some 450 compiles)
    derivatives = (lambda g: g, jax.grad, lambda g: jax.grad(g, argnums=1), jax.hessian)
    pairs = [(jax.jit(d(flat(before))), jax.jit(d(flat(after)))) for d in derivatives]
    rng = np.random.default_rng(2)
    for _ in range(3):
        theta = jnp.asarray(rng.normal(0.0, 0.5, 3) + np.log([2.0, 1.0, 0.3]))
        X = jnp.asarray(np.sort(rng.uniform(0, 10, N)))
        for i, (fb, fa) in enumerate(pairs):
            b, a = fb(theta, X), fa(theta, X)
            rtol, atol = (1e-7, 1e-9) if i == 3 else (1e-8, 1e-10)
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol * float(np.abs(b).max()))
    C, v = pt.matrix("C"), pt.vector("v")  # a covariance that is not positive definite
    direct = pm.logp(pm.MvNormal.dist(mu=pt.zeros(4), cov=C), v)
    (rewritten,), count = rewrites.gp_solves([direct])
    assert count == 2
    before, after = (get_jaxified_graph(inputs=[C, v], outputs=[g]) for g in (direct, rewritten))
    C0, v0 = np.diag([1.0, 2.0, -0.5, 3.0]), np.ones(4)
    b, a = before(C0, v0)[0], after(C0, v0)[0]
    assert not np.isfinite(b) and np.array_equal(a, b, equal_nan=True)


@pytest.mark.parametrize("n", [1, 7, 64, 65, 150, 300])
def test_inverse_from_the_factor_equals_the_inverse_at_every_block_split(n):
    """The blocked inverse (one solve up to 64 rows, halves above) equals NumPy's inverse, batched
    too, with sizes on both sides of a split and odd halves."""
    from placement.gpjax import inverse_from_factor

    rng = np.random.default_rng(n)
    A = rng.normal(size=(2, n, n))
    K = A @ np.swapaxes(A, 1, 2) + n * np.eye(n)
    L = np.linalg.cholesky(K)
    got = np.asarray(jax.jit(jax.vmap(inverse_from_factor))(jnp.asarray(L)))
    want = np.linalg.inv(K)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.abs(want).max())


def test_logdet_pos_second_derivatives_hold_past_the_block_split():
    """At n = 100 (two levels of the blocked inverse) on an ill-conditioned kernel matrix (Matern 5/2
    on close points plus 1e-6 I, condition number ~1e7), the directional second derivative of
    log|K| (what the Laplace fit's Hessians take through logdet_pos's JVP) is -tr(K^-1 dK K^-1 dK),
    computed by NumPy in solves."""
    from placement.posdef import logdet_pos_jax

    rng = np.random.default_rng(5)
    x = np.sort(rng.uniform(0.0, 3.0, 100))
    r = np.abs(x[:, None] - x[None, :]) / 0.7
    K = (1.0 + np.sqrt(5) * r + 5.0 / 3.0 * r**2) * np.exp(-np.sqrt(5) * r) + 1e-6 * np.eye(100)
    dK = rng.normal(size=(100, 100)) * K
    dK = dK + dK.T
    second = jax.jit(lambda K, dK: jax.jvp(lambda k: jax.jvp(logdet_pos_jax, (k,), (dK,))[1], (K,), (dK,))[1])
    got = float(second(jnp.asarray(K), jnp.asarray(dK)))
    S = np.linalg.solve(K, dK)
    want = -np.trace(S @ S)
    assert np.linalg.cond(K) > 1e6
    assert abs(got - want) <= 1e-7 * abs(want), (got, want)


def test_logdet_pos_has_the_exact_derivative_and_rejects_indefinite_matrices():
    """logdet_pos equals log|K| (NumPy's slogdet), its gradient is K^-1, forward-mode agrees with
    reverse-mode, and an indefinite K gives NaN in JAX and in PyTensor's own evaluation."""
    import pytensor

    from placement.posdef import logdet_pos, logdet_pos_jax

    rng = np.random.default_rng(3)
    A = rng.normal(size=(6, 6))
    K = A @ A.T + 6 * np.eye(6)
    np.testing.assert_allclose(logdet_pos_jax(jnp.asarray(K)), np.linalg.slogdet(K)[1], rtol=1e-13)
    np.testing.assert_allclose(jax.grad(logdet_pos_jax)(jnp.asarray(K)), np.linalg.inv(K), rtol=1e-10, atol=1e-13)
    dK = rng.normal(size=(6, 6))
    dK = dK + dK.T
    _, fwd = jax.jvp(logdet_pos_jax, (jnp.asarray(K),), (jnp.asarray(dK),))
    np.testing.assert_allclose(fwd, np.sum(np.linalg.inv(K) * dK), rtol=1e-10)
    bad = K - 20 * np.eye(6) * np.abs(np.linalg.eigvalsh(K)).max()
    assert np.isnan(logdet_pos_jax(jnp.asarray(bad)))
    M = pt.matrix("M")
    fn = pytensor.function([M], [logdet_pos(M), pytensor.grad(logdet_pos(M), M)])
    value, grad = fn(K)
    np.testing.assert_allclose(value, np.linalg.slogdet(K)[1], rtol=1e-13)
    lower = 2 * np.tril(np.linalg.inv(K), -1) + np.diag(np.diag(np.linalg.inv(K)))  # perform reads one triangle
    np.testing.assert_allclose(grad, lower, rtol=1e-10, atol=1e-13)
    assert np.isnan(fn(bad)[0])


def test_only_the_identities_are_rewritten():
    """A leading broadcast of one K is rewritten (same values); an upper factor, a transposed or
    permuted factor, a unit-diagonal solve and a sum over the wrong axis are left alone."""
    import pytensor

    K, b = pt.tensor("K", shape=(1, 4, 4)), pt.matrix("b")
    L = pt.linalg.cholesky(K, lower=True)
    quad = lambda F, **kw: pt.sum(pt.linalg.solve_triangular(F, b, b_ndim=1, **kw) ** 2, axis=-1)  # noqa: E731
    half_logdet = lambda F: pt.sum(pt.log(pt.diagonal(F, axis1=-2, axis2=-1)), axis=-1)  # noqa: E731
    rng = np.random.default_rng(4)
    A = rng.normal(size=(4, 4))
    args = ((A @ A.T + 4 * np.eye(4))[None], rng.normal(size=(3, 4)))
    L2 = pt.linalg.cholesky(K[0], lower=True)  # one 2-D factor broadcast over the rows
    for expr in (quad(L, lower=True), half_logdet(L), quad(L2[None], lower=True), half_logdet(L2)):
        (new,), count = rewrites.gp_solves([expr])
        assert count == 1
        before, after = (pytensor.function([K, b], g, on_unused_input="ignore")(*args) for g in (expr, new))
        np.testing.assert_allclose(after, before, rtol=1e-12)
    U = pt.linalg.cholesky(K, lower=False)
    left_alone = [quad(U, lower=False), half_logdet(U), quad(L.mT, lower=True), quad(L2.T[None], lower=True),
                  quad(L, lower=True, unit_diagonal=True), half_logdet(L.dimshuffle(1, 0, 2)),
                  pt.sum(pt.linalg.solve_triangular(L, b, lower=True, b_ndim=1) ** 2, axis=0)]
    for expr in left_alone:
        assert rewrites.gp_solves([expr])[1] == 0


def test_sums_of_the_same_terms_share_one_node_and_others_do_not():
    """SharedSums (in the export's rewrite pass) replaces a sum whose terms are the same
    computations in another order, one of them built again, by the first sum; a sum with one
    different term stays. The values are unchanged."""
    from pytensor.compile.mode import JAX
    from pytensor.graph.fg import FunctionGraph
    from pytensor.link.jax.dispatch import jax_funcify

    a, s1, s2 = pt.matrix("a"), pt.scalar("s1"), pt.scalar("s2")
    first = a + s1**2 * pt.eye(3) + 1e-6 * pt.eye(3)
    again = (a + 1e-6 * pt.eye(3)) + s1**2 * pt.eye(3)  # the same terms, built again, in another order
    other = (a + 1e-6 * pt.eye(3)) + s2**2 * pt.eye(3)
    fg = FunctionGraph([a, s1, s2], [first, again, other], clone=True)
    JAX.including(rewrites.shared_sums_tag()).optimizer.rewrite(fg)
    assert fg.outputs[0] is fg.outputs[1] and fg.outputs[2] is not fg.outputs[0]
    args = (np.arange(9.0).reshape(3, 3), 0.5, 0.7)
    before = get_jaxified_graph(inputs=[a, s1, s2], outputs=[first, again, other])(*args)
    for x, y in zip(jax_funcify(fg)(*args), before):
        np.testing.assert_allclose(x, y, rtol=1e-15)


def test_an_exported_gp_factorises_its_covariance_once_per_draw():
    """The seed GP's log density and objective (integrated variance) build the data covariance
    separately in PyMC; compiled together for a draw's terms, the program has one Cholesky."""
    from placement.estimator import _one_terms
    from placement.model import from_pymc

    jm = from_pymc(seed_gp(n=N), "integrated_variance")
    X, y, theta = jnp.asarray(jm.X), jnp.asarray(jm.y), jnp.asarray(jm.initial_point)
    text = jax.jit(lambda t: _one_terms(jm)(t, X, y)).lower(theta).compile().as_text()
    assert text.count('custom_call_target="lapack_dpotrf') == 1
