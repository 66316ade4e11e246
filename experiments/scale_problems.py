"""A GP problem of any size and input dimension, for experiments/scale.py.

    placement gradient problem=custom problem.builder=scale_problems:gp problem.args.n=500 \
        problem.args.d=2 objective=integrated_variance      # with experiments/ on PYTHONPATH

n points uniform in [0, 10]^d (fixed seed), y = sum_j sin(x_j + j) + 0.1 e, the seed
problem's priors and objectives (placement.problems.gp_model).
"""

from __future__ import annotations

import numpy as np

from placement.kernels import Matern52
from placement.problems import gp_model


def data(n: int, d: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(0.0, 10.0, (n, d))
    y = np.sin(X + np.arange(d)).sum(1) + 0.1 * rng.normal(size=n)
    return (X[:, 0] if d == 1 else X), y


def gp(kernel=Matern52, n: int = 100, d: int = 1, data_seed: int = 0, grid: int = 40):
    X, y = data(n, d, data_seed)
    domain = [0.0, 10.0] if d == 1 else [[0.0, 10.0]] * d
    return gp_model(X, y, kernel=kernel, domain=domain, grid=grid)
