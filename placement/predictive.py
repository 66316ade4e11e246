"""Design mode: y drawn from the model's own predictive at X, with common random numbers.

Planning an experiment means scoring a design by the objective averaged over the data it
could give,

    U(X) = E_{y ~ p(y | X)} [ F(X, y) ],      F(X, y) = E[ f(theta, X, y) | y, X ].

A *fantasy* u_j fixes all the randomness of one predictive draw (hyperparameters theta0_j
from the prior, a function draw, a noise draw), so that y_j(X) = Y(u_j, X) is one smooth
function of X and, for every X, a draw from p(y | X) (common random numbers). Then

    U(X) = E_u[ F(X, Y(u, X)) ]   and   dU/dX = E_u[ dF_j/dX ],

the total derivative of each fantasy's F through its y (Y smooth in X, p(u) free of X):

    dF_j/dX = E[ df/dX + df/dy dy_j/dX
                 + (f - F_j) ( d/dX log p(theta, y | X) + d/dy log p(theta, y | X) dy_j/dX ) ],

the seed's identity with y = y_j(X) substituted before differentiating (the chain rule adds
the two dy/dX terms). U_hat = mean_j F_hat_j and grad_hat = mean_j grad_hat_j.

Implementation. At each design the fantasy's y_j and its Jacobian J_j = dy_j/dX are computed
once (``Fantasies.y_of``, JAX autodiff), and the model's functions see
y(X') = y_j + J_j (X' - X): the same value at X and the same first derivative, so every
sampler, the identity's jitted terms and the gradient self-check work unchanged and the
per-draw cost does not grow with the function draw's size. The y slot of the engine carries
(X, y_j, J_j) packed (``pack``).

Fantasy draws (``fantasies_for``):
- observed ``pm.Normal(mu, sigma)`` (mu, sigma any graph of theta and X): theta0 from the
  prior, y = mu(theta0, X) + sigma(theta0, X) z with z ~ N(0, I) fixed per point;
- observed ``pm.MvNormal`` of a zero-mean GP, cov = eta^2 k_ell(X, X) + sigma^2 I (the
  built-in GP problems; ``ell``, ``eta``, ``sigma`` free variables, kernel expquad,
  matern12/32/52, identified by value): (ell, eta, sigma) from the prior and the function
  eta sqrt(2/M) sum_m w_m cos(omega_m . x / ell + b_m) (random Fourier features; omega_m from
  the kernel's spectral density, b_m ~ U(0, 2 pi), w_m ~ N(0, 1), all fixed per fantasy), plus
  sigma z. The function moves smoothly with X and does not depend on how many points there
  are; its covariance is eta^2 k to O(1 / sqrt(M)) per entry.

Measured points (``measured = k``). The first k points of the design are already measured:
they stay where they are (the loop holds them fixed) and keep their observed y in every
fantasy, and the other points' y are drawn from the *posterior* predictive given them:
theta0_j from p(theta | y_1..k) (importance sampling with the package's sampler, resampled),
and for a GP the function draw conditioned on the measured values by Matheron's rule
(pathwise conditioning, Wilson et al. 2020): g = f + eta^2 k(., X_m) (C_mm)^-1 (y_m - f(X_m) - e_m)
with f the random-feature prior draw, C_mm = eta^2 k(X_m, X_m) + sigma^2 I and e_m ~ N(0, sigma^2 I)
fixed. For a Normal observation, given theta0 the unmeasured y are independent of the measured ones.

Standard error. The fantasies are independent draws of u, so the spread of the F_hat_j
(which holds both the fantasies' variance and each estimate's Monte Carlo error) gives
sd_j / sqrt(J); with few fantasies that spread is itself noisy, so the reported SE is the
larger of it and the draws-only SE sqrt(sum_j se_j^2) / J (with J = 1 only the latter).
Both are in the diagnostics (F_se_fantasies, F_se_draws).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from placement.errors import PlacementError
from placement.estimator import GradientEstimate

Y_MODES = ("fixed", "simulator", "predictive")
SUPPORTED = ("Normal (pm.Normal, any mu and sigma of theta and X)",
             "MvNormal of a zero-mean GP, cov = eta^2 k_ell(X, X) + sigma^2 I (pm.gp.Marginal; free variables "
             "ell, eta, sigma; kernel expquad, matern12, matern32 or matern52)")
# t degrees of freedom of each kernel's spectral density (inf: Gaussian)
SPECTRAL_DOF = {"expquad": np.inf, "matern12": 1.0, "matern32": 3.0, "matern52": 5.0}


def check_y_mode(y_mode: str) -> str:
    if y_mode not in Y_MODES:
        raise PlacementError(f"unknown y_mode {y_mode!r}; choose one of {', '.join(Y_MODES)} "
                             "(see docs/concepts/design-mode.md).")
    return y_mode


class Fantasies(NamedTuple):
    """J fantasies of the observed data as smooth functions of X.

    kind: "normal" | "gp"; u: (J, k) every random number of each fantasy, flat;
    y_of: (u[k], X) -> y (the observed data's shape), pure JAX, smooth in X;
    detail: a line for outputs (kernel, features);
    theta0: (J, p) each fantasy's parameters from the prior (from the posterior given the
        measured points when there are some), flat and unconstrained in the model's layout
        (what the ``eig`` objective contrasts against);
    measured: the first ``measured`` points are measured: fixed, their y the observed values.
    """

    kind: str
    u: np.ndarray
    y_of: Callable
    detail: str = ""
    theta0: np.ndarray | None = None
    measured: int = 0


# -- which observed distributions can be drawn with fixed random numbers ----------------------
def observed_kind(model) -> str:
    """"normal" or "gp" for a supported observed distribution, else one PlacementError."""
    from pytensor.tensor.random.basic import MvNormalRV, NormalRV

    obs = list(model.observed_RVs)
    if len(obs) != 1:
        raise PlacementError(f"y_mode=predictive needs exactly one observed variable; the model has {len(obs)}.")
    op = obs[0].owner.op
    if isinstance(op, NormalRV):
        return "normal"
    if isinstance(op, MvNormalRV):
        missing = [n for n in ("ell", "eta", "sigma") if n not in {rv.name for rv in model.free_RVs}]
        if not missing:
            return "gp"
        raise PlacementError(f"y_mode=predictive: the observed MvNormal is drawn as a GP only with free variables "
                             f"ell, eta, sigma (missing: {', '.join(missing)}). Supported: {'; '.join(SUPPORTED)}.")
    raise PlacementError(f"y_mode=predictive cannot draw the observed {type(op).__name__.removesuffix('RV')} "
                         f"{obs[0].name!r} with fixed random numbers. Supported: {'; '.join(SUPPORTED)}.")


def _jaxify(model, outs, data: str):
    """JAX function (theta_flat, X) -> outs of the model's value variables and design."""
    import pytensor.tensor as pt
    from pytensor.graph.replace import graph_replace

    from placement.model import _flat_layout, _quiet_rewrites, get_jaxified_graph

    X_shared = model[data]
    X_in = pt.tensor("X_in", dtype="float64", shape=np.shape(X_shared.get_value()))
    outs = graph_replace(model.replace_rvs_by_values(outs), {X_shared: X_in}, strict=False)
    with _quiet_rewrites():
        fn = get_jaxified_graph(inputs=list(model.value_vars) + [X_in], outputs=[pt.cast(o, "float64") for o in outs])
    names, shapes, sizes, _ = _flat_layout(model)
    offsets = np.cumsum([0] + sizes)

    def call(theta, X):
        parts = [jnp.reshape(theta[offsets[i]:offsets[i + 1]], shapes[i]) for i in range(len(names))]
        return fn(*parts, X)

    return call


