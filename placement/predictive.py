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
    theta0: (J, p) each fantasy's parameters from the prior, flat and unconstrained in the
        model's layout (what the ``eig`` objective contrasts against).
    """

    kind: str
    u: np.ndarray
    y_of: Callable
    detail: str = ""
    theta0: np.ndarray | None = None


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


def normal_fantasies(model, data: str, y_shape: tuple, J: int, seed: int) -> Fantasies:
    """y = mu(theta0, X) + sigma(theta0, X) z, theta0 from the prior, z ~ N(0, I) fixed."""
    rv = model.observed_RVs[0]
    mu, sigma = rv.owner.op.dist_params(rv.owner)
    fn = _jaxify(model, [mu, sigma], data)
    theta0 = prior_draws(model, J, seed)
    z = np.random.default_rng([seed, 1]).standard_normal((J, int(np.prod(y_shape))))
    p = theta0.shape[1]

    def y_of(u, X):
        m, s = fn(u[:p], X)
        return jnp.broadcast_to(m, y_shape) + jnp.broadcast_to(s, y_shape) * u[p:].reshape(y_shape)

    return Fantasies("normal", np.concatenate([theta0, z], axis=1), y_of, "Normal: theta0 from the prior, fixed z",
                     theta0)


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


def gp_covariance(name: str, X, ell, eta, sigma):
    """eta^2 k_ell(X, X) + sigma^2 I for X (n,) or (n, d)."""
    Xm = X[:, None] if X.ndim == 1 else X
    r2 = jnp.sum(jnp.square((Xm[:, None, :] - Xm[None, :, :]) / ell), axis=-1)
    return eta**2 * kernel_of_r2(name, r2) + sigma**2 * jnp.eye(Xm.shape[0])


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


def gp_fantasies(model, data: str, jm, J: int, seed: int, features: int = 1024) -> Fantasies:
    """GP fantasies: (ell, eta, sigma) from the prior, a random-Fourier-feature function draw
    and a fixed noise draw per fantasy (see the module docstring)."""
    name, jitter = identify_kernel(model, data, jm)
    d = 1 if jm.X.ndim == 1 else jm.X.shape[1]
    n = jm.X.shape[0]
    M = int(features)
    if M < 1:
        raise PlacementError(f"features must be >= 1; got {features}.")
    theta0 = prior_draws(model, J, seed)
    nat = [jm.constrain(jnp.asarray(t)) for t in theta0]
    ell = np.stack([np.asarray(h["ell"], dtype=np.float64).reshape(-1) * np.ones(d) for h in nat])
    eta, sigma = (np.array([float(np.asarray(h[k])) for h in nat]).reshape(J, 1) for k in ("eta", "sigma"))
    rng = np.random.default_rng([seed, 2])
    omega = np.stack([spectral_frequencies(name, rng, M, d) for _ in range(J)])  # (J, M, d)
    b = rng.uniform(0.0, 2.0 * np.pi, size=(J, M))
    w = rng.standard_normal((J, M))
    z = rng.standard_normal((J, n))
    u = np.concatenate([ell, eta, sigma, omega.reshape(J, -1), b, w, z], axis=1)
    cut = np.cumsum([d, 1, 1, M * d, M, M])

    def y_of(u, X):
        ell, eta, sigma, om, b, w, z = jnp.split(u, cut)
        Xm = X[:, None] if X.ndim == 1 else X
        phase = (Xm / ell) @ om.reshape(M, d).T + b
        return eta[0] * jnp.sqrt(2.0 / M) * (jnp.cos(phase) @ w) + jnp.sqrt(sigma[0] ** 2 + jitter) * z

    return Fantasies("gp", u, y_of, f"GP {name}, {M} random Fourier features, hyperparameters from the prior",
                     theta0)


def fantasies_for(model, jm, J: int, seed: int, features: int = 1024) -> Fantasies:
    """The fantasies of a model's observed data (``observed_kind`` says which draw)."""
    if int(J) < 1:
        raise PlacementError(f"fantasies must be >= 1; got {J}.")
    if jm.y is None:
        raise PlacementError("y_mode=predictive needs the observed data in a pm.Data container (problem.observed).")
    kind = observed_kind(model)
    if kind == "normal":
        return normal_fantasies(model, jm.data_name, jm.y.shape, int(J), int(seed))
    return gp_fantasies(model, jm.data_name, jm, int(J), int(seed), features)


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

    return dataclasses.replace(jm, logdensity=wrap(jm.logdensity), loglik=wrap(jm.loglik),
                               objective=wrap(jm.objective), extras=None if jm.extras is None else wrap(jm.extras),
                               y_of=None)


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
