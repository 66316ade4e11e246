"""Custom-problem builders for tests/test_paths.py, written the way a user would (README,
"Bring your own model"): a small marginal GP with ``pm.Data`` containers "X" and "y" and
Deterministic objectives, one with a d = 1 design of shape (n,) and one with a d = 2 design
of shape (n, 2).

Besides the user's own objective ``my_ivar`` they carry Deterministics under the built-in
objective names (gp_mu, integrated_variance, max_variance, target_variance) so every
``objective=`` option can run on them, and pred_mu / pred_var so ``placement run`` can draw
the predictive plot. Designs are deliberately irregular (no mirror symmetry, which makes the
maximum of the variance over a symmetric grid tie).

Used as ``problem=custom problem.builder=paths_models:build_1d`` with tests/ on PYTHONPATH.
"""

from __future__ import annotations

import numpy as np
import pymc as pm
import pytensor.tensor as pt

from placement.kernels import Matern52

X_1D = np.array([0.05, 0.21, 0.33, 0.58, 0.71, 0.93])
X_2D = np.array([[0.10, 0.20], [0.80, 0.15], [0.45, 0.55], [0.20, 0.85], [0.75, 0.70], [0.55, 0.30]])


def _truth(X):
    X = np.atleast_2d(np.asarray(X, dtype=float).T).T
    return np.sin(3.0 * X[:, 0]) + (0.5 * np.cos(2.0 * X[:, 1]) if X.shape[1] > 1 else 0.0)


def _gp(X, Xgrid, kernel):
    X = np.asarray(X, dtype=float)
    d = 1 if X.ndim == 1 else X.shape[1]
    kernel = kernel or Matern52
    noise = 0.05 * np.random.default_rng(1).normal(size=X.shape[0])
    Gm = Xgrid[:, None] if Xgrid.ndim == 1 else Xgrid
    w = np.full(len(Gm), 1.0 / len(Gm))  # equal weights: integral over the unit box
    with pm.Model() as model:
        Xd = pm.Data("X", X)
        yd = pm.Data("y", _truth(X) + noise)
        Xm = Xd[:, None] if X.ndim == 1 else Xd
        ell = pm.InverseGamma("ell", mu=0.4, sigma=0.2, shape=() if d == 1 else (d,))
        eta = pm.HalfNormal("eta", sigma=1.5)
        sigma = pm.HalfNormal("sigma", sigma=0.3)
        gp = pm.gp.Marginal(cov_func=eta**2 * kernel(d, ls=ell))
        gp.marginal_likelihood("obs", X=Xm, y=yd, sigma=sigma)
        mu, _ = gp._predict_at(Xm, diag=True)
        gmu, gcov = gp._predict_at(Gm, diag=False)
        gvar = pt.diag(gcov)
        pm.Deterministic("my_ivar", pt.mean(gvar) + 0.1 * pt.mean(gmu**2))  # the user's own quantity
        pm.Deterministic("gp_mu", mu.mean())
        pm.Deterministic("integrated_variance", gvar.mean())
        pm.Deterministic("max_variance", pt.max(gvar))
        pm.Deterministic("target_variance", pt.dot(w, pt.dot(gcov, w)))
        pm.Deterministic("pred_mu", gmu)
        pm.Deterministic("pred_var", gvar)
    return model


def build_1d(kernel=None, domain=(0.0, 1.0), grid: int = 17):
    """d = 1: six points, design shape (6,); objectives over ``grid`` points of ``domain``."""
    lo, hi = (float(v) for v in domain)
    return _gp(X_1D, np.linspace(lo, hi, int(grid)), kernel)


def build_2d(kernel=None, domain=((0.0, 1.0), (0.0, 1.0)), grid: int = 16):
    """d = 2: six points, design shape (6, 2); objectives over ``grid`` random points of the box."""
    box = np.asarray(domain, dtype=float)
    G = box[:, 0] + np.random.default_rng(7).uniform(0.0, 1.0, (int(grid), 2)) * (box[:, 1] - box[:, 0])
    return _gp(X_2D, G, kernel)
