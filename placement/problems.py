"""Built-in problems: functions that build a PyMC model with a design container.

A problem builder takes keyword arguments (from the ``problem/`` config group) and
returns a ``pm.Model`` with a ``pm.Data`` design container, observed data and a named
objective quantity. ``load_builder("pkg.module:function")`` imports a user's builder.
"""

from __future__ import annotations

import importlib
from typing import Callable

import jax.numpy as jnp
import numpy as np
import pymc as pm
import pytensor.tensor as pt

from placement.errors import PlacementError
from placement.kernels import KERNELS, Matern52


def seed_data(n: int = 10, seed: int = 2, ell: float = 5.0, eta: float = 8.0, sigma: float = 0.02):
    """The seed's synthetic data, bit for bit: X = linspace(0, 10, n), y = f + noise.

    Reproduces PyMC's stock Matern52 covariance (squared distances by the expanded form,
    r = sqrt(r2 + 1e-12)) in NumPy, then numpy's global-RNG draws exactly as the seed does.
    """
    X = np.linspace(0, 10, n)
    Xs = X[:, None] / ell
    X2 = np.sum(np.square(Xs), 1)
    r2 = np.clip(-2.0 * Xs @ Xs.T + (X2.reshape(-1, 1) + X2.reshape(1, -1)), 0.0, np.inf)
    r = np.sqrt(r2 + 1e-12)
    K = eta**2 * ((1.0 + np.sqrt(5.0) * r + 5.0 / 3.0 * np.square(r)) * np.exp(-1.0 * np.sqrt(5.0) * r))
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        f_true = np.random.multivariate_normal(np.zeros(n), K + 1e-8 * np.eye(n), 1).flatten()
        y = f_true + sigma * np.random.randn(n)
    finally:
        np.random.set_state(state)
    return X, y


def domain_points(domain, num: int) -> np.ndarray:
    """Points covering the domain box: cell midpoints for d = 1, a fixed scrambled Sobol set for d > 1.

    Midpoints, not a linspace: designs that start on an even grid (linspace(lo, hi, n), the
    built-in problems) would otherwise sit exactly on integration points, where a Matern12
    kernel's variance has a kink in X and the gradient is not defined.

    Args:
        domain: [lo, hi] for d = 1 or [[lo, hi], ...] per column.
        num: number of points.
    Returns (num,) for d = 1, else (num, d).
    """
    box = np.atleast_2d(np.asarray(domain, dtype=np.float64))
    if box.shape[1] != 2 or np.any(box[:, 0] >= box[:, 1]):
        raise PlacementError(f"domain must be [lo, hi] (or one [lo, hi] per column) with lo < hi; got {domain}.")
    if box.shape[0] == 1:
        return box[0, 0] + (np.arange(num) + 0.5) * (box[0, 1] - box[0, 0]) / num
    from scipy.stats import qmc

    u = qmc.Sobol(d=box.shape[0], scramble=True, seed=0).random(num)
    return box[:, 0] + u * (box[:, 1] - box[:, 0])


OBJECTIVES = ("gp_mu", "integrated_variance", "max_variance", "target_variance")


