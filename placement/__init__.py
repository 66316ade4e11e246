"""placement: Bayesian sample placement.

Gradients of posterior expectations F(X) = E[f(theta, X) | y, X] with respect to the
measurement locations X, with honest Monte Carlo standard errors, and an outer loop
that uses them to relocate the points.
"""

from placement import runtime as _runtime

_runtime.configure_process()  # JAX/XLA environment and warning filters, before JAX is imported

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

from placement.errors import PlacementError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["PlacementError", "__version__"]
