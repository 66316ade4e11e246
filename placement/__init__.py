"""placement: Bayesian sample placement.

Gradients of posterior expectations F(X) = E[f(theta, X) | y, X] with respect to the
measurement locations X, with honest Monte Carlo standard errors, and an outer loop
that uses them to relocate the points.
"""

import os
import warnings

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # no accelerator probing on CPU machines
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # silence XLA C++ warnings from the compile cache
warnings.filterwarnings("ignore", message=".*ArviZ is undergoing a major refactor.*")
warnings.filterwarnings("ignore", message=".*PyTensor could not link to a BLAS.*")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

from placement.errors import PlacementError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["PlacementError", "__version__"]