def prior_draws(model, J: int, seed: int) -> np.ndarray:
    """(J, p) draws of the flat unconstrained parameters from the prior (value-variable order)."""
    import pymc as pm

    outs = []
    for rv in model.free_RVs:
        tr = model.rvs_to_transforms.get(rv)
        outs.append(rv if tr is None else tr.forward(rv, *rv.owner.inputs))
    draws = pm.draw(outs, draws=J, random_seed=seed)
    draws = draws if isinstance(draws, (list, tuple)) else [draws]
    return np.concatenate([np.asarray(d, dtype=np.float64).reshape(J, -1) for d in draws], axis=1)


def normal_fantasies(model, data: str, y_shape: tuple, J: int, seed: int, jm=None, measured: int = 0) -> Fantasies:
    """y = mu(theta0, X) + sigma(theta0, X) z, theta0 from the prior (from the posterior given the
    first ``measured`` points, whose y stay the observed values), z ~ N(0, I) fixed."""
    rv = model.observed_RVs[0]
    mu, sigma = rv.owner.op.dist_params(rv.owner)
    fn = _jaxify(model, [mu, sigma], data)
    k = int(measured)
    if k:
        y_m = jnp.asarray(jm.y[:k])
        X0 = jnp.asarray(jm.X)

        def loglik(theta):
            m, s = fn(theta, X0)
            m, s = jnp.broadcast_to(m, y_shape)[:k], jnp.broadcast_to(s, y_shape)[:k]
            return jnp.sum(jax.scipy.stats.norm.logpdf(y_m, m, s))

        theta0 = posterior_draws(model, jm, loglik, J, seed)
    else:
        theta0 = prior_draws(model, J, seed)
    z = np.random.default_rng([seed, 1]).standard_normal((J, int(np.prod(y_shape))))
    p = theta0.shape[1]

    def y_of(u, X):
        m, s = fn(u[:p], X)
        y = jnp.broadcast_to(m, y_shape) + jnp.broadcast_to(s, y_shape) * u[p:].reshape(y_shape)
        return jnp.concatenate([y_m, y[k:]]) if k else y

    where = f"the posterior given the {k} measured points" if k else "the prior"
    return Fantasies("normal", np.concatenate([theta0, z], axis=1), y_of, f"Normal: theta0 from {where}, fixed z",
                     theta0, k)


