"""MAP estimate and Laplace (Gaussian) approximation of the unconstrained posterior.

Used to place importance proposals and quadrature grids, and as ``sampler=map``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from placement.estimator import Sample
from placement.samplers import Sampler, register

Array = jax.Array


class Laplace(NamedTuple):
    mode: Array  # (p,)
    cov: Array  # (p, p), inverse negative Hessian with eigenvalues floored
    logp: Array  # ()
    converged: Array  # () bool: gradient norm small at the mode


class LaplaceState(NamedTuple):
    fit: Laplace  # the last fit; its mode warm-starts the next


class MAPInfo(NamedTuple):
    map_converged: bool
    note: str = "plug-in value at the MAP; not a posterior mean, no Monte Carlo error"


def make_laplace(logdensity: Callable, num_starts: int = 4, num_steps: int = 200, jitter: float = 1.5):
    """Build ``fit(key, theta0, X, y) -> Laplace`` (jitted once, X and y runtime). Each start
    runs L-BFGS until the gradient norm is at most 1e-9 (1 + |log p|) (or an iterate is not
    finite), at most ``num_steps`` steps."""
    opt = optax.lbfgs()
    tol = 1e-9

    def one_start(theta0, X, y):
        def loss(t):
            return -logdensity(t, X, y)

        vg = optax.value_and_grad_from_state(loss)

        def cond(carry):
            i, _, _, done = carry
            return (i < num_steps) & ~done

        def body(carry):
            i, params, state, _ = carry
            value, grad = vg(params, state=state)
            updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=loss)
            params = optax.apply_updates(params, updates)
            # the line search leaves the value and gradient at the new point in the state
            v, g = optax.tree_utils.tree_get(state, "value"), optax.tree_utils.tree_get(state, "grad")
            gnorm = jnp.linalg.norm(g)
            done = (gnorm <= tol * (1.0 + jnp.abs(v))) | ~jnp.isfinite(gnorm) | ~jnp.all(jnp.isfinite(params))
            return i + 1, params, state, done

        init = (jnp.asarray(0), theta0, opt.init(theta0), jnp.asarray(False))
        _, params, _, _ = jax.lax.while_loop(cond, body, init)
        return params

    @jax.jit
    def fit(key, theta0, X, y):
        p = theta0.shape[0]
        starts = theta0[None, :] + jnp.concatenate(
            [jnp.zeros((1, p)), jax.random.uniform(key, (num_starts - 1, p), minval=-jitter, maxval=jitter)]
        )
        # one start after another (lax.map), not vmapped: a vmapped while loop runs every start
        # for as many steps as the slowest needs, and the line search inside it takes both
        # branches; at n = 500 the pilot took 9.3 s vmapped and 2.3 s in turn (one core)
        ends = jax.lax.map(lambda s: one_start(s, X, y), starts)
        lps = jax.vmap(logdensity, in_axes=(0, None, None))(ends, X, y)
        lps = jnp.where(jnp.isfinite(lps), lps, -jnp.inf)
        best = jnp.argmax(lps)
        mode = ends[best]
        # exact (forward over reverse): a difference Hessian compiled 1 s faster but turned the whole
        # covariance into NaN when one shifted gradient was not finite, and its step ignored the
        # posterior's scale (a 134x wrong curvature for a sharp posterior far from 0; review of e36aafe)
        H = -jax.hessian(logdensity)(mode, X, y)
        H = 0.5 * (H + H.T)
        evals, evecs = jnp.linalg.eigh(H)
        # Floor curvature: a flat or indefinite direction gets a wide (sd 3) Gaussian.
        evals = jnp.where(jnp.isfinite(evals), jnp.maximum(evals, 1.0 / 9.0), 1.0 / 9.0)
        cov = (evecs / evals) @ evecs.T
        g = jax.grad(logdensity)(mode, X, y)
        return Laplace(mode, cov, lps[best], jnp.linalg.norm(g) < 1e-3 * (1.0 + jnp.abs(lps[best])))

    return fit


class MAPConfig(NamedTuple):
    """``sampler=map``: plug-in estimate f(theta*(X), X) at the MAP, no posterior averaging.

    dF/dX = df/dX + df/dtheta . dtheta*/dX with dtheta*/dX = -H^{-1} d^2 log p / dtheta dX
    (implicit function theorem at the mode); standard errors are zero (deterministic).
    """

    num_starts: int = 4
    num_steps: int = 200


def make_map_gradient(logdensity: Callable, objective: Callable):
    """Jitted ``(theta*, X, y) -> (F, dF/dX)`` through the implicit function theorem."""

    @jax.jit
    def value_and_grad(mode, X, y):
        f, (df_dtheta, df_dX) = jax.value_and_grad(objective, argnums=(0, 1))(mode, X, y)
        H = jax.hessian(logdensity)(mode, X, y)
        cross = jax.jacfwd(jax.grad(logdensity), argnums=1)(mode, X, y)  # (p, *X.shape)
        p = mode.shape[0]
        dtheta_dX = -jnp.linalg.solve(H, cross.reshape(p, -1))  # (p, n*d)
        grad = df_dX.reshape(-1) + df_dtheta @ dtheta_dX
        return f, grad.reshape(X.shape)

    return value_and_grad


@register(MAPConfig)
def build(jm, cfg: MAPConfig) -> Sampler:
    """``sampler=map``: one draw at the mode and the implicit-function-theorem plug-in."""
    laplace = make_laplace(jm.logdensity, cfg.num_starts, cfg.num_steps)
    value_and_grad = make_map_gradient(jm.logdensity, jm.objective)
    theta0 = jnp.asarray(jm.initial_point)

    def init(key, X, y):
        return LaplaceState(laplace(key, theta0, X, y))

    def draw(key, state, X, y):
        lap = laplace(key, state.fit.mode, X, y)
        return LaplaceState(lap), Sample(np.asarray(lap.mode)[None], None, 1, None, MAPInfo(bool(lap.converged)))

    def plug_in(state, X, y):
        return value_and_grad(state.fit.mode, X, y)

    return Sampler("map", init, draw, plug_in=plug_in)
