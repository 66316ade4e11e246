"""Problems whose data are re-measured at the design: y = g(X) + noise * e, e fixed.

``with_simulator(jm, g, noise, e)`` returns a model whose functions ignore the y argument
and use y(X) instead, so the identity's score term and df/dX include dy/dX (the total
derivative), and every sampler works unchanged.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from placement.model import JaxModel
from placement.problems import SIMULATORS


def simulator_of(model):
    """(function name, noise, e) if the PyMC model came from ``simulator_gp``, else None."""
    return getattr(model, "_placement_simulator", None)


def with_simulator(jm: JaxModel, function, noise: float, e) -> JaxModel:
    """``jm`` with y = g(X) + noise * e; ``function`` a name in ``SIMULATORS`` or a JAX function of X."""
    if callable(function):
        g = function
    elif function in SIMULATORS:
        g = SIMULATORS[function]
    else:
        from placement.errors import PlacementError

        raise PlacementError(f"unknown simulator function {function!r}; choose one of {', '.join(SIMULATORS)} "
                             "or pass a JAX function of X.")
    e = jnp.asarray(np.asarray(e, dtype=np.float64))

    def y_of(X):
        return g(X) + noise * e

    def wrap(fn):
        def call(theta, X, y=None):
            return fn(theta, X, y_of(X))

        return call

    from placement.model import wrapped

    return dataclasses.replace(jm, **wrapped(jm, wrap), extras=None if jm.extras is None else wrap(jm.extras), y_of=y_of)