# -- measured points: the parameters' posterior given them -----------------------------------
def _newton_mode(logp: Callable, theta0, iters: int = 50, halvings: int = 40):
    """Mode and inverse negative Hessian of ``logp`` by damped saddle-free Newton steps: the
    negative Hessian's eigenvalues taken in absolute value (an ascent direction where logp is
    not concave), each step halved, up to ``halvings`` times, until logp does not decrease.
    Scale-free, so a few measured points with tight priors are as easy as broad ones (few
    parameters: a dense Hessian). At the mode, eigenvalues that are not positive are floored,
    a very wide proposal along them that the caller's ESS check then refuses."""
    grad, hess = jax.grad(logp), jax.hessian(logp)

    def eig(th):
        H = hess(th)
        return jnp.linalg.eigh(-0.5 * (H + H.T))

    def floored(th):
        w, V = eig(th)
        return V, jnp.maximum(w, 1e-10 * jnp.max(jnp.abs(w)) + 1e-300)

    def step(_, th):
        w, V = eig(th)
        w = jnp.maximum(jnp.abs(w), 1e-12 * jnp.max(jnp.abs(w)) + 1e-300)
        d = V @ ((V.T @ grad(th)) / w)
        ts = 0.5 ** jnp.arange(halvings)
        vals = jax.vmap(lambda t: logp(th + t * d))(ts)
        ok = jnp.isfinite(vals) & (vals >= logp(th))
        return th + jnp.where(ok.any(), ts[jnp.argmax(ok)], 0.0) * d

    mode = jax.lax.fori_loop(0, iters, step, theta0)
    V, w = floored(mode)
    return mode, (V / w) @ V.T


def log_prior(model, data: str) -> Callable:
    """theta -> log prior density of the flat unconstrained parameters (Jacobian and potentials
    included, no likelihood): what the measured points' likelihood multiplies."""
    import pytensor.tensor as pt

    terms = list(model.free_RVs) + list(model.potentials)
    fn = _jaxify(model, [pt.as_tensor_variable(model.logp(vars=terms, jacobian=True))], data)
    X0 = jnp.asarray(model[data].get_value(), dtype=jnp.float64)
    return lambda theta: jnp.reshape(fn(theta, X0)[0], ())


