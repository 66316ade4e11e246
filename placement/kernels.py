"""Covariance functions whose JAX gradients are right at coincident points.

PyMC's stock stationary kernels compute squared distances as
``clip(-2 X X^T + |x|^2 + |x'|^2, 0, inf)``. On the diagonal that expression rounds to
about +-1e-16, and the clip is differentiated inconsistently, so the JAX gradient with
respect to the lengthscale and to X is wrong (off by up to 5e5 on the seed problem).
Here distances are formed from differences ``x_i - x_j`` (exactly zero on the diagonal)
and the square root is taken with the "double where" so its derivative at zero is zero
instead of NaN.

Every class is a drop-in ``pm.gp.cov.Covariance``: use it in ``pm.gp.Marginal`` etc.
ARD: pass one lengthscale per input column when X has d > 1 columns.
"""

from __future__ import annotations

import numpy as np
import pymc as pm
import pytensor.tensor as pt

from placement.gpjax import KERNEL_CLASSES

__all__ = [
    "Matern12",
    "Matern32",
    "Matern52",
    "ExpQuad",
    "RatQuad",
    "Periodic",
    "KERNELS",
    "safe_sqrt",
]


def safe_sqrt(r2):
    """sqrt(r2) with derivative 0 (not NaN) where r2 == 0."""
    positive = pt.gt(r2, 0.0)
    return pt.switch(positive, pt.sqrt(pt.switch(positive, r2, 1.0)), 0.0)


class _DifferenceStationary(pm.gp.cov.Stationary):
    """Stationary kernel with distances from coordinate differences."""

    def square_dist(self, X, Xs=None):
        Xs = X if Xs is None else Xs
        diff = (X[:, None, :] - Xs[None, :, :]) / self.ls
        return pt.sum(pt.square(diff), axis=-1)

    def euclidean_dist(self, X, Xs=None):
        return safe_sqrt(self.square_dist(X, Xs))

    def full(self, X, Xs=None):
        X, Xs = self._slice(X, Xs)
        return self.full_from_distance(self.square_dist(X, Xs), squared=True)

    def full_from_distance(self, dist, squared=False):
        r2 = dist if squared else pt.square(dist)
        return self._from_r2(r2)

    def _from_r2(self, r2):  # pragma: no cover - abstract
        raise NotImplementedError


class Matern12(_DifferenceStationary):
    """Exponential kernel exp(-r)."""

    def _from_r2(self, r2):
        return pt.exp(-safe_sqrt(r2))


class Matern32(_DifferenceStationary):
    """(1 + sqrt(3) r) exp(-sqrt(3) r)."""

    def _from_r2(self, r2):
        r = np.sqrt(3.0) * safe_sqrt(r2)
        return (1.0 + r) * pt.exp(-r)


class Matern52(_DifferenceStationary):
    """(1 + sqrt(5) r + 5/3 r^2) exp(-sqrt(5) r)."""

    def _from_r2(self, r2):
        r = np.sqrt(5.0) * safe_sqrt(r2)
        return (1.0 + r + 5.0 / 3.0 * r2) * pt.exp(-r)


class ExpQuad(_DifferenceStationary):
    """exp(-r^2 / 2)."""

    def _from_r2(self, r2):
        return pt.exp(-0.5 * r2)


class RatQuad(_DifferenceStationary):
    """(1 + r^2 / (2 alpha))^(-alpha); ``alpha`` defaults to 2."""

    def __init__(self, input_dim, ls=None, alpha=2.0, ls_inv=None, active_dims=None):
        super().__init__(input_dim, ls=ls, ls_inv=ls_inv, active_dims=active_dims)
        self.alpha = pt.as_tensor_variable(alpha)

    def _from_r2(self, r2):
        return pt.power(1.0 + r2 / (2.0 * self.alpha), -self.alpha)


class Periodic(_DifferenceStationary):
    """exp(-2 sum_d sin^2(pi (x_d - x'_d) / period) / ls_d^2); smooth everywhere."""

    def __init__(self, input_dim, ls=None, period=1.0, ls_inv=None, active_dims=None):
        super().__init__(input_dim, ls=ls, ls_inv=ls_inv, active_dims=active_dims)
        self.period = pt.as_tensor_variable(period)

    def full(self, X, Xs=None):
        X, Xs = self._slice(X, Xs)
        Xs = X if Xs is None else Xs
        s = pt.sin(np.pi * (X[:, None, :] - Xs[None, :, :]) / self.period) / self.ls
        return pt.exp(-2.0 * pt.sum(pt.square(s), axis=-1))


# name -> class, from the one name table (placement.gpjax.KERNEL_CLASSES, importable without PyMC)
KERNELS = {name: globals()[cls] for name, cls in KERNEL_CLASSES.items()}
