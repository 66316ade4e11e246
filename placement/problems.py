"""Built-in problems: functions that build a PyMC model with a design container.

A problem builder takes keyword arguments (from the ``problem/`` config group) and
returns a ``pm.Model`` with a ``pm.Data`` design container, observed data and a named
objective quantity. ``load_builder("pkg.module:function")`` imports a user's builder.
"""

from __future__ import annotations

import importlib
from typing import Callable

import numpy as np
import pymc as pm

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


def gp_model(X, y, kernel: Callable = Matern52, priors: str = "seed", objective: str = "gp_mu") -> pm.Model:
    """The seed's marginal GP with the seed's priors.

    ell ~ InverseGamma(mu=1, sigma=0.6) (one per column when X has d > 1 columns),
    eta ~ Exponential(scale=3), sigma ~ HalfCauchy(5); y ~ GP(0, eta^2 k_ell) + N(0, sigma^2).
    Deterministic ``gp_mu``: mean of the GP predictive mean at X (the seed's objective).
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    d = 1 if X.ndim == 1 else X.shape[1]
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
        pm.Deterministic(objective, mu.mean())
    return model


def seed_gp(kernel: Callable = Matern52, n: int = 10, data_seed: int = 2) -> pm.Model:
    """The seed problem: seed data, seed priors, objective ``gp_mu``."""
    X, y = seed_data(n=n, seed=data_seed)
    return gp_model(X, y, kernel=kernel)


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