def posterior_draws(model, jm, loglik_measured: Callable, J: int, seed: int) -> np.ndarray:
    """(J, p) draws of theta from p(theta | measured y): the model's prior (``log_prior``) times
    ``loglik_measured(theta)``, by importance
    sampling from the importance sampler's defensive t mixture around a Newton-found Laplace fit, resampled
    systematically. Raises one PlacementError when the weights' ESS is under 10 J (the J
    resampled draws would repeat a few points)."""
    from placement.importance import ISConfig, proposal_from_moments, proposal_logpdf, proposal_sample

    prior = log_prior(model, jm.data_name)

    def logpost(theta):  # the measured points' values are inside loglik_measured
        return prior(theta) + loglik_measured(theta)

    num = max(4096, 1 << int(np.ceil(np.log2(32 * J))))
    cfg = ISConfig(qmc=False, aim=False)

    @jax.jit
    def weighted(key, theta0):
        mode, cov = _newton_mode(logpost, theta0)
        prop = proposal_from_moments(mode, cov)
        theta = proposal_sample(key, prop, num, cfg)
        return theta, jax.vmap(logpost)(theta) - proposal_logpdf(prop, theta, cfg)

    theta, logw = (np.asarray(a) for a in weighted(jax.random.PRNGKey(int(seed)), jnp.asarray(jm.initial_point)))
    ok = np.isfinite(logw)
    w = np.where(ok, np.exp(logw - np.max(logw[ok], initial=-np.inf)), 0.0) if ok.any() else np.zeros_like(logw)
    ess = float(w.sum() ** 2 / max(np.sum(w**2), 1e-300))
    if not np.isfinite(ess) or ess < 10 * J:
        raise PlacementError(f"the parameters' posterior given the measured points could not be sampled well enough "
                             f"for {J} fantasies (importance weight ESS {ess:.0f} of {len(w)} draws, 10 per fantasy "
                             "needed); use fewer fantasies, or check that the measured points' data fit the model.")
    pos = (np.random.default_rng([seed, 3]).uniform() + np.arange(J)) / J
    idx = np.minimum(np.searchsorted(np.cumsum(w) / w.sum(), pos), len(w) - 1)
    return theta[idx].astype(np.float64)


# -- GP fantasies: random Fourier features ----------------------------------------------------
def kernel_of_r2(name: str, r2):
    """The unit-variance stationary kernel ``name`` at squared scaled distance r2 (JAX)."""
    pos = r2 > 0.0
    r = jnp.where(pos, jnp.sqrt(jnp.where(pos, r2, 1.0)), 0.0)  # derivative 0, not NaN, at r = 0
    if name == "expquad":
        return jnp.exp(-0.5 * r2)
    if name == "matern12":
        return jnp.exp(-r)
    if name == "matern32":
        return (1.0 + np.sqrt(3.0) * r) * jnp.exp(-np.sqrt(3.0) * r)
    if name == "matern52":
        return (1.0 + np.sqrt(5.0) * r + 5.0 / 3.0 * r2) * jnp.exp(-np.sqrt(5.0) * r)
    raise PlacementError(f"no spectral density for kernel {name!r}; choose one of {', '.join(SPECTRAL_DOF)}.")


def _scaled_r2(A, B, ell):
    """Squared distances between the rows of A (a, d) and B (b, d), each axis over its ell."""
    return jnp.sum(jnp.square((A[:, None, :] - B[None, :, :]) / ell), axis=-1)


def gp_covariance(name: str, X, ell, eta, sigma):
    """eta^2 k_ell(X, X) + sigma^2 I for X (n,) or (n, d)."""
    Xm = X[:, None] if X.ndim == 1 else X
    return eta**2 * kernel_of_r2(name, _scaled_r2(Xm, Xm, ell)) + sigma**2 * jnp.eye(Xm.shape[0])


def spectral_frequencies(name: str, rng: np.random.Generator, M: int, d: int) -> np.ndarray:
    """(M, d) frequencies of the unit-lengthscale kernel: N(0, I) for expquad, a multivariate
    t with 2 nu degrees of freedom for Matern nu (its spectral density)."""
    g = rng.standard_normal((M, d))
    dof = SPECTRAL_DOF[name]
    return g if np.isinf(dof) else g * np.sqrt(dof / rng.chisquare(dof, size=(M, 1)))


