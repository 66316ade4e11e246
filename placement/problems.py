"""Built-in problems: functions that build a PyMC model with a design container.

A problem builder takes keyword arguments (from the ``problem/`` config group) and
returns a ``pm.Model`` with a ``pm.Data`` design container, observed data and a named
objective quantity. ``load_builder("pkg.module:function")`` imports a user's builder.
"""

from __future__ import annotations

import importlib
import os
import sys
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


def _import_here(name: str):
    """Import ``name``, looking in the working folder too: ``python -m`` puts it on sys.path,
    the ``placement`` console script does not, and a builder next to the user's data is the
    documented case (``problem.builder=my_module:build_model`` run from its folder)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        here = os.getcwd()
        if e.name != name.split(".")[0] or here in sys.path:
            raise
        sys.path.insert(0, here)
        return importlib.import_module(name)


def load_builder(spec: str) -> Callable[..., pm.Model]:
    """Import ``"package.module:function"`` and return the function."""
    if not isinstance(spec, str) or ":" not in spec:
        raise PlacementError(
            f"problem.builder must look like 'my_module:build_model'; got {spec!r}."
        )
    mod_name, _, fn_name = spec.partition(":")
    try:
        mod = _import_here(mod_name)
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


# -- Hilbert-space approximate GP (pm.gp.HSGP) -------------------------------------------------
HSGP_KERNELS = ("expquad", "matern32", "matern52")  # stock PyMC kernels with a power spectral density


def stock_kernel(kernel: Callable):
    """The PyMC kernel class (and its keyword arguments) behind a kernel-group entry.

    ``placement.kernels`` classes carry no power spectral density, which HSGP needs; their
    stock twins of the same name in ``pm.gp.cov`` do. A stock class is returned as it is.
    Returns (class, kwargs).
    """
    base = getattr(kernel, "func", kernel)
    kwargs = dict(getattr(kernel, "keywords", None) or {})
    name = getattr(base, "__name__", repr(base))
    stock = base if getattr(base, "__module__", "") == pm.gp.cov.__name__ else getattr(pm.gp.cov, name, None)
    psd = getattr(stock, "power_spectral_density", None)
    if stock is None or psd is None or psd is pm.gp.cov.Stationary.power_spectral_density:
        raise PlacementError(
            f"kernel {name} has no power spectral density, which the HSGP approximation needs; "
            f"choose one of {', '.join(HSGP_KERNELS)} (kernel=...)."
        )
    return stock, kwargs


def hsgp_boundary(X0: np.ndarray, domain, c: float) -> tuple[np.ndarray, np.ndarray]:
    """The HSGP's centre and boundary L, fixed at build time (numbers, not graph nodes).

    The centre is PyMC's own choice (the midpoint of the initial design's range, evaluated
    once); L = c times the largest distance from the centre to the domain's edges (or to an
    initial point outside the domain), so the approximation covers the whole domain, where
    the design may move, not only the initial points. Returns (centre (d,), L (d,)).
    """
    Xm = X0[:, None] if X0.ndim == 1 else X0
    box = np.atleast_2d(np.asarray(domain, dtype=np.float64))
    centre = (Xm.max(axis=0) + Xm.min(axis=0)) / 2.0
    lo = np.minimum(box[:, 0], Xm.min(axis=0))
    hi = np.maximum(box[:, 1], Xm.max(axis=0))
    return centre, c * np.maximum(hi - centre, centre - lo)


def hsgp_posterior(B, y, sigma):
    """Posterior of the coefficients z (prior N(0, I)) given y = B z + N(0, sigma^2 I):
    the Cholesky factor of the precision A = I + B^T B / sigma^2 and the mean A^-1 B^T y / sigma^2."""
    s2 = sigma**2
    chol = pt.linalg.cholesky(pt.eye(B.shape[-1]) + pt.dot(B.T, B) / s2)
    u = pt.linalg.solve_triangular(chol, pt.dot(B.T, y) / s2, lower=True)
    return chol, pt.linalg.solve_triangular(chol.T, u, lower=False)


def hsgp_logp(value, B, sigma):
    """log N(y; 0, B B^T + sigma^2 I) in O(n m^2) (Woodbury and the determinant lemma).

    The quadratic form is taken as |y - B z|^2 / sigma^2 + |z|^2 at the posterior mean z (its
    minimiser), a sum of positive terms: y^T y / sigma^2 - |u|^2 cancels catastrophically
    when sigma is small (the seed's noise is 0.02), and its X-derivative then is noise."""
    n = value.shape[-1]
    s2 = sigma**2
    chol, z = hsgp_posterior(B, value, sigma)
    r = value - pt.dot(B, z)
    quad = pt.dot(r, r) / s2 + pt.dot(z, z)
    logdet = n * pt.log(s2) + 2.0 * pt.sum(pt.log(pt.diag(chol)))
    return -0.5 * (quad + logdet + n * np.log(2.0 * np.pi))


def hsgp_model(X, y, kernel: Callable = Matern52, m=40, c: float = 2.0, domain=(0.0, 10.0), grid: int = 40) -> pm.Model:
    """``gp_model`` with the GP replaced by its Hilbert-space approximation (``pm.gp.HSGP``).

    Same priors, same objectives (gp_mu, integrated_variance, max_variance, target_variance,
    pred_mu, pred_var). f(x) = phi(x) (eta sqrt(S(omega)) z) with m basis functions per column
    (sin functions of x on [centre - L, centre + L], ``hsgp_boundary``) and z ~ N(0, I). The
    coefficients z are integrated out in closed form, so the posterior is over (ell, eta,
    sigma) only, as for the exact GP, and every cost is O(n m^2) instead of O(n^3):
    y ~ N(0, B B^T + sigma^2 I) with B = phi(X) diag(eta sqrt S) (Woodbury), and the
    predictive of f given y is that of Bayesian linear regression on z.

    Args:
        m: basis functions per column (int, or one per column); m^d in all.
        c: boundary factor: L = c x the domain's half-width (>= 1.2 recommended by PyMC).
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    d = 1 if X.ndim == 1 else X.shape[1]
    ms = [int(m)] * d if np.ndim(m) == 0 else [int(v) for v in m]
    if len(ms) != d or min(ms) < 1:
        raise PlacementError(f"m must be a positive integer or one per column of X ({d}); got {m}.")
    if not c > 1.0:
        raise PlacementError(f"c must be > 1 (the boundary L = c x the domain's half-width; 1.5 is usual); got {c}.")
    stock, kwargs = stock_kernel(kernel)
    G = domain_points(domain, grid)
    Gm = G[:, None] if G.ndim == 1 else G
    if Gm.shape[1] != d:
        raise PlacementError(f"the domain has {Gm.shape[1]} columns but X has {d}; give one [lo, hi] per column of X.")
    centre, L = hsgp_boundary(X, domain, float(c))
    box = np.atleast_2d(np.asarray(domain, dtype=np.float64))
    w = np.full(grid, float(np.prod(box[:, 1] - box[:, 0])) / grid)
    with pm.Model() as model:
        Xd = pm.Data("X", X)
        yd = pm.Data("y", y)
        Xm = Xd[:, None] if X.ndim == 1 else Xd
        ell = pm.InverseGamma("ell", mu=1.0, sigma=0.6, shape=() if d == 1 else (d,))
        eta = pm.Exponential("eta", scale=3.0)
        sigma = pm.HalfCauchy("sigma", beta=5)
        gp = pm.gp.HSGP(m=ms, L=[float(v) for v in L], cov_func=stock(d, ls=ell, **kwargs))
        phi, sqrt_psd = gp.prior_linearized(Xm)
        if not np.allclose(np.asarray(gp._X_center, dtype=np.float64).ravel(), centre):  # PyMC's centre moved
            raise PlacementError("pm.gp.HSGP centred X differently than expected; L would not cover the domain.")
        phi_g, _ = gp.prior_linearized(pt.as_tensor(Gm))  # same centre and L: fixed at the first call
        scale = eta * sqrt_psd
        B, Bg = phi * scale, phi_g * scale
        pm.CustomDist("y_obs", B, sigma, logp=hsgp_logp, observed=yd, signature="(n,k),()->(n)")
        # posterior of z given (ell, eta, sigma): precision A = I + B^T B / sigma^2
        chol, z = hsgp_posterior(B, yd, sigma)
        V = pt.linalg.solve_triangular(chol, Bg.T, lower=True)  # predictive cov on the grid: V^T V
        gvar = pt.sum(pt.square(V), axis=0)
        pm.Deterministic("gp_mu", pt.dot(B, z).mean())
        pm.Deterministic("pred_mu", pt.dot(Bg, z))
        pm.Deterministic("pred_var", gvar)
        pm.Deterministic("integrated_variance", gvar.mean())
        tau = 0.01 * pt.mean(gvar)
        pm.Deterministic("max_variance", pt.sum(pt.special.softmax(gvar / tau) * gvar))
        pm.Deterministic("target_variance", pt.sum(pt.square(pt.dot(V, w))))
    model._placement_hsgp = {"m": ms, "L": L, "centre": centre}  # for tests and reports
    return model


def hsgp_gp(kernel: Callable = Matern52, n: int = 10, m=40, c: float = 2.0, data_seed: int = 2,
            domain=(0.0, 10.0), grid: int = 40) -> pm.Model:
    """The seed problem (seed data, priors, objectives) with an HSGP instead of the exact GP."""
    X, y = seed_data(n=n, seed=data_seed)
    return hsgp_model(X, y, kernel=kernel, m=m, c=c, domain=domain, grid=grid)
