"""The Python API: estimate dF/dX for a PyMC model in hand, relocate its design, and get
the answers as plain objects, pandas tables and ArviZ posteriors.

    import placement
    est = placement.gradient(model, objective="f")              # F, grad, F_se, grad_se, trusted
    idata = est.to_inference_data()                              # arviz.InferenceData
    run = placement.relocate(model, objective="f", steps=50)     # run.X, run.F, run.trajectory, run.plot()

The model is a ``pm.Model`` with a ``pm.Data`` design container (shape (n,) or (n, d)), its
observed data (a ``pm.Data`` container, or constants) and the objective f (a Deterministic).
Sampler, optimizer and constraint settings are the command line's: a name from ``conf/`` with
keywords on top of its defaults, or the config objects themselves. Every argument is checked
before anything is compiled; a bad one raises one ``PlacementError`` saying what to fix.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import time
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from placement import budget, memory, settings
from placement.engine import Engine
from placement.errors import PlacementError
from placement.estimator import GradientEstimate
from placement.model import JaxModel, from_pymc
from placement.problems import load_builder
from placement.predictive import check_measured_design, hold_measured
from placement.predictive import robust_gradient  # retry.robust_gradient; per fantasy in predictive mode
from placement.retry import RetryConfig
from placement.simulate import simulator_of, with_simulator


@dataclass
class Problem:
    """A model exported to JAX plus the name it came from."""

    name: str
    jm: JaxModel
    y_mode: str = "fixed"  # fixed | simulator | predictive (placement.predictive)
    fantasies: Any = None  # predictive.Fantasies in predictive mode
    eig: Any = None  # eig.EIGSetup for the built-in objective "eig" (expected information gain)


def _check_model(model, design: str, X=None) -> None:
    """What can be checked on the PyMC model itself, before the export: its type and the
    design's shape (the export checks the containers and the objective)."""
    import pymc as pm
    from pytensor.compile.sharedvalue import SharedVariable

    if not isinstance(model, pm.Model):
        raise PlacementError(f"model must be a pm.Model (or a placement.api.Problem); got {type(model).__name__}.")
    var = model.named_vars.get(design)
    if X is not None and isinstance(var, SharedVariable):
        check_shape(X, np.shape(var.get_value()), design)