def gp_model(X, y, kernel: Callable = Matern52, domain=(0.0, 10.0), grid: int = 40) -> pm.Model:
    """The seed's marginal GP with the seed's priors, and every built-in objective.

    ell ~ InverseGamma(mu=1, sigma=0.6) (one per column when X has d > 1 columns),
    eta ~ Exponential(scale=3), sigma ~ HalfCauchy(5); y ~ GP(0, eta^2 k_ell) + N(0, sigma^2).

    Deterministics (pick one with objective.name):
        gp_mu: mean of the GP predictive mean at X (the seed's objective).
        integrated_variance: mean predictive variance of f over ``grid`` domain points.
        max_variance: largest predictive variance of f over the domain points, as a smooth
            maximum (softmax-weighted mean, temperature 1% of the mean variance), so that
            ties between points do not leave the gradient undefined.
        target_variance: predictive variance of the integral of f over the domain
            (midpoint or quasi-Monte Carlo weights; a user-chosen linear functional).
        pred_mu, pred_var: predictive mean and variance of f on the domain points (plots).
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    d = 1 if X.ndim == 1 else X.shape[1]
    G = domain_points(domain, grid)
    Gm = G[:, None] if G.ndim == 1 else G
    if Gm.shape[1] != d:
        raise PlacementError(f"the domain has {Gm.shape[1]} columns but X has {d}; give one [lo, hi] per column of X.")
    box = np.atleast_2d(np.asarray(domain, dtype=np.float64))
    volume = float(np.prod(box[:, 1] - box[:, 0]))
    w = np.full(grid, volume / grid)  # midpoint (d = 1) or quasi-Monte Carlo (d > 1) weights
    with pm.Model() as model:
        Xd = pm.Data("X", X)
        yd = pm.Data("y", y)
        Xm = Xd[:, None] if X.ndim == 1 else Xd
        ell = pm.InverseGamma("ell", mu=1.0, sigma=0.6, shape=() if d == 1 else (d,))
        eta = pm.Exponential("eta", scale=3.0)
        cov = eta**2 * kernel(d, ls=ell)
        gp = pm.gp.Marginal(cov_func=cov)
        sigma = pm.HalfCauchy("sigma", beta=5)
        gp.marginal_likelihood("y_obs", X=Xm, y=yd, sigma=sigma)
        mu, _ = gp._predict_at(Xm, diag=True)
        pm.Deterministic("gp_mu", mu.mean())
        gmu, gcov = gp._predict_at(Gm, diag=False)
        gvar = pt.diag(gcov)
        pm.Deterministic("pred_mu", gmu)
        pm.Deterministic("pred_var", gvar)
        pm.Deterministic("integrated_variance", gvar.mean())
        # a soft maximum: mirror-symmetric designs tie the largest variance at two grid points,
        # where a hard max has no gradient (the self-check rejects it)
        tau = 0.01 * pt.mean(gvar)
        pm.Deterministic("max_variance", pt.sum(pt.special.softmax(gvar / tau) * gvar))
        pm.Deterministic("target_variance", pt.dot(w, pt.dot(gcov, w)))
    return model


def seed_gp(kernel: Callable = Matern52, n: int = 10, data_seed: int = 2, domain=(0.0, 10.0), grid: int = 40) -> pm.Model:
    """The seed problem: seed data, seed priors, every built-in objective (default gp_mu)."""
    X, y = seed_data(n=n, seed=data_seed)
    return gp_model(X, y, kernel=kernel, domain=domain, grid=grid)


def forrester(x):
    """Forrester et al. (2008) test function on [0, 1], rescaled here to X in [0, 10] (JAX)."""
    t = jnp.asarray(x) / 10.0
    return (6 * t - 2) ** 2 * jnp.sin(12 * t - 4)


def scaled_sin(x):
    return 3.0 * jnp.sin(jnp.asarray(x))


SIMULATORS = {"forrester": forrester, "sin": scaled_sin}


def simulator_gp(kernel: Callable = Matern52, n: int = 8, function: str = "forrester", noise: float = 0.3,
                 noise_seed: int = 0, domain=(0.0, 10.0), grid: int = 40, x0=None) -> pm.Model:
    """A GP on data y = g(X) + noise * e with a known function g and a fixed noise draw e.

    The loop re-measures y at every new X (``placement.simulate``), so y moves with X
    smoothly and differentiably. Functions: forrester, sin.
    """
    if function not in SIMULATORS:
        raise PlacementError(f"unknown simulator function {function!r}; choose one of {', '.join(SIMULATORS)}.")
    X = np.linspace(domain[0], domain[1], n + 2)[1:-1] if x0 is None else np.asarray(x0, dtype=np.float64)
    e = np.random.default_rng(noise_seed).normal(size=X.shape[0])
    y = np.asarray(SIMULATORS[function](X)) + noise * e
    model = gp_model(X, y, kernel=kernel, domain=domain, grid=grid)
    model._placement_simulator = (function, noise, e)  # read by placement.simulate.simulator_of
    return model


def load_builder(spec: str) -> Callable[..., pm.Model]:
    """Import ``"package.module:function"`` and return the function."""
    if not isinstance(spec, str) or ":" not in spec:
        raise PlacementError(
            f"problem.builder must look like 'my_module:build_model'; got {spec!r}."
        )
    mod_name, _, fn_name = spec.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise PlacementError(
            f"cannot import module {mod_name!r} for problem.builder ({e}). "
            "Put it on PYTHONPATH or run from its folder."
        ) from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise PlacementError(f"module {mod_name!r} has no function {fn_name!r} for problem.builder.")
    return fn


def kernel_class(name: str):
    try:
        return KERNELS[name]
    except KeyError:
        raise PlacementError(f"unknown kernel {name!r}; choose one of {', '.join(KERNELS)}.") from None