def identify_kernel(model, data: str, jm) -> tuple[str, float]:
    """The kernel whose eta^2 k + (sigma^2 + jitter) I equals the model's observed covariance,
    checked by value at two parameter points, and the jitter; one PlacementError if none
    does (or the mean is not 0)."""
    rv = model.observed_RVs[0]
    mu, cov = rv.owner.op.dist_params(rv.owner)
    fn = _jaxify(model, [mu, cov], data)
    X = jnp.asarray(jm.X)
    points = [np.asarray(jm.initial_point), np.asarray(jm.initial_point) + 0.37]
    values = []
    for theta in points:
        m, C = (np.asarray(a) for a in fn(jnp.asarray(theta), X))
        nat = {k: np.asarray(v, dtype=np.float64) for k, v in jm.constrain(jnp.asarray(theta)).items()}
        values.append((m, C, nat))
    if any(np.max(np.abs(m)) > 1e-12 for m, _, _ in values):
        raise PlacementError("y_mode=predictive draws a GP with zero mean; the model's observed MvNormal has a "
                             f"non-zero mean. Supported: {'; '.join(SUPPORTED)}.")
    for name in SPECTRAL_DOF:
        diffs = [C - np.asarray(gp_covariance(name, X, n["ell"], n["eta"], n["sigma"])) for _, C, n in values]
        jitter = float(np.mean(np.diag(diffs[0])))  # pm.gp.Marginal adds a constant jitter (1e-6) to the diagonal
        if 0.0 <= jitter <= 1e-4 and all(np.allclose(D, jitter * np.eye(D.shape[0]), rtol=0.0,
                                                     atol=1e-9 * np.max(np.abs(C))) for D in diffs):
            return name, jitter
    raise PlacementError("y_mode=predictive: the observed MvNormal's covariance is not eta^2 k_ell(X, X) + sigma^2 I "
                         f"for any supported kernel. Supported: {'; '.join(SUPPORTED)}.")


def gp_fantasies(model, data: str, jm, J: int, seed: int, features: int = 1024, measured: int = 0) -> Fantasies:
    """GP fantasies: (ell, eta, sigma) from the prior, a random-Fourier-feature function draw
    and a fixed noise draw per fantasy (see the module docstring). With ``measured`` = k, the
    hyperparameters come from their posterior given the first k points and the function draw
    is conditioned on their values (Matheron's rule); their y stay the observed values."""
    name, jitter = identify_kernel(model, data, jm)
    d = 1 if jm.X.ndim == 1 else jm.X.shape[1]
    n = jm.X.shape[0]
    M = int(features)
    if M < 1:
        raise PlacementError(f"features must be >= 1; got {features}.")
    k = int(measured)
    X_m = jnp.asarray(jm.X[:k]).reshape(k, d)
    y_m = jnp.asarray(jm.y[:k], dtype=jnp.float64)

    def hyper(theta):
        h = jm.constrain(theta)
        return jnp.reshape(h["ell"], (-1,)) * jnp.ones(d), jnp.reshape(h["eta"], ()), jnp.reshape(h["sigma"], ())

    def cov_m(ell, eta, sigma):
        return gp_covariance(name, X_m, ell, eta, sigma) + jitter * jnp.eye(k)

    if k:
        def loglik(theta):
            return jax.scipy.stats.multivariate_normal.logpdf(y_m, jnp.zeros(k), cov_m(*hyper(theta)))

        theta0 = posterior_draws(model, jm, loglik, J, seed)
    else:
        theta0 = prior_draws(model, J, seed)
    ell, eta, sigma = (np.asarray(a, dtype=np.float64) for a in jax.jit(jax.vmap(hyper))(jnp.asarray(theta0)))
    eta, sigma = eta.reshape(J, 1), sigma.reshape(J, 1)
    rng = np.random.default_rng([seed, 2])
    omega = np.stack([spectral_frequencies(name, rng, M, d) for _ in range(J)])  # (J, M, d)
    b = rng.uniform(0.0, 2.0 * np.pi, size=(J, M))
    w = rng.standard_normal((J, M))
    z = rng.standard_normal((J, n))

    def prior_f(ell, eta, om, b, w, Xm):
        return eta * jnp.sqrt(2.0 / M) * (jnp.cos((Xm / ell) @ om.reshape(M, d).T + b) @ w)

    if k:  # Matheron: v_j = C_mm^-1 (y_m - f_j(X_m) - e_j), e_j = noise sd * z_j[:k]
        def weights(ell, eta, sigma, om, b, w, z):
            resid = y_m - prior_f(ell, eta, om, b, w, X_m) - jnp.sqrt(sigma**2 + jitter) * z[:k]
            return jnp.linalg.solve(cov_m(ell, eta, sigma), resid)

        v = np.asarray(jax.vmap(weights)(jnp.asarray(ell), jnp.asarray(eta[:, 0]), jnp.asarray(sigma[:, 0]),
                                         jnp.asarray(omega), jnp.asarray(b), jnp.asarray(w), jnp.asarray(z)))
    else:
        v = np.zeros((J, 0))
    u = np.concatenate([ell, eta, sigma, omega.reshape(J, -1), b, w, z, v], axis=1)
    cut = np.cumsum([d, 1, 1, M * d, M, M, n])

    def y_of(u, X):
        ell, eta, sigma, om, b, w, z, v = jnp.split(u, cut)
        Xm = X[:, None] if X.ndim == 1 else X
        y = prior_f(ell, eta[0], om, b, w, Xm) + jnp.sqrt(sigma[0] ** 2 + jitter) * z
        if not k:
            return y
        y = y + eta[0] ** 2 * kernel_of_r2(name, _scaled_r2(Xm, X_m, ell)) @ v  # conditioned on the measured values
        return jnp.concatenate([y_m, y[k:]])

    where = f"from their posterior given the {k} measured points (function draw conditioned on them)" if k else \
        "from the prior"
    return Fantasies("gp", u, y_of, f"GP {name}, {M} random Fourier features, hyperparameters {where}", theta0, k)


