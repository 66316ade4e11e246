"""Self-check of the X-gradients the estimate uses, against finite differences.

The identity needs d log p(theta, y | X)/dX and df/dX to be right; a model can hide an
operation whose compiled derivative is wrong (an expanded-form distance with a clip, a
custom kernel with a kink, a stop-gradient). Once per problem, at a few posterior draws
(the first estimate's own draws, chosen by weight), the derivatives the estimator
computed are projected on random unit directions V and compared with a Richardson-
extrapolated central difference of the compiled values

    D(h) = (g(X + h V) - g(X - h V)) / (2 h),   R = (4 D(h/2) - D(h)) / 3   (error O(h^4)).

It checks the very numbers the estimator uses: one wrong derivative was seen only in the
jitted reverse-mode graph, while eager and forward-mode derivatives were right.
A mismatch beyond ``rtol (|ad| + |R|) + atol`` names the function and the container; atol
covers the rounding error of the quotients (about eps |g| / h) and their disagreement
|D(h) - D(h/2)| (here and, times NOISE, the largest over the draw's directions), so rounding
noise in the values cannot raise an alarm.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from placement.model import JaxModel

RTOL = 1e-4
NOISE = 4.0  # multiple of the largest |D(h) - D(h/2)| over a draw's directions allowed as rounding
MODES = ("error", "untrusted", "off")


class CheckResult(NamedTuple):
    """Outcome of the check: ``problem`` is None when every comparison agreed."""

    problem: str | None
    worst_rel: float  # largest |ad - fd| / (|ad| + |fd| + atol) over all comparisons
    points: int  # posterior draws checked
    directions: int  # random directions per draw


def make_values(jm: JaxModel) -> Callable:
    """Jitted ``values(thetas[B, p], Xs[B, *X], y) -> (B, 2)``: log density and objective."""

    @jax.jit
    def values(thetas, Xs, y):
        return jax.vmap(lambda t, x: jnp.stack([jm.logdensity(t, x, y), jm.objective(t, x, y)]))(thetas, Xs)

    return values


def make_derivatives(jm: JaxModel) -> Callable:
    """Jitted ``derivs(thetas[k, p], X, y) -> (s[k, *X], df[k, *X])`` for samplers that do not
    evaluate the identity's terms themselves (MAP)."""

    @jax.jit
    def derivs(thetas, X, y):
        s = jax.vmap(jax.grad(jm.logdensity, argnums=1), in_axes=(0, None, None))(thetas, X, y)
        df = jax.vmap(jax.grad(jm.objective, argnums=1), in_axes=(0, None, None))(thetas, X, y)
        return s, df

    return derivs


def _host_rng(key) -> np.random.Generator:
    """A NumPy generator seeded by a JAX key (jax.random.normal compiled a program per shape)."""
    data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    return np.random.default_rng(np.asarray(data, dtype=np.uint32).ravel().tolist())


