"""Turn a PyMC model into pure JAX functions of (unconstrained theta, X, y).

The design container (a ``pm.Data``) and, when present, the observed-data container are
replaced by explicit graph inputs, so one compiled function serves every design. PyMC's
own JAX export would bake the containers in as constants.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.graph.replace import graph_replace
from pytensor.tensor.math import variadic_add

from placement.runtime import keep_xla_flags

with keep_xla_flags():  # importing pymc.sampling.jax rewrites XLA_FLAGS to fake 100 CPU devices
    from pymc.sampling.jax import _replace_shared_variables, get_jaxified_graph

from placement import rewrites
from placement.errors import PlacementError

Array = jax.Array


@dataclass(frozen=True)
class JaxModel:
    """A model as pure JAX functions of a flat unconstrained parameter vector.

    Attributes:
        logdensity: (theta[p], X, y) -> log p(theta, y | X) on the unconstrained scale,
            Jacobian included. Its X-gradient is the score term of the identity.
        loglik: (theta, X, y) -> log p(y | theta, X).
        objective: (theta, X, y) -> f(theta, X), a scalar.
        constrain: theta -> dict of named parameters on their natural scale.
        X: default design, shape (n,) or (n, d).
        y: observed data at the default design (None when y is not a container).
        param_names: names of the unconstrained coordinates, length p.
        initial_point: a reasonable flat starting point, shape (p,).
        objective_name: name of the Deterministic used as f.
    """

    logdensity: Callable[[Array, Array, Array], Array]
    loglik: Callable[[Array, Array, Array], Array]
    objective: Callable[[Array, Array, Array], Array]
    constrain: Callable[[Array], dict]
    X: np.ndarray
    y: np.ndarray | None
    param_names: tuple[str, ...]
    initial_point: np.ndarray
    objective_name: str
    data_name: str
    observed_name: str | None
    extras: Callable[[Array, Array, Array], dict] | None = None
    y_of: Callable[[Array], Array] | None = None  # y as a function of X (simulator problems)
    distances_rewritten: int = 0  # stock-kernel distance sub-graphs made exact at export
    # (theta, X, y) -> (log density, objective) from one graph: what the two share (a GP's
    # covariance and its factorisation) is computed once; use it through ``paired(jm)``
    logdensity_and_objective: Callable[[Array, Array, Array], tuple] | None = None

    def y_at(self, X):
        """The observed data that go with design X."""
        return self.y if self.y_of is None else np.asarray(self.y_of(jnp.asarray(X)))

    @property
    def ndim(self) -> int:
        return len(self.initial_point)


def paired(jm: JaxModel) -> Callable | None:
    """``jm.logdensity_and_objective`` if it was exported together with ``jm``'s own log density
    and objective, else None (a model whose functions were replaced, e.g. by
    ``dataclasses.replace``, must not use a pair that computes the old ones)."""
    fn = jm.logdensity_and_objective
    if fn is None or getattr(fn, "parts", None) != (jm.logdensity, jm.objective):
        return None
    return fn


def wrapped(jm: JaxModel, wrap: Callable) -> dict:
    """``wrap`` applied to the log density, the likelihood and the objective (and their pair, kept
    paired): the fields for ``dataclasses.replace(jm, **wrapped(jm, wrap), ...)``."""
    logdensity, objective, pair = wrap(jm.logdensity), wrap(jm.objective), paired(jm)
    if pair is not None:
        pair = wrap(pair)
        pair.parts = (logdensity, objective)
    return dict(logdensity=logdensity, loglik=wrap(jm.loglik), objective=objective, logdensity_and_objective=pair)


def _named_containers(model: pm.Model) -> list[str]:
    return sorted(name for name, var in model.named_vars.items() if isinstance(var, SharedVariable))


def _container(model: pm.Model, name: str, role: str) -> SharedVariable:
    var = model.named_vars.get(name)
    if not isinstance(var, SharedVariable):
        have = ", ".join(_named_containers(model)) or "none"
        raise PlacementError(
            f"the model has no pm.Data container named {name!r} for the {role} "
            f"(containers in the model: {have}). Create it with pm.Data({name!r}, ...) "
            f"or set the name in the config (problem.{'data' if role == 'design' else 'observed'}=...)."
        )
    return var


def _flat_layout(model: pm.Model):
    point = model.initial_point()
    names, shapes, sizes = [], [], []
    for v in model.value_vars:
        if v.dtype.startswith("int"):
            raise PlacementError(
                f"parameter {v.name!r} is discrete; the gradient identity needs a continuous "
                "posterior. Marginalise it out or make it continuous."
            )
        shape = tuple(np.shape(point[v.name]))
        names.append(v.name)
        shapes.append(shape)
        sizes.append(int(np.prod(shape, dtype=int)))
    flat = np.concatenate([np.ravel(point[n]).astype(np.float64) for n in names]) if names else np.zeros(0)
    return names, shapes, sizes, flat


@contextlib.contextmanager
def _quiet_rewrites():
    """PyTensor logs a traceback for every graph rewrite that fails on inconsistent shapes
    and then skips it; we check the exported density ourselves and raise one clear error."""
    logger = logging.getLogger("pytensor")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _jaxify_each(inputs, outputs, groups) -> list[Callable]:
    """One JAX function per group of output indices (``get_jaxified_graph(inputs, [outputs[i] for
    i in group])``), from one pass of PyTensor's JAX rewrites over all outputs together (log p, the
    likelihood and f share most of a GP's graph; one pass each cost about 0.3 s more per export on
    the seed GP). An empty group gives None.

    Each function is jitted: the Python that PyTensor generates takes ~0.3 s to trace on a GP, and
    the engine traces log p, f and their derivatives under several transforms (vmap, grad, the
    self-check, the MAP fit); a jitted function is traced once per input shape and its jaxpr
    reused (XLA inlines the call, so the compiled programs compute the same)."""
    from pytensor.compile.mode import JAX
    from pytensor.graph.fg import FunctionGraph
    from pytensor.link.jax.dispatch import jax_funcify

    fgraph = FunctionGraph(inputs=inputs, outputs=_replace_shared_variables(outputs), clone=True)
    # JAX mode's rewrites, plus one covariance where PyMC built it twice (rewrites.SharedSums)
    JAX.including(rewrites.shared_sums_tag()).optimizer.rewrite(fgraph)
    outs = fgraph.outputs
    return [jax.jit(jax_funcify(FunctionGraph(inputs=fgraph.inputs, outputs=[outs[i] for i in g], clone=True)))
            if g else None for g in groups]


def _evaluate(inputs, outputs, args) -> list:
    """The values of ``outputs`` at ``args``, computed once by PyTensor's Python linker on the graph
    as written (no rewrites, nothing compiled): 0.05-0.4 s on a GP where evaluating it through JAX
    op by op took 4.6 s, almost all of it compiling each op. An op without a Python implementation
    falls back to that JAX path."""
    from pytensor.compile.function import function
    from pytensor.compile.mode import Mode
    from pytensor.graph.utils import MethodNotDefined

    try:
        fn = function(inputs, outputs, mode=Mode(linker="py", optimizer=None), on_unused_input="ignore")
        return list(fn(*args))
    except (NotImplementedError, MethodNotDefined):
        return list(get_jaxified_graph(inputs=inputs, outputs=outputs)(*args))


def _rewrite_checked(outs, inputs, model, X0, y0):
    """``rewrites.exact_distances`` on ``outs``, kept only if the values at the model's
    initial point and data are unchanged (the rewrite matches a pattern, not a proof)."""
    new, count = rewrites.exact_distances(outs)
    if not count:
        return outs, 0
    point = model.initial_point()
    args = [point[v.name] for v in model.value_vars] + [X0] + ([] if y0 is None else [y0])
    with _quiet_rewrites():
        values = _evaluate(inputs, [*outs, *new], args)
    for a, b in zip(values[: len(outs)], values[len(outs):]):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if np.all(np.isfinite(a)) and not np.allclose(a, b, rtol=1e-6, atol=1e-9):
            return outs, 0
    return new, count


# PyTensor records a stack trace on every node it creates, for its error messages; the export's
# rewrites create tens of thousands (a warm export of the seed GP with its plot outputs: 0.94 s
# with them, 0.83 s without). None are recorded during the export: the user's own nodes, made
# before it, keep theirs.
@pytensor.config.change_flags(traceback__limit=0)
def from_pymc(
    model: pm.Model,
    objective: str | None,
    data: str = "X",
    observed: str | None = "y",
    extras: tuple[str, ...] = (),
    exact_distances: bool = True,
) -> JaxModel:
    """Export ``model`` once to JAX with the design and observed containers as inputs.

    Args:
        model: a PyMC model with a ``pm.Data`` design container of shape (n,) or (n, d).
        objective: name of the quantity f (usually a ``pm.Deterministic``); None for an
            objective computed outside the model (``placement.eig``), f = 0 here.
        data: name of the design container.
        observed: name of the observed-data container, or None if y is a constant.
            If the named container is absent and ``observed == "y"`` (the default), y is
            treated as a constant of the model.
        extras: names of further model variables to export as ``extras(theta, X, y) -> dict``
            (e.g. predictive mean and variance on a grid, for plots); missing ones are skipped.
        exact_distances: rewrite the expanded-form squared distances of PyMC's stock
            stationary kernels into the difference form, whose X-gradient is exact
            (``placement.rewrites``). Only turn off to study the stock behaviour.
    """
    X_shared = _container(model, data, "design")
    y_shared = None
    if observed is not None:
        if observed in model.named_vars or observed != "y":
            y_shared = _container(model, observed, "observed data")
    if objective is not None and objective not in model.named_vars:
        dets = ", ".join(d.name for d in model.deterministics) or "none"
        raise PlacementError(
            f"the model has no variable named {objective!r} to use as the objective "
            f"(Deterministics in the model: {dets}). Add pm.Deterministic({objective!r}, ...) "
            "or name one of them (objective.name=... with objective=custom on the command line, "
            "objective= in placement.gradient or placement.model.from_pymc)."
        )
    if not model.value_vars:
        raise PlacementError("the model has no free parameters; there is no posterior to sample.")

    X0 = np.asarray(X_shared.get_value(), dtype=np.float64)
    if X0.ndim not in (1, 2):
        raise PlacementError(f"the design container {data!r} must have shape (n,) or (n, d); got {X0.shape}.")
    y0 = None if y_shared is None else np.asarray(y_shared.get_value(), dtype=np.float64)

    # one call for every term (free, then observed, then potentials); the likelihood is the
    # observed ones (no Jacobian: observed variables are not transformed)
    terms = [pt.sum(t) for t in model.logp(jacobian=True, sum=False)]
    logp = variadic_add(*terms)  # as PyMC sums them
    n_free, n_obs = len(model.free_RVs), len(model.observed_RVs)
    obs = terms[n_free : n_free + n_obs]
    loglik = variadic_add(*obs) if obs else pt.constant(0.0)
    (f,) = model.replace_rvs_by_values([model[objective]]) if objective is not None else [pt.constant(0.0, dtype="float64")]
    if f.ndim != 0:
        f = pt.sum(f) if f.type.shape == (1,) else f
        if f.ndim != 0:
            raise PlacementError(
                f"the objective {objective!r} must be a scalar; it has {f.ndim} dimensions. "
                "Reduce it (e.g. its mean) inside the model."
            )

    # Static shapes: a dynamic n breaks pt.eye(n) under jit.
    X_in = pt.tensor("X_in", dtype="float64", shape=X0.shape)
    replace = {X_shared: X_in}
    inputs_extra = [X_in]
    if y_shared is not None:
        y_in = pt.tensor("y_in", dtype="float64", shape=y0.shape)
        replace[y_shared] = y_in
        inputs_extra.append(y_in)
    outs = graph_replace([pt.as_tensor_variable(logp), pt.as_tensor_variable(loglik), f], replace, strict=False)
    rewritten = 0
    if exact_distances:
        outs, rewritten = _rewrite_checked(outs, list(model.value_vars) + [X_in] + ([y_in] if y_shared is not None else []),
                                           model, X0, y0)
    # an identity wherever it matches (L L^T = K), so not re-checked by value: the check evaluates
    # the whole graph twice, 7 s of the export at n = 500 (tests/test_rewrites.py compares them)
    outs, _ = rewrites.gp_solves(outs)
    outs = [pt.cast(o, "float64") for o in outs]
    inputs = list(model.value_vars) + inputs_extra

    # Further outputs, made in the same pass: extras (plots), then the natural-scale parameters.
    extra_names = [n for n in extras if n in model.named_vars]
    i_extras = len(outs)
    if extra_names:
        ex = graph_replace(model.replace_rvs_by_values([model[n] for n in extra_names]), replace, strict=False)
        outs += rewrites.exact_distances(ex)[0] if exact_distances else ex
    free_rvs = list(model.free_RVs)
    nat = model.replace_rvs_by_values(free_rvs)
    i_nat = len(outs)
    outs += nat
    groups = [(0,), (1,), (2,), (0, 2), tuple(range(i_extras, i_nat)), tuple(range(i_nat, len(outs)))]
    with _quiet_rewrites():  # a broken model is reported once, below, not by every failed rewrite
        fns = _jaxify_each(inputs, outs, groups)

    names, shapes, sizes, flat0 = _flat_layout(model)
    offsets = np.cumsum([0] + sizes)

    def unflatten(theta):
        return [jnp.reshape(theta[offsets[i] : offsets[i + 1]], shapes[i]) for i in range(len(names))]

    has_y = y_shared is not None

    def args_of(theta, X, y):
        return unflatten(theta) + [X] + ([y] if has_y else [])

    def scalars(fn, theta, X, y):
        return tuple(jnp.asarray(v, dtype=jnp.float64).reshape(()) for v in fn(*args_of(theta, X, y)))

    def wrap(fn):
        def call(theta, X, y=None):
            return scalars(fn, theta, X, y)[0]

        return call

    def wrap_pair(fn):
        def call(theta, X, y=None):
            return scalars(fn, theta, X, y)

        return call

    extras_fn = None
    if extra_names:
        def extras_fn(theta, X, y=None):
            return dict(zip(extra_names, fns[4](*args_of(theta, X, y))))

    # Natural-scale parameters for reporting (a function of theta alone; the data inputs are unused).
    rv_names = [rv.name for rv in free_rvs]
    data0 = [jnp.asarray(X0)] + ([] if y0 is None else [jnp.asarray(y0)])

    def constrain(theta):
        if not nat:
            return {}
        return dict(zip(rv_names, fns[5](*unflatten(theta), *data0)))

    flat_names = []
    for n, s, k in zip(names, shapes, sizes):
        flat_names += [n] if k == 1 and s in ((), (1,)) else [f"{n}[{i}]" for i in range(k)]

    logdensity = wrap(fns[0])
    try:  # trace once on the model's own data's shapes: mismatched shapes fail here, with a message
        # (abstract evaluation: nothing is compiled or run, where an eager call compiled every op)
        jax.eval_shape(logdensity, jnp.asarray(flat0), jnp.asarray(X0), None if y0 is None else jnp.asarray(y0))
    except (TypeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PlacementError(
            f"the model's log density cannot be evaluated on its own data ({first}). Check that the design "
            f"container {data!r} (shape {X0.shape}) and the observed data"
            f"{'' if y0 is None else f' {observed!r} (shape {y0.shape})'} describe the same points."
        ) from None

    objective_fn = wrap(fns[2])
    pair = wrap_pair(fns[3])
    pair.parts = (logdensity, objective_fn)  # see ``paired``
    return JaxModel(
        logdensity=logdensity,
        loglik=wrap(fns[1]),
        objective=objective_fn,
        logdensity_and_objective=pair,
        constrain=constrain,
        X=X0,
        y=y0,
        param_names=tuple(flat_names),
        initial_point=flat0,
        objective_name=objective or "none",
        data_name=data,
        observed_name=observed if has_y else None,
        extras=extras_fn,
        distances_rewritten=rewritten,
    )