def check_measured(measured, n: int, y_mode: str) -> int:
    """The number of measured points, checked: an integer 0 <= k < n, and k > 0 only in predictive mode."""
    whole = isinstance(measured, (int, np.integer)) or (isinstance(measured, float) and measured.is_integer())
    if isinstance(measured, bool) or not whole:
        raise PlacementError(f"measured must be a whole number of points; got {measured!r}.")
    k = int(measured)
    if k < 0:
        raise PlacementError(f"measured must be a whole number >= 0 (the first points of the design that are already "
                             f"measured); got {measured!r}.")
    if k and y_mode != "predictive":
        raise PlacementError(f"measured={k} needs y_mode=predictive: it says which points already have their y, the "
                             f"others' y being drawn from the predictive; in y_mode={y_mode} every point has its y.")
    if k >= n:
        raise PlacementError(f"measured={k} leaves no point to plan: the design has {n} points; measured must be at "
                             f"most {n - 1}.")
    return k


def fantasies_for(model, jm, J: int, seed: int, features: int = 1024, measured: int = 0) -> Fantasies:
    """The fantasies of a model's observed data (``observed_kind`` says which draw); with
    ``measured`` = k, from the posterior predictive given the first k points of the design."""
    if int(J) < 1:
        raise PlacementError(f"fantasies must be >= 1; got {J}.")
    if jm.y is None:
        raise PlacementError("y_mode=predictive needs the observed data in a pm.Data container (problem.observed).")
    k = check_measured(measured, jm.X.shape[0], "predictive")
    if k and np.shape(jm.y)[:1] != jm.X.shape[:1]:
        raise PlacementError(f"measured points need one observed value per design point; the observed data have "
                             f"shape {np.shape(jm.y)} for {jm.X.shape[0]} points.")
    if k and not np.all(np.isfinite(np.asarray(jm.y)[:k])):
        raise PlacementError(f"the {k} measured points need finite observed values; the data's first {k} entries are "
                             f"{np.asarray(jm.y)[:k].tolist()} (the other points' values are not used and may be anything).")
    kind = observed_kind(model)
    if kind == "normal":
        return normal_fantasies(model, jm.data_name, jm.y.shape, int(J), int(seed), jm, k)
    return gp_fantasies(model, jm.data_name, jm, int(J), int(seed), features, k)


def check_measured_design(fantasies, X_model, X) -> None:
    """A design given for a problem with measured points must keep them where they were measured."""
    k = 0 if fantasies is None else int(fantasies.measured)
    if k and not np.array_equal(np.asarray(X)[:k], np.asarray(X_model)[:k]):
        raise PlacementError(f"the first {k} points are measured at {np.asarray(X_model)[:k].tolist()}; a design given "
                             f"with X / X0 must keep them there (it has {np.asarray(X)[:k].tolist()}).")


