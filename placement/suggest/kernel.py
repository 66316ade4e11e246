"""The covariance function of `placement suggest`: a name and its options, hashable.

Inputs are normalised to [0, 1]^d, so a period given in the data's units is divided by
each column's span (`for_bounds`). Every layer (hyperparameters, criteria) evaluates the
kernel through `kmat`, so `period` and `alpha` reach all of them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from placement import gpjax
from placement.errors import PlacementError


class Kernel(NamedTuple):
    name: str = "matern52"
    alpha: float = 2.0  # ratquad shape
    period: tuple | None = None  # periodic: per input column, in normalised units


def as_kernel(kernel) -> Kernel:
    """A Kernel from a name or a Kernel (names keep the default options)."""
    k = kernel if isinstance(kernel, Kernel) else Kernel(str(kernel))
    if k.name not in gpjax.KERNEL_CLASSES:
        raise PlacementError(f"unknown kernel {k.name!r}; choose one of {', '.join(sorted(gpjax.KERNEL_CLASSES))}.")
    if k.name == "periodic" and k.period is None:
        raise PlacementError("the periodic kernel needs a period (in the data's units), e.g. period=5.")
    return k


def for_bounds(name: str, bounds, alpha=2.0, period=None) -> Kernel:
    """The Kernel on the normalised scale: period (data units, scalar or one per column)
    divided by each column's span."""
    span = np.asarray(bounds, dtype=np.float64)[:, 1] - np.asarray(bounds, dtype=np.float64)[:, 0]
    try:
        alpha = float(alpha)
        p = None if period is None else np.broadcast_to(np.asarray(period, dtype=np.float64), span.shape) / span
    except (TypeError, ValueError):
        raise PlacementError(f"kernel options must be numbers (period one per input column); got alpha={alpha!r}, "
                             f"period={period!r}.") from None
    if not np.isfinite(alpha) or alpha <= 0 or (p is not None and not (np.isfinite(p).all() and (p > 0).all())):
        raise PlacementError(f"kernel options must be positive numbers; got alpha={alpha!r}, period={period!r}.")
    return as_kernel(Kernel(name, alpha, None if p is None or name != "periodic" else tuple(float(v) for v in p)))


def kmat(kernel: Kernel, A, B, ls, eta):
    """eta^2 k(A, B) with the kernel's options."""
    kernel = as_kernel(kernel)
    period = 1.0 if kernel.period is None else np.asarray(kernel.period)
    return gpjax.kernel_matrix(kernel.name, A, B, ls, eta, alpha=kernel.alpha, period=period)


def pymc_class(kernel: Kernel):
    """The placement.kernels class with the options bound (for the PyMC model)."""
    import functools

    from placement.kernels import KERNELS

    kernel = as_kernel(kernel)
    if kernel.name == "periodic":
        return functools.partial(KERNELS["periodic"], period=np.asarray(kernel.period))
    if kernel.name == "ratquad":
        return functools.partial(KERNELS["ratquad"], alpha=kernel.alpha)
    return KERNELS[kernel.name]