def problem_from_model(model, objective: str | None, design: str = "X", observed: str | None = "y",
                       name: str = "model", y_mode: str | None = None, fantasies: int = 8, features: int = 1024,
                       fantasy_seed: int = 0, simulator: dict | None = None,
                       objective_options: dict | None = None, measured: int = 0) -> Problem:
    """Export a ``pm.Model`` once to JAX with its design and observed containers as inputs.

    Args:
        model: the PyMC model.
        objective: name of the model quantity used as f (a Deterministic, scalar).
        design: name of the ``pm.Data`` container holding X, shape (n,) or (n, d).
        observed: name of the ``pm.Data`` container holding y (None when y is a constant).
        name: a label for outputs.
        y_mode: what y is while X moves (docs/concepts/design-mode.md): "fixed" (y stays
            attached to its points), "simulator" (y = g(X) + noise e, e fixed) or "predictive"
            (y drawn from the model's own predictive at X, averaged over ``fantasies`` draws
            with common random numbers). None: "simulator" for a model built with a simulator
            (``problems.simulator_gp``), else "fixed".
        fantasies, features, fantasy_seed: predictive mode: the number J of fantasies, random
            Fourier features per GP function draw, and the seed of their random numbers.
        simulator: simulator mode for any model: {"function": name in problems.SIMULATORS or
            a JAX function of X, "noise": sd, "noise_seed": seed of the fixed noise draw}.
        objective_options: objective="eig" (expected information gain about parameters,
            predictive mode only; ``placement.eig``): {"params": names of the free variables
            of interest (default all), "contrastive": L contrastive prior draws per fantasy}.
        measured: predictive mode: the first ``measured`` points of the design are already
            measured (their y are the observed data's): they stay fixed, and the fantasies draw
            the other points' y from the posterior predictive given them.
    """
    from placement import eig, predictive

    if y_mode is not None:
        predictive.check_y_mode(y_mode)
    _check_model(model, design)
    if not objective:
        names = ", ".join(d.name for d in model.deterministics) or "none"
        raise PlacementError(f"name the objective: objective=... (a Deterministic of the model; it has: {names}).")
    sim = simulator_of(model) if simulator is None else simulator_spec(simulator, model, design)
    y_mode = y_mode or ("simulator" if sim is not None else "fixed")
    if y_mode == "simulator" and sim is None:
        raise PlacementError("y_mode=simulator needs a function to measure y = g(X) + noise: use a problem built "
                             "with one (problem=simulator) or pass simulator={'function': ..., 'noise': ...}.")
    builtin_eig = objective == eig.NAME and eig.NAME not in model.named_vars
    if builtin_eig:  # checked before the export
        eig.check(y_mode, objective)
        eig.params_mask(model, eig.eig_config(objective_options).params)
    X_shared = model.named_vars.get(design)
    n = int(np.shape(X_shared.get_value())[0]) if hasattr(X_shared, "get_value") else 0
    measured = predictive.check_measured(measured, n, y_mode) if measured else 0
    if measured and builtin_eig:
        raise PlacementError("objective=eig with measured points is not supported: its contrastive draws come from the "
                             "prior. Use measured=0, or an objective of the model.")
    if y_mode == "predictive":
        predictive.observed_kind(model)  # an unsupported observed distribution fails here, before the export
        if int(fantasies) < 1:
            raise PlacementError(f"fantasies must be >= 1; got {fantasies}.")
    jm = from_pymc(model, objective=None if builtin_eig else objective, data=design, observed=observed,
                   extras=() if builtin_eig else ("pred_mu", "pred_var"))
    if y_mode == "simulator":
        return Problem(name, with_simulator(jm, *sim), y_mode)
    if y_mode == "predictive":
        fa = predictive.fantasies_for(model, jm, fantasies, fantasy_seed, features, measured)
        if builtin_eig:
            return Problem(name, dataclasses.replace(jm, objective_name=eig.NAME), y_mode, fa,
                           eig.prepare(model, fa, objective_options, fantasy_seed))
        return Problem(name, jm, y_mode, fa)
    return Problem(name, jm, y_mode)


def simulator_spec(simulator: dict, model, design: str) -> tuple:
    """(function, noise, e) for ``with_simulator`` from {"function", "noise", "noise_seed"}."""
    if not isinstance(simulator, dict) or "function" not in simulator:
        raise PlacementError("simulator must be a dict with a 'function' (a name in problems.SIMULATORS or a JAX "
                             "function of X) and optionally 'noise' and 'noise_seed'.")
    unknown = set(simulator) - {"function", "noise", "noise_seed"}
    if unknown:
        raise PlacementError(f"unknown simulator option {sorted(unknown)[0]!r}; the options are function, noise, "
                             "noise_seed.")
    n = np.shape(model[design].get_value())[0]
    e = np.random.default_rng(int(simulator.get("noise_seed", 0))).normal(size=n)
    return simulator["function"], float(simulator.get("noise", 0.0)), e


def make_engine(problem: Problem, sampler_cfg: Any, gradient_check: str = "error"):
    """The engine for a problem: an ``Engine``, or a ``predictive.DesignEngine`` over the
    problem's fantasies in predictive mode, or an ``eig.EIGEngine`` for objective="eig"."""
    if problem.eig is not None:
        from placement.eig import EIGEngine

        return EIGEngine(problem.jm, problem.fantasies, problem.eig)
    if problem.fantasies is not None:
        from placement.predictive import DesignEngine

        return DesignEngine(problem.jm, problem.fantasies, sampler_cfg, gradient_check=gradient_check)
    return Engine(problem.jm, sampler_cfg, gradient_check=gradient_check)