def hold_measured(constraints, fantasies):
    """``constraints`` with the measured points (the first ``fantasies.measured``) held fixed."""
    import dataclasses

    k = 0 if fantasies is None else int(fantasies.measured)
    if not k:
        return constraints
    return dataclasses.replace(constraints, fixed=tuple(sorted(set(int(i) for i in constraints.fixed) | set(range(k)))))


# -- the linearised model: the engine's y slot carries (X, y, dy/dX) ---------------------------
def pack(X, y, jac) -> jnp.ndarray:
    return jnp.concatenate([jnp.ravel(X), jnp.ravel(y), jnp.ravel(jac)])


def linearised(jm, y_shape: tuple):
    """``jm`` with its y argument replaced by a packed (X0, y0, J0): the functions see
    y(X) = y0 + J0 (X - X0), so at X = X0 the value is y0 and the X-derivative includes
    dy/dX (the total derivative) at a per-draw cost independent of the fantasy's size."""
    import dataclasses

    nx = int(np.prod(jm.X.shape))
    ny = int(np.prod(y_shape))

    def y_lin(X, packed):
        X0 = packed[:nx].reshape(jm.X.shape)
        y0 = packed[nx:nx + ny]
        J0 = packed[nx + ny:].reshape(ny, nx)
        return (y0 + J0 @ jnp.ravel(X - X0)).reshape(y_shape)

    def wrap(fn):
        def call(theta, X, packed=None):
            return fn(theta, X, y_lin(X, packed))

        return call

    from placement.model import wrapped

    return dataclasses.replace(jm, **wrapped(jm, wrap), extras=None if jm.extras is None else wrap(jm.extras), y_of=None)


class DesignEngine:
    """An ``Engine`` over J fantasies: one inner engine (compiled once) on the linearised
    model, one sampler state per fantasy (each warm-starts from its own last step), the
    estimates averaged. Same interface as ``Engine`` for the loop and the API."""

    def __init__(self, jm, fantasies: Fantasies, sampler_cfg: Any, gradient_check: str = "error"):
        from placement.engine import Engine

        self.fantasies = fantasies
        self.y_shape = tuple(np.shape(jm.y))
        self.base_jm = jm
        lin = linearised(jm, self.y_shape)
        self.inner = Engine(lin, sampler_cfg, gradient_check=gradient_check)
        self.cfg, self.gradient_check, self.kind = sampler_cfg, gradient_check, self.inner.kind
        y_of = fantasies.y_of
        self._y_jac = jax.jit(lambda u, X: (y_of(u, X), jax.jacfwd(y_of, argnums=1)(u, X)))
        self.jm = _with_y_at(lin, self.packed_at)

    @property
    def J(self) -> int:
        return int(self.fantasies.u.shape[0])

    @property
    def check_result(self):
        return self.inner.check_result

    def y_at(self, X, j: int = 0) -> np.ndarray:
        """Fantasy j's data at design X."""
        return np.asarray(self.fantasies.y_of(jnp.asarray(self.fantasies.u[j]), jnp.asarray(X, dtype=jnp.float64)))

    def packed_at(self, X, j: int = 0):
        X = jnp.asarray(X, dtype=jnp.float64)
        y, jac = self._y_jac(jnp.asarray(self.fantasies.u[j]), X)
        return pack(X, y, jac.reshape(int(np.prod(self.y_shape)), -1))

    # -- the Engine interface ------------------------------------------------------------
    def init(self, key, X, y=None):
        return tuple(self.inner.init(jax.random.fold_in(key, j), X, self.packed_at(X, j)) for j in range(self.J))

    def draw(self, key, state, X, y=None):
        return self.inner.draw(key, state[0], X, self.packed_at(X, 0))

    def sample_weights(self, sample, X, y=None):
        return self.inner.sample_weights(sample, X, self.packed_at(X, 0))

    def gradient(self, key, state, X, y=None):
        """Every fantasy's estimate without retries, averaged. Returns (states, estimate)."""
        out = [self.inner.gradient(jax.random.fold_in(key, j), state[j], X, self.packed_at(X, j)) for j in range(self.J)]
        return tuple(s for s, _ in out), average([e for _, e in out])

    def robust_gradient(self, key, state, X, y, cfg):
        """Each fantasy through ``retry.robust_gradient``; (states, averaged estimate, Attempts)."""
        from placement.retry import Attempts, robust_gradient

        states, ests, trouble, actions, most = [], [], [[]], [], 1
        for j in range(self.J):
            s, e, a = robust_gradient(self.inner, jax.random.fold_in(key, j), state[j], X, self.packed_at(X, j), cfg)
            states.append(s)
            ests.append(e)
            trouble[0] += [f"{c}@{j}" for c in (a.trouble[0] if a.trouble else [])]
            actions += [f"fantasy {j}: {x}" for x in a.actions]
            most = max(most, len(a.trouble))  # attempts of the worst fantasy
        est = average(ests)
        trusted = all(e.diagnostics.get("trusted", True) for e in ests)
        est.diagnostics["trusted"] = trusted
        est.diagnostics["warnings"] = [f"fantasy {j}: {w}" for j, e in enumerate(ests)
                                       for w in e.diagnostics.get("warnings", [])]
        attempts = Attempts(trouble + [[]] * (most - 1), actions, trusted)
        return tuple(states), est, attempts