def check_gradients(values: Callable, jm: JaxModel, thetas, s, df, X, y, key, directions: int = 3) -> CheckResult:
    """Compare the derivatives ``s`` = d log p/dX and ``df`` = df/dX (each (k, *X), at
    ``thetas`` (k, p)) with finite differences of ``values`` along random directions."""
    # host-side arrays (NumPy): each eager jnp operation compiled a small program of its own
    X = np.asarray(X, dtype=np.float64)
    thetas = np.asarray(thetas, dtype=np.float64)
    k, m = thetas.shape[0], directions
    V = _host_rng(key).standard_normal((m,) + X.shape)
    V = V / np.sqrt(np.sum(V**2, axis=tuple(range(1, V.ndim)), keepdims=True))
    h = 1e-5 * (float(np.std(X)) or 1.0)  # small: non-smooth kernels (Matern12) near close pairs
    steps = np.asarray([h, -h, h / 2, -h / 2, 0.0])
    # every (draw, direction, step) combination as one batch: (k, m, 5)
    Xs = X[None, None, None] + steps[None, None, :, *([None] * X.ndim)] * V[None, :, None]
    Xs = np.broadcast_to(Xs, (k, m, 5) + X.shape).reshape((k * m * 5,) + X.shape)
    T = np.broadcast_to(thetas[:, None, None, :], (k, m, 5, thetas.shape[1])).reshape(k * m * 5, -1)
    vals = np.asarray(values(T, Xs, y)).reshape(k, m, 5, 2).transpose(3, 0, 1, 2)  # (2, k, m, 5)
    d1 = (vals[..., 0] - vals[..., 1]) / (2 * h)
    d2 = (vals[..., 2] - vals[..., 3]) / h
    fd = (4.0 * d2 - d1) / 3.0
    Vn = np.asarray(V)
    ad = np.stack([np.tensordot(np.asarray(g).reshape((k,) + X.shape), Vn, axes=(tuple(range(1, 1 + X.ndim)),
                                                                                  tuple(range(1, 1 + X.ndim))))
                   for g in (s, df)])  # (2, k, m)
    val = vals[..., 4]
    eps = np.finfo(np.float64).eps
    # rounding noise of the quotients: |d1 - d2| is one sample of it per comparison; the largest
    # over a draw's directions sets that draw's floor (at n = 500 a GP's values carry ~1e-11 of
    # rounding, 1e-7 in a quotient, and one comparison's |d1 - d2| was often tiny). Per draw, so a
    # draw near a kink cannot lift the floor of the others; finite entries only, so a non-finite
    # comparison (skipped below) cannot switch the check off
    spread = np.abs(d1 - d2)
    finite = np.where(np.isfinite(spread), spread, 0.0)
    atol = 1e3 * eps * (np.abs(val) + 1.0) / h + 2.0 * spread + NOISE * finite.max(axis=2, keepdims=True)
    ok = np.isfinite(ad) & np.isfinite(fd) & np.isfinite(val) & np.isfinite(atol)
    err = np.abs(ad - fd)
    bound = RTOL * (np.abs(ad) + np.abs(fd)) + atol
    bad = ok & (err > bound)
    rel = np.where(ok, err / (np.abs(ad) + np.abs(fd) + atol + 1e-300), 0.0)
    problem = None
    if bad.any():
        which, t, j = (int(i[0]) for i in np.nonzero(bad))
        what = (f"d log p / d{jm.data_name} (the model's log density)" if which == 0
                else f"d {jm.objective_name} / d{jm.data_name} (the objective {jm.objective_name!r})")
        # one-sided differences: a kink (they differ) is not the same trouble as a wrong derivative
        right = (vals[which, t, j, 2] - vals[which, t, j, 4]) / (h / 2)
        left = (vals[which, t, j, 4] - vals[which, t, j, 3]) / (h / 2)
        if abs(right - left) > 1e-2 * (abs(right) + abs(left)) + atol[which, t, j]:
            return CheckResult(
                f"the gradient self-check failed: {what} has a kink at this design (one-sided directional "
                f"derivatives {left:.6g} and {right:.6g} differ), so its derivative is not defined there: a max, min, "
                f"abs or switch on the design {jm.data_name!r}, e.g. a tie in a maximum over points. Make the quantity "
                "smooth (e.g. a soft maximum) or start from a design off the kink; gradient_check=untrusted runs "
                "anyway, with every estimate marked untrusted.", float(rel.max()), k, m)
        problem = (
            f"the gradient self-check failed: the compiled derivative {what} disagrees with finite differences "
            f"at a posterior draw (directional derivative {ad[which, t, j]:.6g} vs {fd[which, t, j]:.6g}; "
            f"{int(bad[which].sum())} of {bad[which].size} checks). An operation on the design {jm.data_name!r} "
            "has a wrong gradient: a clip or kink at coincident points, a distance computed as |x|^2 + |x'|^2 - "
            "2 x.x', or a stop-gradient. Build the kernel from placement.kernels (or compute distances as x_i - x_j); "
            "gradient_check=untrusted runs anyway, with every estimate marked untrusted."
        )
    return CheckResult(problem, float(rel.max()) if rel.size else 0.0, k, m)


def pick_draws(weights: np.ndarray | None, n: int, k: int, seed: int = 0) -> np.ndarray:
    """Indices of up to k distinct draws out of n, chosen in proportion to their weights."""
    p = np.ones(n) if weights is None else np.nan_to_num(np.asarray(weights, dtype=np.float64))
    p = np.clip(p, 0.0, None)
    if p.sum() <= 0:
        return np.arange(min(k, n))
    m = min(k, int(np.count_nonzero(p)))
    return np.sort(np.random.default_rng(seed).choice(n, size=m, replace=False, p=p / p.sum()))