EXPORTS_KEPT = 8  # exported problems build_problem keeps per process (a sweep's jobs share them)
_EXPORTS: dict = {}


def _plain(v) -> bool:
    """A value whose repr is the value: what an export's cache key may hold."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return True
    if isinstance(v, (list, tuple)):
        return all(_plain(u) for u in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _plain(u) for k, u in v.items())
    return False


def _export_key(builder, args: dict, kernel, rest: tuple):
    """The cache key of an export, or None when an argument is not a plain value (an array,
    an object): the builder (the function object itself, so a reloaded module builds anew),
    its arguments, the kernel (a class or a partial of one with plain arguments) and the rest
    of the configuration."""
    k = kernel
    if isinstance(k, functools.partial):
        if not (_plain(list(k.args)) and _plain(dict(k.keywords))):
            return None
        k = (k.func, k.args, tuple(sorted(k.keywords.items())))
    elif kernel is not None and not isinstance(kernel, type):
        return None
    plain_args = {a: v for a, v in args.items() if a != "kernel"}
    if not (_plain(plain_args) and _plain(rest)):
        return None
    return (builder, repr(sorted(plain_args.items())), k, repr(rest))


def build_problem(problem_cfg: Any, kernel: Any = None, objective: str | None = None,
                  objective_options: Any = None) -> Problem:
    """Call the configured builder and export its model to JAX (the command line's path).

    The last EXPORTS_KEPT exports are kept by configuration, so a sweep run in one process
    (Hydra's default launcher) exports each problem once; a builder must therefore be a
    function of its arguments (seed any random data through them, as the built-in problems do).

    Args:
        problem_cfg: mapping with keys builder ("module:function"), args, data, observed
            (see conf/problem/*.yaml).
        kernel: covariance class or partial, passed to builders that take ``kernel``.
        objective: name of the model quantity used as f (default: problem_cfg["objective"]).
        objective_options: the objective's config (conf/objective/eig.yaml: params, contrastive).
    """
    from omegaconf import OmegaConf

    design_mode = design_mode_options(problem_cfg)  # checked before the builder runs
    builder = load_builder(problem_cfg["builder"])
    args = problem_cfg.get("args") or {}
    args = dict(OmegaConf.to_container(args, resolve=True) if OmegaConf.is_config(args) else args)
    params = inspect.signature(builder).parameters
    if kernel is not None and "kernel" in params and "kernel" not in args:
        args["kernel"] = kernel
    objective = objective or problem_cfg.get("objective")
    if OmegaConf.is_config(objective_options):
        objective_options = OmegaConf.to_container(objective_options, resolve=True)
    data, observed, name = problem_cfg.get("data", "X"), problem_cfg.get("observed", "y"), problem_cfg.get("name", "custom")
    key = _export_key(builder, args, args.get("kernel"),
                      (objective, objective_options, data, observed, sorted(design_mode.items())))
    if key is not None and key in _EXPORTS:
        _EXPORTS[key] = _EXPORTS.pop(key)  # most recently used last
        return dataclasses.replace(_EXPORTS[key], name=name)
    try:
        model = builder(**args)
    except PlacementError:
        raise
    except TypeError as e:
        raise PlacementError(f"problem.builder {problem_cfg['builder']} rejected its arguments: {e}") from None
    import pymc as pm

    if not isinstance(model, pm.Model):
        raise PlacementError(
            f"problem.builder {problem_cfg['builder']} returned {type(model).__name__}, not a pm.Model."
        )
    if not objective:
        raise PlacementError("no objective named: set objective.name=... (the model's Deterministic to use as f).")
    problem = problem_from_model(model, objective, data, observed, objective_options=objective_options, **design_mode)
    if key is not None:
        _EXPORTS[key] = problem
        while len(_EXPORTS) > EXPORTS_KEPT:
            _EXPORTS.pop(next(iter(_EXPORTS)))
    return dataclasses.replace(problem, name=name)


def design_mode_options(problem_cfg: Any) -> dict:
    """y_mode, fantasies, features, fantasy_seed and simulator from a problem config, checked."""
    from omegaconf import OmegaConf

    from placement.predictive import check_y_mode

    out = {}
    if problem_cfg.get("y_mode") is not None:
        out["y_mode"] = check_y_mode(str(problem_cfg.get("y_mode")))
    for key in ("fantasies", "features", "fantasy_seed"):
        if problem_cfg.get(key) is not None:
            out[key] = int(problem_cfg.get(key))
    if problem_cfg.get("measured") is not None:  # checked whole (predictive.check_measured), not rounded
        out["measured"] = problem_cfg.get("measured")
    sim = problem_cfg.get("simulator")
    if sim is not None:
        out["simulator"] = OmegaConf.to_container(sim, resolve=True) if OmegaConf.is_config(sim) else dict(sim)
    return out


def predictive_summary(engine: Engine, state, X, key, max_draws: int = 400):
    """Posterior predictive mean and sd of f on the model's plotting grid at design X.

    Uses the model's ``pred_mu`` and ``pred_var`` quantities (None if it has none); the
    mixture over hyperparameters gives var = E[pred_var] + Var[pred_mu].
    """
    jm = engine.jm
    if jm.extras is None:
        return None
    y = jm.y_at(X)
    _, sample = engine.draw(key, state, X, y)
    theta = jnp.asarray(sample.theta)
    W = engine.sample_weights(sample, X, y)
    idx = np.random.default_rng(0).choice(len(theta), size=min(max_draws, len(theta)), p=W)
    # jitted: run eagerly, every operation of the predictive compiled a program of its own (~2-4 s)
    ex = jax.jit(jax.vmap(jm.extras, in_axes=(0, None, None)))(theta[idx], jnp.asarray(X), None if y is None else jnp.asarray(y))
    if "pred_mu" not in ex or "pred_var" not in ex:
        return None
    mu, var = np.asarray(ex["pred_mu"]), np.asarray(ex["pred_var"])
    return mu.mean(0), np.sqrt(var.mean(0) + mu.var(0))


def check_shape(X, shape: tuple, name: str = "X") -> np.ndarray:
    """X as float64 with the design's shape, finite."""
    try:
        X = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError):
        raise PlacementError(f"{name} must be a list of numbers (or a list of lists for d > 1 columns).") from None
    if X.shape != tuple(shape):
        raise PlacementError(
            f"{name} has shape {X.shape} but the problem's design has shape {tuple(shape)}; give one value "
            "per point (a row of d values per point when d > 1)."
        )
    if not np.all(np.isfinite(X)):
        raise PlacementError(f"{name} contains NaN or infinite values; every coordinate must be a finite number.")
    return X


def check_design(X, jm: JaxModel) -> np.ndarray:
    """Validate a user design against the model: shape and finiteness."""
    return check_shape(X, jm.X.shape)


@dataclass(frozen=True)
class Estimate:
    """F(X) = E[f | y, X] and dF/dX with Monte Carlo standard errors.

    Attributes:
        F, F_se: the estimate and its standard error.
        grad, grad_se: dF/dX and its standard errors, shape of X.
        diagnostics: the sampler's diagnostics (draws, ESS, Pareto k, r_hat, attempts, ...).
        X: the design the estimate was made at.
    """

    F: float
    grad: np.ndarray
    F_se: float
    grad_se: np.ndarray
    diagnostics: dict
    X: np.ndarray
    _source: Any = field(default=None, repr=False, compare=False)  # (engine, estimate, y) for the posterior

    @property
    def trusted(self) -> bool:
        """Whether every check passed (``placement.retry.diagnose``, the one trust rule)."""
        return bool(self.diagnostics.get("trusted", not self.warnings))

    @property
    def warnings(self) -> list[str]:
        """Why the estimate is not trusted, each with what to try; empty when trusted."""
        return list(self.diagnostics.get("warnings", []))

    def to_inference_data(self, num_draws: int | None = None, chains: int = 4, seed: int = 0):
        """The posterior draws behind the estimate as an ``arviz.InferenceData`` (weighted
        draws resampled to equal weight; see ``placement.inference_data``)."""
        if self._source is None:
            raise PlacementError("this estimate was not made by placement.gradient; it has no draws to export.")
        engine, est, y = self._source
        return posterior_of(engine, est, self.X, y, num_draws=num_draws, chains=chains, seed=seed)


def posterior_of(engine: Engine, est: GradientEstimate, X, y, num_draws: int | None = None, chains: int = 4,
                 seed: int = 0):
    """``arviz.InferenceData`` of the draws behind an engine's estimate at design X."""
    from placement.inference_data import to_inference_data

    sample = est.sample
    weights = None
    if sample is not None and sample.log_q is not None and est.diagnostics.get("sampler") != "map":
        weights = engine.sample_weights(sample, X, y)
    return to_inference_data(est, engine.jm, X, y, weights=weights, num_draws=num_draws, chains=chains, seed=seed)


def _problem(model, objective, design, observed, X, y_mode, fantasies, seed, simulator,
             objective_options=None, measured: int = 0) -> Problem:
    """The problem behind ``gradient`` and ``relocate``: a given ``Problem`` (whose y_mode was
    fixed when it was built) or an export of the model in the requested y_mode."""
    if isinstance(model, Problem):
        if y_mode is not None and y_mode != model.y_mode:
            raise PlacementError(f"this Problem was built with y_mode={model.y_mode}; build it again with "
                                 f"y_mode={y_mode} (problem_from_model or problem.y_mode=...).")
        built = 0 if model.fantasies is None else int(model.fantasies.measured)
        if measured and measured != built:
            raise PlacementError(f"this Problem was built with measured={built}; build it again with "
                                 f"measured={measured} (problem_from_model(..., measured=...)).")
        return model
    if y_mode is not None:
        from placement.predictive import check_y_mode

        check_y_mode(y_mode)
    _check_model(model, design, X)
    return problem_from_model(model, objective, design, observed, y_mode=y_mode, fantasies=fantasies,
                              fantasy_seed=seed, simulator=simulator, objective_options=objective_options,
                              measured=measured)


def _estimate(engine: Engine, est: GradientEstimate, X, y) -> Estimate:
    return Estimate(est.F, np.asarray(est.grad), est.F_se, np.asarray(est.grad_se), est.diagnostics, np.asarray(X),
                    (engine, est, y))


def gradient(model, objective: str | None = None, *, design: str = "X", observed: str | None = "y",
             sampler: Any = "importance", X=None, seed: int = 0, engine: Engine | None = None,
             retry: RetryConfig | dict | None = None, gradient_check: str = "error", y_mode: str | None = None,
             fantasies: int = 8, simulator: dict | None = None, max_seconds: float | None = None,
             measured: int = 0,
             max_memory: Any = None, objective_options: dict | None = None, **sampler_options) -> Estimate:
    """F and dF/dX at X (default: the model's own design) with standard errors.

    Args:
        model: a ``pm.Model`` (or a ``Problem`` from ``build_problem``).
        objective: name of the Deterministic used as f.
        design, observed: names of the ``pm.Data`` containers holding X and y.
        sampler: a name from ``conf/sampler/`` (importance, quadrature, nuts, map, ...) or a
            config object (``placement.importance.ISConfig(...)``, ...).
        X: the design to evaluate at, shape of the design container.
        seed: random seed (same seed, same numbers).
        engine: a compiled ``Engine`` to reuse across calls (then ``sampler`` is ignored).
        retry: ``RetryConfig`` or a dict of its fields: what counts as sampler trouble.
        gradient_check: "error" (stop when the model's X-derivatives disagree with finite
            differences), "untrusted" (go on, every estimate untrusted) or "off".
        y_mode: fixed | simulator | predictive: what y is at X (``problem_from_model``; default:
            the model's own, simulator if it was built with one, else fixed). predictive:
            F is averaged over ``fantasies`` draws of y from the model's predictive at X (the
            fantasies' random numbers come from ``seed``: same seed, same fantasies).
        measured: predictive mode: the first ``measured`` points are already measured (their y
            the observed data's); the fantasies are drawn given them (``problem_from_model``).
        simulator: simulator mode for any model, see ``problem_from_model``.
        objective_options: for objective="eig" (predictive mode): {"params": [...],
            "contrastive": L}, see ``problem_from_model`` and ``placement.eig``.
        max_seconds: time budget of the call, as ``placement gradient max_seconds=`` (None/0 =
            none): further draws for ``rel_se`` stop when it runs out (``diagnostics["cut_short"]``);
            a budget spent before the first estimate is a ``PlacementError``.
        max_memory: memory the draws' batches are planned for, as ``placement gradient
            max_memory=``: bytes, "8GB", a share of the available memory (0.5), or None/"auto"
            (80% of it); work that cannot fit stops before any draw (docs/how-to/long-work.md).
        **sampler_options: the sampler's settings, e.g. ``num_samples=4096``, ``rel_se=0.01``.

    On sampler trouble the estimate is redone with safer settings; ``diagnostics["attempts"]``
    and ``["actions"]`` say what was done, ``.trusted`` whether it worked and ``.warnings`` why not.
    """
    t0 = time.perf_counter()
    if isinstance(model, Problem) and objective is not None and not isinstance(objective, str):
        sampler, objective = objective, None  # the older form gradient(problem, sampler_cfg, ...)
    retry = settings.retry_config(retry)
    if gradient_check not in ("error", "untrusted", "off"):
        raise PlacementError(f"gradient_check must be error, untrusted or off; got {gradient_check!r}.")
    budget.check_seconds(max_seconds), memory.limit(max_memory)  # checked before anything is built
    sampler_cfg = None if engine is not None else settings.sampler_config(sampler, "gradient", **sampler_options)
    problem = _problem(model, objective, design, observed, X, y_mode, fantasies, seed, simulator, objective_options,
                       measured)
    jm = problem.jm
    X = jm.X if X is None else check_design(X, jm)
    check_measured_design(problem.fantasies, jm.X, X)
    with budget.scope(max_seconds), memory.scope(max_memory):  # the CLI's max_seconds and max_memory
        engine = engine or make_engine(problem, sampler_cfg, gradient_check=gradient_check)
        y = engine.jm.y_at(X)
        k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
        state = engine.init(k1, X, y)
        _, est, attempts = robust_gradient(engine, k2, state, X, y, retry)
    est.diagnostics.update(attempts.summary())
    est.diagnostics["y_mode"] = problem.y_mode
    est.diagnostics["trusted"] = bool(attempts.trusted)
    est.diagnostics["seconds_total"] = time.perf_counter() - t0
    return _estimate(engine, est, X, y)


@dataclass
class Relocation:
    """The outcome of ``relocate``.

    Attributes:
        X: the final design; X0: the starting one.
        F, F_se: the estimate at the final design.
        trajectory: one row per outer step (step, F, F_se, grad_norm, every coordinate x0, x1,
            ..., diagnostics, projection, attempts, trusted), a pandas DataFrame.
        stop_reason: steps | grad_tol | patience | sampler_trouble.
        estimate: the last ``Estimate`` (at the final design): ``.to_inference_data()``.
        state: the loop's ``OuterState`` (``placement.loop``), to continue from.
        best: the trusted step with the best F, {step, F, F_se, X, se_gap} (``placement.loop.
            best_visited``): the final design need not be the best one visited.
    """

    X: np.ndarray
    X0: np.ndarray
    F: float
    F_se: float
    trajectory: Any
    stop_reason: str
    objective: str
    direction: str
    estimate: Estimate | None = None
    state: Any = field(default=None, repr=False)
    y_mode: str = "fixed"  # what y was while X moved: fixed | simulator | predictive
    best: dict | None = None

    def to_inference_data(self, **kwargs):
        """The posterior at the final design (see ``Estimate.to_inference_data``)."""
        if self.estimate is None:
            raise PlacementError("no step ran in this call, so there is no estimate at the final design.")
        return self.estimate.to_inference_data(**kwargs)

    def plot(self, axes=None):
        """Two panels: the points' coordinates over the steps, and F +- 2 SE over the steps.
        Returns the matplotlib figure."""
        import matplotlib.pyplot as plt

        df = self.trajectory
        if axes is None:
            fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        else:
            fig = axes[0].figure
        cols = [c for c in df.columns if c[0] == "x" and c[1:].split("_")[0].isdigit()]
        for c in cols:
            axes[0].plot(df["step"], df[c], lw=1)
        axes[0].set_xlabel("outer step")
        axes[0].set_ylabel("point coordinate")
        axes[0].set_title("design points")
        axes[1].plot(df["step"], df["F"], color="C0")
        axes[1].fill_between(df["step"], df["F"] - 2 * df["F_se"], df["F"] + 2 * df["F_se"], color="C0", alpha=0.3,
                             label="+- 2 SE")
        axes[1].set_xlabel("outer step")
        axes[1].set_ylabel(self.objective)
        axes[1].set_title(f"{self.objective} ({self.direction})")
        axes[1].legend()
        fig.tight_layout()
        return fig


def _optimizer(cfg, optimizer, learning_rate, optimizer_options):
    """The optax transform: a config node built from the yaml group, or the object given."""
    import optax

    if isinstance(optimizer, optax.GradientTransformation):
        if learning_rate is not None or optimizer_options:
            raise PlacementError("learning_rate and optimizer_options apply to a named optimizer; an optax "
                                 "transform given as optimizer= carries its own settings.")
        return optimizer
    values = dict(optimizer_options or {})
    if learning_rate is not None:
        values["learning_rate"] = learning_rate
    settings.set_keys(cfg.optimizer, values, f"optimizer={optimizer}")
    return settings.instantiate(cfg.optimizer, "optimizer")


def relocate(model, objective: str | None = None, *, steps: int = 50, direction: str | None = None,
             optimizer: Any = "adam", learning_rate: float | None = None, optimizer_options: dict | None = None,
             constraints: Any = None, sampler: Any = "importance_run", seed: int = 0, X0=None, design: str = "X",
             observed: str | None = "y", grad_tol: float = 0.0, patience: int = 0,
             retry: RetryConfig | dict | None = None, gradient_check: str = "error", progress: bool = True,
             y_mode: str | None = None, fantasies: int = 8, simulator: dict | None = None,
             max_seconds: float | None = None, max_memory: Any = None, objective_options: dict | None = None,
             measured: int = 0, **sampler_options) -> Relocation:
    """Relocate the design along dF/dX: the outer loop of ``placement run``.

    Each step estimates F and dF/dX at X (the sampler continues from the previous step's
    state), takes one optimizer step (descent for ``minimize``, ascent for ``maximize``) and
    projects X onto the constraints.

    Args:
        model: a ``pm.Model`` (or a ``Problem``); objective, design, observed: as in ``gradient``.
        steps: outer steps at most. direction: "minimize" or "maximize" F (default: maximize
            for objective="eig", else minimize).
        optimizer: a name from ``conf/optimizer/`` (adam, sgd, momentum, rmsprop) or an optax
            ``GradientTransformation``. learning_rate: its step size (default: the yaml's, 0.1).
        optimizer_options: further settings of a named optimizer (schedule_kind, clip_norm, ...).
        constraints: ``placement.constraints.Constraints`` or a dict with keys lower, upper,
            min_spacing, fixed, max_step (default: none).
        sampler, **sampler_options: as in ``gradient`` (default: importance_run, the run default).
        seed: random seed; step k uses ``fold_in(seed, k)``.
        X0: the starting design (default: the model's own).
        grad_tol, patience: stopping rules (0 = off): |dF/dX| below grad_tol; F unchanged beyond
            2 SE for ``patience`` steps.
        retry: ``RetryConfig`` or a dict of its fields.
        progress: show the steps' progress: a tqdm bar (a widget in notebooks), or plain lines when
            stderr is not a terminal (logs, batch jobs).
        y_mode, fantasies, simulator, measured: what y is while X moves, as in ``gradient``;
            predictive mode relocates the design for the objective averaged over the data it
            could give (the ``measured`` first points held fixed with their y).
        objective_options: for objective="eig", as in ``gradient``.
        max_seconds: time budget of each step's estimate, as ``placement run max_seconds=``
            (None/0 = none); a cut step has ``cut_short`` in the trajectory.
        max_memory: memory the draws' batches are planned for, as in ``gradient``.
    """
    import pandas as pd

    from placement.constraints import check_design_in_bounds
    from placement.loop import Progress, best_visited, initial_state, run_loop

    choices = {}
    if isinstance(sampler, str):
        choices["sampler"] = sampler
    if isinstance(optimizer, str):
        choices["optimizer"] = optimizer
    cfg = settings.compose("run", choices)
    direction = direction or ("maximize" if objective == "eig" else "minimize")
    settings.set_keys(cfg, {"steps": steps, "seed": seed, "gradient_check": gradient_check}, "run")
    settings.set_keys(cfg.objective, {"direction": direction}, "objective")
    settings.set_keys(cfg.stop, {"grad_tol": grad_tol, "patience": patience}, "stop")
    if isinstance(retry, dict):
        settings.set_keys(cfg.retry, retry, "retry")
    step_seconds = budget.check_seconds(max_seconds)  # None/0: no budget (inf)
    memory.limit(max_memory)  # checked before anything is built
    loop_cfg = dataclasses.replace(settings.loop_config(cfg),
                                   max_seconds=0.0 if step_seconds == float("inf") else step_seconds)
    if retry is not None and not isinstance(retry, dict):
        loop_cfg = dataclasses.replace(loop_cfg, retry=settings.retry_config(retry))
    if gradient_check not in ("error", "untrusted", "off"):
        raise PlacementError(f"gradient_check must be error, untrusted or off; got {gradient_check!r}.")
    if isinstance(sampler, str):
        settings.set_keys(cfg.sampler, sampler_options, f"sampler={sampler}")
        sampler_cfg = settings.instantiate(cfg.sampler, "sampler")
    else:
        sampler_cfg = settings.sampler_config(sampler, **sampler_options)
    tx = _optimizer(cfg, optimizer, learning_rate, optimizer_options)
    cons = settings.constraints_from(constraints)
    problem = _problem(model, objective, design, observed, X0, y_mode, fantasies, seed, simulator, objective_options,
                       measured)
    cons = hold_measured(cons, problem.fantasies)
    jm = problem.jm
    X0 = jm.X if X0 is None else check_design(X0, jm)
    check_measured_design(problem.fantasies, jm.X, X0)
    check_design_in_bounds(X0, cons)
    bar = Progress(loop_cfg.steps, enabled=progress, desc="placement.relocate")
    last = {}

    def on_step(st, est):
        last["est"] = est
        bar(st, est)

    try:
        with memory.scope(max_memory):  # the batches of every engine built inside are planned for it
            engine = make_engine(problem, sampler_cfg, gradient_check=gradient_check)
            state = initial_state(engine, X0, tx, seed)
            state = run_loop(engine, state, tx, cons, loop_cfg, on_step=on_step)
    finally:
        bar.close()
    rows = pd.DataFrame(state.rows)
    est = last.get("est")
    X = np.asarray(state.X)
    return Relocation(X=X, X0=np.asarray(X0), F=float(rows["F"].iloc[-1]), F_se=float(rows["F_se"].iloc[-1]),
                      trajectory=rows, stop_reason=state.stop_reason, objective=jm.objective_name,
                      direction=direction, estimate=None if est is None else _estimate(engine, est, X, engine.jm.y_at(X)),
                      state=state, y_mode=problem.y_mode, best=best_visited(state.rows, direction, X.shape))