def robust_gradient(engine, key, state, X, y, cfg):
    """``retry.robust_gradient`` for an ``Engine``; per fantasy for a ``DesignEngine``; the
    ``eig`` objective's own (``eig.EIGEngine``: no sampler to retry)."""
    from placement.eig import EIGEngine

    if isinstance(engine, (DesignEngine, EIGEngine)):
        return engine.robust_gradient(key, state, X, y, cfg)
    from placement.retry import robust_gradient as single

    return single(engine, key, state, X, y, cfg)


def _with_y_at(jm, packed_at):
    """``jm`` whose ``y_at(X)`` is fantasy 0's packed data (for posteriors and plots)."""
    import dataclasses

    return dataclasses.replace(jm, y_of=packed_at, y=None)


def average(ests: list[GradientEstimate]) -> GradientEstimate:
    """Mean of the fantasies' estimates with the SE of the module docstring."""
    J = len(ests)
    F = np.array([e.F for e in ests])
    G = np.stack([np.asarray(e.grad) for e in ests])
    se_F_draws = np.sqrt(np.sum([e.F_se**2 for e in ests])) / J
    se_G_draws = np.sqrt(np.sum([np.asarray(e.grad_se) ** 2 for e in ests], axis=0)) / J
    if J >= 2:
        se_F_fant = float(F.std(ddof=1) / np.sqrt(J))
        se_G_fant = G.std(axis=0, ddof=1) / np.sqrt(J)
    else:
        se_F_fant, se_G_fant = float("nan"), np.full(G.shape[1:], np.nan)
    F_se = float(np.fmax(se_F_fant, se_F_draws))
    grad_se = np.fmax(se_G_fant, se_G_draws)
    d0 = ests[0].diagnostics
    diag = {
        "sampler": d0.get("sampler"), "y_mode": "predictive", "fantasies": J,
        "F_fantasies": F.tolist(), "F_se_fantasies": se_F_fant, "F_se_draws": float(se_F_draws),
        "num_draws": int(sum(e.diagnostics.get("num_draws", 0) for e in ests)),
        "divergences": int(sum(e.diagnostics.get("divergences", 0) for e in ests)),
        "rhat_max": _nan_extreme([e.diagnostics.get("rhat_max") for e in ests], np.max),
        "ess_bulk_min": _nan_extreme([e.diagnostics.get("ess_bulk_min") for e in ests], np.min),
        "seconds": float(sum(e.diagnostics.get("seconds", 0.0) for e in ests)),
    }
    for key in ("gradient_check", "gradient_check_worst"):
        if key in d0:
            diag[key] = d0[key]
    rel = np.linalg.norm(grad_se) / max(np.linalg.norm(G.mean(0)), 1e-300)
    diag["rel_se"] = float(rel)
    return GradientEstimate(float(F.mean()), G.mean(0), F_se, grad_se, diag, sample=ests[0].sample)


def _nan_extreme(values, fn) -> float:
    v = np.array([np.nan if x is None else float(x) for x in values])
    v = v[np.isfinite(v)]
    return float(fn(v)) if v.size else float("nan")
