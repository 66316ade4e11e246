"""placement: Bayesian sample placement.

Gradients of posterior expectations F(X) = E[f(theta, X) | y, X] with respect to the
measurement locations X, with honest Monte Carlo standard errors, and an outer loop
that uses them to relocate the points.

    placement.gradient(model, objective="f")     # F, dF/dX and their standard errors
    placement.relocate(model, objective="f")     # move the design along dF/dX
    placement.suggest(df, k=5)                   # where to measure next, from a table

The functions load on first use (PyMC and the samplers are not imported by ``import
placement``). ``placement.suggest`` is the subpackage ``placement.suggest`` and, called,
its ``suggest`` function: ``placement.suggest(df, k=5)`` is ``placement.suggest.suggest(df, k=5)``.
"""

import sys as _sys
import types as _types

from placement import runtime as _runtime

_runtime.configure_process()  # JAX/XLA environment and warning filters, before JAX is imported

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

from placement.errors import PlacementError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Estimate", "PlacementError", "Relocation", "gradient", "relocate", "suggest", "__version__"]

_FROM_API = ("gradient", "relocate", "Estimate", "Relocation")


class _CallableModule(_types.ModuleType):
    """The ``placement.suggest`` subpackage, callable as its ``suggest`` function."""

    def __call__(self, *args, **kwargs):
        return self.suggest(*args, **kwargs)


class _Package(_types.ModuleType):
    """The ``placement`` package. Python binds a subpackage to its parent as an attribute
    when it is first imported, whoever imports it; binding ``suggest`` makes it callable, so
    ``placement.suggest(df)`` works in any import order without shadowing the subpackage."""

    def __setattr__(self, name, value):
        if name == "suggest" and type(value) is _types.ModuleType:
            value.__class__ = _CallableModule
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package


def __getattr__(name):
    import importlib

    if name in _FROM_API:
        return getattr(importlib.import_module("placement.api"), name)
    if name == "suggest":
        return importlib.import_module("placement.suggest")
    raise AttributeError(f"module 'placement' has no attribute {name!r}")
