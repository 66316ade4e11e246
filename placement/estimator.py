"""The gradient identity and its Monte Carlo standard errors.

For F(X) = E[f(theta, X) | y, X] and draws theta_i with normalised weights W_i,

    F_hat    = sum_i W_i f_i
    grad_hat = sum_i W_i [ df_i + (f_i - F_hat) (s_i - S_hat) ]

with df_i = df/dX and s_i = d/dX log p(theta_i, y | X) (the whole joint, so a prior that
depends on X is handled), S_hat = sum_i W_i s_i. Centring s on S_hat leaves the estimate
unchanged (sum_i W_i (f_i - F_hat) = 0) and makes h_i - grad_hat the influence function
of the whole ratio estimator, so the delta-method variance is sum_i W_i^2 psi_i^2 for
independent weighted draws and var(psi) / ESS(psi) for MCMC. For self-normalised
importance or quadrature weights the expression is exactly d/dX of F_hat(X) with the
draws held fixed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from blackjax import diagnostics as bjd

from placement import budget, distributed, memory, samplers
from placement.errors import PlacementError

if TYPE_CHECKING:  # placement.model imports PyMC (seconds); suggest's closed-form path needs none of it
    from placement.model import JaxModel

Array = jax.Array


class Sample(NamedTuple):
    """Draws to average over, from any sampler.

    theta: (N, p) unconstrained draws.
    log_q: (N,) log proposal density (importance) or -log cell volume (quadrature);
        None for MCMC, whose draws carry equal weight.
    chains: the number of chains c when the draws are chain-major MCMC series (N = c * n),
        weighted or not (reused, reweighted NUTS draws), else None.
    twos: (N, p) int8 nested levels of a tensor grid (quadrature only), else None: per node
        and axis, 1 if its index along that axis is even, 2 if a multiple of 4, else 0 (the
        nodes with twos[:, j] >= 1 form the grid at half resolution along axis j).
    info: the sampler's typed diagnostics (a NamedTuple such as NUTSInfo) or a dict of plain
        values; a grid's info has ``points`` (nodes per axis, C order).
    edge: (N,) bool mask of the grid's outermost layer (quadrature only), else None.
    groups: G when the draws are G equal, independent, group-major blocks whose points are
        not independent within a block (randomised quasi-Monte Carlo): the standard error
        then comes from the spread of the blocks' contributions. None otherwise.
    """

    theta: np.ndarray
    log_q: np.ndarray | None
    chains: int | None
    twos: np.ndarray | None
    info: Any
    edge: np.ndarray | None = None
    groups: int | None = None


class GradientEstimate(NamedTuple):
    """F and dF/dX with Monte Carlo standard errors and diagnostics."""

    F: float
    grad: np.ndarray  # shape of X
    F_se: float
    grad_se: np.ndarray  # shape of X
    diagnostics: dict
    sample: Any = None  # the draws behind the estimate (a Sample), for placement.inference_data


_PLANS: dict = {}
_TERMS: dict = {}
CHUNK = 2048  # most draws per compiled call of the shared terms
CALL_WORK = 9e6  # draws x n^2 (1 + n / 2500) per compiled call: about 1 s of a GP's terms on one CPU core
ACCELERATOR_WORK = 64  # ... and an accelerator (GPU) does that much more per call
BATCH_ELEMENTS = 250_000  # draws vectorised at once x n^2: larger batches ran slower per draw on CPU
MIN_PAD = 64  # fewer draws than a chunk are padded to a power of two, at least this many


def _draw_work(jm: JaxModel) -> float:
    """Relative cost of one draw's terms: n^2 (1 + n / 2500) for n points (fitted to a GP's terms
    on one CPU core: 0.3 ms at n = 60, 4 ms at n = 200, 45 ms at n = 500; the n x n products and
    the grid dominate below n ~ 1000, the factorisation above)."""
    n = int(jm.X.shape[0]) if jm.X.ndim else 1
    return n * n * (1.0 + n / 2500.0)


def auto_batch(jm: JaxModel) -> int:
    """Preferred draws vectorised at once, a power of two: 512 for small models, fewer as the
    n x n matrices grow (batch x n^2 <= BATCH_ELEMENTS). Measured on the GP's terms on one CPU
    core, n = 60: 0.31 ms per draw at batch 32-64, 0.40 ms at 512; n = 200: 3.4-4.4 ms at 1-8,
    5.1 ms at 32, where each call also page-faulted its fresh 160 MB of temporaries (40 ms).
    ``plan`` lowers it to fit ``max_memory``."""
    n = int(jm.X.shape[0]) if jm.X.ndim else 1
    return _power_of_two(int(np.clip(BATCH_ELEMENTS // max(n * n, 1), 1, 512)))


def auto_chunk(jm: JaxModel, nbytes: int | None = None) -> int:
    """Draws per compiled call, a power of two: CHUNK for small models, fewer as a draw's work
    grows, so that a call takes about a second (signals and the time budget act between calls,
    and each call's fixed cost stays a few percent); with ``nbytes`` (max_memory), also small
    enough that a call's draws and results (p + 2 + 2 x X.size values each) take at most a
    quarter of it."""
    work = CALL_WORK * (1 if jax.local_devices()[0].platform == "cpu" else ACCELERATOR_WORK)
    c = min(CHUNK, max(1.0, work / _draw_work(jm)))
    c = 1 << int(np.round(np.log2(c)))  # the nearest power of two: calls of 0.7-1.4 s
    if nbytes is not None:
        c = min(c, _power_of_two(max(1, nbytes // (4 * 8 * (jm.ndim + 2 + 2 * int(np.size(jm.X)))))))
    return int(c)


class Plan(NamedTuple):
    """How the draws' terms are computed: ``batch`` draws vectorised at once, ``chunk`` draws
    per compiled call (per device: ``chunk / devices``), ``bytes`` the peak XLA planned for
    one call on one device (None: not known), ``limit`` max_memory in bytes per device."""

    batch: int
    chunk: int
    bytes: int | None
    limit: int


def _one_terms(jm: JaxModel) -> Callable:
    """One draw's (log p, f, df/dX, d log p/dX). With the model's joint function (``model.paired``)
    the forward pass, where a GP factorises its covariance, runs once for both derivatives (two
    reverse passes from one linearisation)."""
    from placement.model import paired

    pair = paired(jm)
    if pair is None:
        def one(theta, X, y):
            logp, s = jax.value_and_grad(jm.logdensity, argnums=1)(theta, X, y)
            f, df = jax.value_and_grad(jm.objective, argnums=1)(theta, X, y)
            return logp, f, df, s

        return one

    def one(theta, X, y):
        (logp, f), lin = jax.linearize(lambda x: pair(theta, x, y), X)
        # one transpose per output: each reverse pass runs only its own output's branch
        (s,) = jax.linear_transpose(lambda t: lin(t)[0], X)(jnp.ones_like(logp))
        (df,) = jax.linear_transpose(lambda t: lin(t)[1], X)(jnp.ones_like(f))
        return logp, f, df, s

    return one


_PROGRAMS: dict = {}


def _program(jm: JaxModel, kind: str, batch: int) -> Callable:
    """Jitted per-draw ``terms`` (or ``logp``: the log density alone) over the draws, ``batch``
    at a time, sharded over the process's devices when there are several. One program per
    (model, kind, batch), so what ``plan`` compiles to read its memory is what the calls then
    find in JAX's cache (no second compile). ``.jitted`` and ``.specs``: see ``_over_devices``."""
    key = (id(jm), kind, batch, distributed.lockstep())  # across processes, or this one's devices
    if key not in _PROGRAMS or _PROGRAMS[key][0] is not jm:
        one = _one_terms(jm) if kind == "terms" else (lambda t, X, y: (jm.logdensity(t, X, y),))

        def local(thetas, X, y):
            return jax.lax.map(lambda t: one(t, X, y), thetas, batch_size=batch)

        _PROGRAMS[key] = (jm, _over_devices(local))
    return _PROGRAMS[key][1]


def _power_of_two(b: int) -> int:
    """The largest power of two <= b: batches that split a chunk evenly (lax.map then compiles
    one batch body, not a second one for a remainder)."""
    return 1 << int(np.log2(max(b, 1)))


def plan(jm: JaxModel, max_memory=None) -> Plan:
    """Batch and chunk for the shared terms from the model's size and ``max_memory`` (default:
    ``placement.memory.setting()``, the active ``memory.scope``; None = auto), before any draw
    is made: compiles the terms for one call at the preferred batch and reads the peak bytes
    from XLA (``memory.fit_batch``), shrinking the batch until it fits. Work that does not fit
    one draw at a time raises one ``PlacementError`` naming the size and what to change. CPU
    devices share the host's memory: each gets max_memory / devices."""
    setting = memory.setting() if max_memory is None else max_memory
    key = (id(jm), repr(setting), distributed.lockstep())
    if key in _PLANS and _PLANS[key][0] is jm:
        return _PLANS[key][1]
    local = jax.local_devices()
    D = len(jax.devices()) if distributed.lockstep() else len(local)
    lim = memory.limit(setting)
    share = ""
    if len(local) > 1 and local[0].platform == "cpu":
        share = f" per device ({memory.human(lim)} over {len(local)} CPU devices)"
        lim //= len(local)
    if distributed.lockstep():  # the smallest over the processes, so that every one plans the same work
        own, lim = lim, distributed.agree_min((lim,))[0]
        share += " (the smallest over the processes)" if lim < own else ""
    chunk = auto_chunk(jm, lim)
    per_device = -(-chunk // D)
    X = jnp.asarray(jm.X)
    y = jnp.zeros(0) if jm.y is None else jnp.asarray(jm.y)
    n = int(X.shape[0]) if X.ndim else 1

    def what(need):
        return (f"the gradient's terms (n={n} points, {int(X.size)} design coordinates, {jm.ndim} parameters; "
                f"one draw at a time, {chunk} per call)")

    change = ("Use fewer points or a smaller model, or raise max_memory (max_memory=... on the command line, "
              "max_memory= in placement.gradient / placement.relocate).")
    try:
        batch, need = min(auto_batch(jm), per_device), None
        if not _surely_fits(jm, batch, per_device, X, y, lim):  # small work: no compile just to read its size
            batch, _, need = memory.fit_batch(lambda b: _compiled(jm, b, chunk, X, y), batch, lim, what, change,
                                              resident=X.nbytes + y.nbytes, snap=_power_of_two, share=share)
    except PlacementError:
        raise
    except Exception as e:  # noqa: BLE001 - y of another shape (design modes) or no lowering: no plan
        if memory.is_oom(e):
            raise memory.oom_error(e, f"compiling the gradient's terms (n={n} points)", change) from None
        batch, need = min(auto_batch(jm), per_device), None
    if distributed.lockstep():  # the same limit gives the same plan; agreed all the same
        batch, chunk = distributed.agree_min((batch, chunk))
    out = Plan(int(batch), int(chunk), need, int(lim))
    _PLANS[key] = (jm, out)
    return out


def _surely_fits(jm: JaxModel, batch: int, rows: int, X, y, limit: int) -> bool:
    """Whether a call on ``rows`` draws, ``batch`` at a time, fits in half of ``limit`` by an
    upper bound from tracing alone (``memory.per_item_bound``: every intermediate of one draw's
    terms, none reused). Then ``plan`` skips XLA's exact analysis, which compiles the terms at
    the full chunk: a compile the calls do not use when they have fewer draws."""
    theta = jnp.asarray(jm.initial_point, dtype=jnp.float64)
    per_draw = memory.per_item_bound(_one_terms(jm), theta, X, y)
    io = rows * 8 * (jm.ndim + 2 + 2 * int(X.size))  # the draws in, the terms out
    return batch * per_draw + io <= limit // 2


def shared_terms(jm: JaxModel, batch_size: int | None = None) -> Callable:
    """``make_terms`` once per model and memory setting, called on fixed-size chunks of draws:
    every sampler and batch size (adaptation stages, final batches, precision extensions,
    grids) shares one compiled function. Fewer draws than a chunk run as one chunk padded to
    the next power of two; padding repeats the first draw and is dropped. Batch and chunk come
    from ``plan`` (the model's size and ``max_memory``); ``batch_size`` overrides the batch.
    The plan is the returned function's ``plan`` attribute."""
    p = plan(jm)
    if batch_size is not None:
        p = p._replace(batch=int(batch_size), bytes=None)
    key = (id(jm), p, distributed.lockstep())
    if key not in _TERMS or _TERMS[key][0] is not jm:
        fn = _chunked(make_terms(jm, p.batch), p.chunk)
        fn.plan = p
        _TERMS[key] = (jm, fn)
    return _TERMS[key][1]


def shared_logdensity(jm: JaxModel) -> Callable:
    """``logp(thetas[N, p], X, y) -> (N,)`` (NumPy) in the shared terms' chunks and batches
    (a log density needs no more memory than the terms), checking the budget between chunks:
    the samplers' log-density-only evaluations (posterior fits, reweighting, grids)."""
    p = plan(jm)
    key = (id(jm), "logp", p, distributed.lockstep())
    if key not in _TERMS or _TERMS[key][0] is not jm:
        fn = _chunked(_program(jm, "logp", p.batch), p.chunk)
        logp = lambda thetas, X, y: fn(thetas, X, y)[0]  # noqa: E731
        logp.plan = p
        _TERMS[key] = (jm, logp)
    return _TERMS[key][1]


def pad_size(N: int, chunk: int) -> int:
    """Draws per call for N draws: the chunk, or for fewer the next power of two (at least
    MIN_PAD, at most the chunk): few distinct shapes, each compiled once."""
    return chunk if N >= chunk else min(chunk, max(MIN_PAD, 1 << int(np.ceil(np.log2(max(N, 1))))))


def _chunked(fn: Callable, chunk: int = CHUNK) -> Callable:
    # host-side slicing and padding (NumPy): eager jnp ops on new shapes would each compile;
    # each chunk returns to Python, so signals and the time budget act between chunks
    def call(thetas, X, y):
        thetas = np.asarray(thetas)
        N = thetas.shape[0]
        # between chunks: progress, the time budget (OutOfTime), and Ctrl-C / SIGTERM
        return budget.over_chunks(lambda idx: jax.device_get(fn(thetas[idx], X, y)), N, pad_size(N, chunk), "")

    return call


def make_terms(jm: JaxModel, batch_size: int = 512) -> Callable:
    """Jitted ``terms(thetas[N, p], X, y) -> (logp[N], f[N], df[N, *X], s[N, *X])``.

    With several devices in this process (GPUs, or CPU devices from
    ``--xla_force_host_platform_device_count``) the draw axis is sharded over all of them
    (``jax.shard_map``; draws are padded to a multiple of the device count and the padding
    dropped); each device runs its share in batches of ``batch_size``. Every draw's terms
    are computed by the same function either way, so sharded and unsharded results agree.
    """
    return _program(jm, "terms", batch_size)


def _over_devices(local: Callable) -> Callable:
    """``local`` jitted, its draw axis sharded over the devices when there are several: this
    process's, or with several processes (``placement.distributed``) every process's, the
    results gathered back into each. ``.jitted``: the jit to lower; ``.specs(N, p, X, y)``: its
    arguments for N draws of p parameters, as shapes (and layouts) for lowering."""
    spanning = distributed.lockstep()  # several processes working in step (placement.distributed)
    devices = jax.devices() if spanning else jax.local_devices()
    if len(devices) == 1:
        fn = jax.jit(local)
        fn_ = lambda thetas, X, y: fn(thetas, X, y)  # noqa: E731
        fn_.jitted = fn
        fn_.specs = lambda N, p, X, y: (jax.ShapeDtypeStruct((N, p), jnp.float64), X, y)
        return fn_
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    mesh = Mesh(np.asarray(devices), ("draws",))

    def per_device(thetas, X, y):
        # X and y are the same on every device; mark them device-varying so that the
        # X-derivatives stay per draw (the cotangent of a device-invariant input would be
        # summed over the devices)
        return local(thetas, jax.lax.pvary(X, "draws"), jax.lax.pvary(y, "draws"))

    sharded = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P("draws"), P(), P()), out_specs=P("draws")))
    D = len(devices)
    rows, same = NamedSharding(mesh, P("draws")), NamedSharding(mesh, P())

    def terms(thetas, X, y):
        xp = np if spanning else jnp  # across processes each supplies its rows from a host copy
        thetas = xp.asarray(thetas)
        N = thetas.shape[0]
        pad = (-N) % D
        if spanning:  # every process must hold the same draws and design
            distributed.check_same("posterior draws or designs", thetas, X, y)
        if pad:  # repeat the first draw; its copies are dropped below
            thetas = xp.concatenate([thetas, xp.broadcast_to(thetas[:1], (pad, thetas.shape[1]))])
        if spanning:
            out = distributed.gather(sharded(distributed.to_global(thetas, rows), distributed.to_global(X, same),
                                             distributed.to_global(y, same)))
        else:
            out = sharded(thetas, X, y)
        return tuple(o[:N] for o in out) if pad else out

    def specs(N, p, X, y):
        draws = (N + (-N) % D, p)
        if not spanning:
            return jax.ShapeDtypeStruct(draws, jnp.float64), X, y
        return (jax.ShapeDtypeStruct(draws, jnp.float64, sharding=rows),
                jax.ShapeDtypeStruct(np.shape(X), jnp.float64, sharding=same),
                jax.ShapeDtypeStruct(np.shape(y), jnp.float64, sharding=same))

    terms.jitted, terms.specs = sharded, specs
    return terms


_COMPILED: dict = {}


def _compiled(jm: JaxModel, batch: int, chunk: int, X, y):
    """The terms' program compiled for one call on ``chunk`` draws, ``batch`` at a time (kept:
    plans for other max_memory settings ask again)."""
    key = (id(jm), batch, chunk, X.shape, y.shape, distributed.lockstep())
    if key not in _COMPILED or _COMPILED[key][0] is not jm:
        program = _program(jm, "terms", batch)
        _COMPILED[key] = (jm, program.jitted.lower(*program.specs(chunk, jm.ndim, X, y)).compile())
    return _COMPILED[key][1]


def normalised_weights(log_p, log_q=None) -> np.ndarray:
    """Self-normalised weights proportional to exp(log_p - log_q); non-finite entries get 0."""
    log_w = np.asarray(log_p, dtype=np.float64) - (0.0 if log_q is None else np.asarray(log_q, dtype=np.float64))
    log_w = np.where(np.isfinite(log_w), log_w, -np.inf)
    W = np.exp(log_w - log_w.max())
    return W / W.sum()


def weighted_identity(W, f, df, s):
    """Return F, grad, and the influence values psi_F (N,), psi_g (N, k) for weights W."""
    F = jnp.sum(W * f)
    S = jnp.tensordot(W, s, axes=1)
    h = df + (f - F)[:, None] * (s - S)
    grad = jnp.tensordot(W, h, axes=1)
    return F, grad, f - F, h - grad


# blackjax's diagnostics run op by op unless jitted (0.5 s per call on the seed problem).
ess_multichain = jax.jit(bjd.effective_sample_size, static_argnames=("chain_axis", "sample_axis"))
rhat_split = jax.jit(bjd.rhat, static_argnames=("chain_axis", "sample_axis"))
ess_bulk = jax.jit(bjd.ess_bulk, static_argnames=("chain_axis", "sample_axis"))


def _mcmc_se(psi: np.ndarray, chains: int, batches: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Standard error of the mean of psi (N, k), chain-major, and the ESS it implies.

    The larger of two estimates: sd / sqrt(ESS) (Geyer initial-sequence ESS over all
    chains) and batch means (``batches`` per chain). Either alone was seen to
    under-state the error of the identity's product terms on a conjugate model.
    """
    N, k = psi.shape
    arr = psi.reshape(chains, N // chains, k)
    ess = np.asarray(ess_multichain(arr, chain_axis=0, sample_axis=1))
    ess = np.clip(np.nan_to_num(ess, nan=1.0), 1.0, N)
    sd = psi.std(axis=0, ddof=1)
    se = sd / np.sqrt(ess)
    n = arr.shape[1] // batches
    if n >= 2:
        bm = arr[:, : n * batches].reshape(chains, batches, n, k).mean(axis=2).reshape(-1, k)
        se = np.maximum(se, bm.std(axis=0, ddof=1) / np.sqrt(bm.shape[0]))
    return se, np.clip((sd / np.maximum(se, 1e-300)) ** 2, 1.0, N)


def _finite_extreme(a, fn) -> float:
    """fn over the finite entries (NaN draws come from a failed sampler: the retry logic
    sees them through the estimate), NaN if there are none."""
    a = np.asarray(a)[np.isfinite(a)]
    return float(fn(a)) if a.size else float("nan")


def _mcmc_diagnostics(sample: Sample, f: np.ndarray) -> dict:
    c = sample.chains
    N, p = sample.theta.shape
    series = np.concatenate([sample.theta, f[:, None]], axis=1).reshape(c, N // c, p + 1)
    out = {}
    if c >= 2 and N // c >= 4:
        rh = np.asarray(rhat_split(series, chain_axis=0, sample_axis=1))
        ess = np.asarray(ess_bulk(series, chain_axis=0, sample_axis=1))
        out["rhat_max"] = _finite_extreme(rh, np.max)
        out["ess_bulk_min"] = _finite_extreme(ess, np.min)
    else:
        out["rhat_max"] = float("nan")
        out["ess_bulk_min"] = float("nan")
    return out


@jax.jit
def _core(logp, f, df, s, log_q):
    """Jitted weighted identity with masks for non-finite draws; returns a dict of arrays."""
    N = f.shape[0]
    ok = jnp.isfinite(logp) & jnp.isfinite(f) & jnp.all(jnp.isfinite(df), axis=1) & jnp.all(jnp.isfinite(s), axis=1)
    f = jnp.where(ok, f, 0.0)
    df = jnp.where(ok[:, None], df, 0.0)
    s = jnp.where(ok[:, None], s, 0.0)
    log_w = jnp.where(ok, logp - log_q, -jnp.inf)
    W = jax.nn.softmax(log_w)
    F, grad, psi_F, psi_g = weighted_identity(W, f, df, s)
    W2 = W**2
    return {
        "F": F,
        "grad": grad,
        "psi": jnp.concatenate([psi_F[:, None], psi_g], axis=1),
        "is_F_se": jnp.sqrt(jnp.sum(W2 * psi_F**2)),
        "is_grad_se": jnp.sqrt(jnp.tensordot(W2, psi_g**2, axes=1)),
        "ess_weights": 1.0 / jnp.sum(W2),
        "log_w": log_w,
        "nonfinite": N - jnp.sum(ok),
        "f": f,
        "W": W,
        "ok": ok,
    }


# -- quadrature: nested levels and their error estimate ---------------------------------------
class Levels(NamedTuple):
    """The weighted identity on a tensor grid's nested node sets (``quadrature_levels``)."""

    Q: Array  # (1 + 2p, 1 + k): [F, dF/dX] on all nodes, then per axis j at half and quarter resolution
    spread: Array  # (1 + k,): RMS influence values sqrt(sum W psi^2) on all nodes
    edge_contrib: Array  # (1 + k,): what the outer layer contributes, sum over it of W |psi|
    edge_mass: Array  # (): weight on the outer layer
    W: Array  # (N,) normalised weights on all nodes
    ok: Array  # (N,) finite nodes


@jax.jit
def quadrature_levels(logp, f, df, s, log_q, twos, edge) -> Levels:
    """The identity on 1 + 2p node sets of a grid: all nodes (row 0 of Q) and, for each axis
    j, the nodes with twos[:, j] >= 1 (row 1 + 2j: axis j at half resolution) and >= 2 (row
    2 + 2j: quarter). Each set is a grid of the same rule (nodes 4 i + 1 per axis), so the
    rows are estimates of the same integral. df, s: (N, k). Non-finite nodes weigh 0; a node
    with log_q = +inf weighs 0 (padding)."""
    ok = jnp.isfinite(logp) & jnp.isfinite(f) & jnp.all(jnp.isfinite(df), axis=1) & jnp.all(jnp.isfinite(s), axis=1)
    f = jnp.where(ok, f, 0.0)
    df = jnp.where(ok[:, None], df, 0.0)
    s = jnp.where(ok[:, None], s, 0.0)
    log_w = jnp.where(ok, logp - log_q, -jnp.inf)

    def on(mask):
        W = jax.nn.softmax(jnp.where(mask, log_w, -jnp.inf))
        F, grad, psi_F, psi_g = weighted_identity(W, f, df, s)
        return W, jnp.concatenate([F[None], grad]), jnp.concatenate([psi_F[:, None], psi_g], axis=1)

    W, Q0, psi = on(jnp.ones_like(ok))
    rows = [Q0] + [on(twos[:, j] >= level)[1] for j in range(twos.shape[1]) for level in (1, 2)]
    We = jnp.where(edge, W, 0.0)
    return Levels(jnp.stack(rows), jnp.sqrt(W @ psi**2), We @ jnp.abs(psi), jnp.sum(We), W, ok)


def axis_differences(Q) -> tuple[np.ndarray, np.ndarray]:
    """From Levels.Q (1 + 2p, K): d1 (p, K) = Q_all - Q_half(j), d2 (p, K) = Q_half(j) - Q_quarter(j)."""
    Q = np.asarray(Q, dtype=np.float64)
    half, quarter = Q[1::2], Q[2::2]
    return Q[0][None, :] - half, half - quarter


def nonfinite_mass_bound(W, ok, shape=None) -> tuple[int, float]:
    """(count, bound on the weight) of a grid's dropped (non-finite) nodes: each gets the largest
    weight among its finite neighbours (the 3^p block around it; without the grid's shape,
    the largest weight of all)."""
    bad = ~np.asarray(ok, dtype=bool)
    if not bad.any():
        return 0, 0.0
    W = np.where(bad, 0.0, np.asarray(W, dtype=np.float64))
    if shape is None or int(np.prod(shape)) != W.size:
        return int(bad.sum()), float(bad.sum() * W.max())
    from scipy.ndimage import maximum_filter

    nb = maximum_filter(W.reshape(shape), size=3, mode="constant", cval=0.0)
    return int(bad.sum()), float(nb[bad.reshape(shape)].sum())


QUAD_REL_FLOOR = 1e-9  # relative floor of a grid's SE: round-off of the weighted sums


def quadrature_se(levels: Levels, nonfinite_mass: float) -> tuple[np.ndarray, np.ndarray]:
    """Standard error (1 + k,) of the all-nodes estimate Q[0] = [F, dF/dX], and the per-axis
    convergence ratios |d1_j| / |d2_j| (a diagnostic).

    The sinh-trapezoid rule converges like exp(-c/h): halving h squares the relative error.
    So the error axis j leaves in Q[0] is taken as e_j = r_j |d1_j| with d1_j = Q_all -
    Q_half(j) and r_j = min(1, |d1_j| / |spread|) (L2 norms over the components; spread
    is the RMS influence, the scale of a relative error). SE = sum_j e_j + edge_contrib
    (the mass beyond the outer layer moves the estimate by about what the layer contributes)
    + nonfinite_mass * spread + QUAD_REL_FLOOR (|Q[0]| + spread). A heuristic calibrated on
    that law, not a bound: on the seed problem it was 2.6-15x the actual error.
    """
    Q = np.asarray(levels.Q, dtype=np.float64)
    spread = np.asarray(levels.spread, dtype=np.float64)
    d1, d2 = axis_differences(Q)
    n1, n2 = np.linalg.norm(d1, axis=1), np.linalg.norm(d2, axis=1)
    r = np.minimum(1.0, n1 / max(float(np.linalg.norm(spread)), 1e-300))
    se = (np.sum(r[:, None] * np.abs(d1), axis=0) + np.asarray(levels.edge_contrib, dtype=np.float64)
          + nonfinite_mass * spread + QUAD_REL_FLOOR * (np.abs(Q[0]) + spread))
    return se, n1 / np.maximum(n2, 1e-300)


def _quadrature_estimate(sample: Sample, logp, f, df, s, xshape) -> GradientEstimate:
    """The identity on a grid (``sample.twos`` set): estimate on all nodes, SE from the levels."""
    N = f.shape[0]
    lv = jax.device_get(quadrature_levels(logp, f, df.reshape(N, -1), s.reshape(N, -1), jnp.asarray(sample.log_q),
                                          jnp.asarray(sample.twos), jnp.asarray(sample.edge)))
    diag = samplers.as_dict(sample.info)
    nbad, bad_mass = nonfinite_mass_bound(lv.W, lv.ok, diag.get("points"))
    se, ratio = quadrature_se(lv, bad_mass)
    diag.update(nonfinite_draws=nbad, nonfinite_mass=bad_mass, edge_mass=float(lv.edge_mass),
                level_ratio_max=float(np.max(ratio)), rhat_max=float("nan"), ess_bulk_min=float("nan"))
    Q = np.asarray(lv.Q)
    return GradientEstimate(F=float(Q[0, 0]), grad=Q[0, 1:].reshape(xshape), F_se=float(se[0]),
                            grad_se=se[1:].reshape(xshape), diagnostics=diag)


def estimate(terms: Callable, sample: Sample, X, y, evaluated=None) -> GradientEstimate:
    """Apply the identity to ``sample`` at design X, observed y. ``evaluated``: the output
    of ``terms`` on the sample when the caller has it already."""
    X = jnp.asarray(X)
    xshape = X.shape
    logp, f, df, s = terms(jnp.asarray(sample.theta), X, y) if evaluated is None else evaluated
    if sample.twos is not None:
        return _quadrature_estimate(sample, logp, f, df, s, xshape)
    N = f.shape[0]
    mcmc = sample.log_q is None
    log_q = np.zeros(N) if mcmc else np.asarray(sample.log_q)
    info = samplers.as_dict(sample.info)
    # MCMC draws carry equal weight: logp - log_q would weight them by the density again.
    logp_w = jnp.where(jnp.isfinite(logp), 0.0, jnp.nan) if mcmc else logp
    out = jax.device_get(_core(logp_w, f, df.reshape(N, -1), s.reshape(N, -1), log_q))
    diag = info
    diag["nonfinite_draws"] = int(out["nonfinite"])
    n_ok = max(int(np.sum(out["ok"])), 1)
    # excluded (non-finite) draws carry weight 0 and influence 0, for every sampler
    psi = np.where(out["ok"][:, None], out["psi"], 0.0)
    if mcmc:
        se, ess = _mcmc_se(psi, sample.chains)
        se = se * N / n_ok  # the mean runs over the n_ok finite draws
        F_se, grad_se = float(se[0]), se[1:]
        diag.update(_mcmc_diagnostics(sample, out["f"]))
        diag["ess_grad_min"] = float(ess[1:].min())
    elif sample.chains is not None:
        # weighted, autocorrelated draws (reused MCMC draws): the ratio estimator's influence
        # values N W_i psi_i are a chain-major series; their own ESS gives the SE
        se, ess = _mcmc_se(N * out["W"][:, None] * psi, sample.chains)
        F_se, grad_se = float(se[0]), se[1:]
        diag["ess_weights"] = float(out["ess_weights"])
        diag["ess_grad_min"] = float(ess[1:].min())
        diag["ess_bulk_min"] = diag["ess_grad_min"]
        diag["pareto_k"] = float(_khat(out["log_w"]))
        diag["rhat_max"] = float("nan")
    else:
        if sample.groups:  # randomised QMC blocks: the spread of their contributions
            F_se, grad_se = (lambda se: (float(se[0]), se[1:]))(group_se(out["W"], psi, sample.groups))
        else:
            F_se, grad_se = float(out["is_F_se"]), out["is_grad_se"]
        diag["ess_weights"] = float(out["ess_weights"])
        diag["ess_bulk_min"] = diag["ess_weights"]
        diag["pareto_k"] = float(_khat(out["log_w"]))
        diag["spread_ratio"] = spread_ratio(np.asarray(sample.theta)[out["ok"]], np.asarray(out["W"])[out["ok"]])
        diag["rhat_max"] = float("nan")
    return GradientEstimate(
        F=float(out["F"]),
        grad=np.asarray(out["grad"]).reshape(xshape),
        F_se=float(F_se),
        grad_se=np.asarray(grad_se).reshape(xshape),
        diagnostics=diag,
    )


def spread_ratio(theta, W) -> float:
    """The largest variance of the weighted draws relative to the draws themselves, over all
    directions: the top eigenvalue of C_draws^-1 C_weighted. A proposal wider than the
    posterior, as the importance sampler's are by design, gives less than 1 (0.22-0.27 over 30
    seeds each of the seed and conjugate problems); weights that favour the proposal's outskirts
    give more: the proposal is narrower than the posterior in that direction, so the draws miss
    part of it and neither the Pareto k nor the weight ESS need show it (1.9-10.6 on the
    conjugate problem with an unadapted pilot 0.05 wide, where an estimate with k 0.55 and
    weight ESS 116 of 512 was 22 SE off). NaN when the draws' covariance is singular."""
    theta, W = np.asarray(theta, dtype=np.float64), np.asarray(W, dtype=np.float64)
    if theta.ndim != 2 or theta.shape[0] <= theta.shape[1] or not np.sum(W) > 0:
        return float("nan")
    C = np.atleast_2d(np.cov(theta.T))
    Cw = np.atleast_2d(np.cov(theta.T, aweights=W / np.sum(W), ddof=0))
    try:
        Li = np.linalg.inv(np.linalg.cholesky(C))
    except np.linalg.LinAlgError:
        return float("nan")
    return float(np.max(np.linalg.eigvalsh(Li @ Cw @ Li.T)))


def group_se(W, psi, groups: int) -> np.ndarray:
    """SE (1 + k,) of a self-normalised estimate from G equal, independent, group-major
    blocks of draws (randomised QMC): block g contributes z_g = G sum_{i in g} W_i psi_i
    (mean zero over the blocks by construction), SE = sd(z) / sqrt(G)."""
    W, psi = np.asarray(W), np.asarray(psi)
    N = W.shape[0]
    z = (W[:, None] * psi).reshape(groups, N // groups, -1).sum(axis=1) * groups
    return z.std(axis=0, ddof=1) / np.sqrt(groups)


@jax.jit
def _khat(log_w):
    """PSIS Pareto k-hat of importance weights exp(log_w) (N,); non-finite entries weigh 0.

    A generalised Pareto fit to the exceedances of the M = ceil(min(N/5, 3 sqrt N)) largest
    WEIGHTS over the next one (Vehtari et al. 2024; arviz's ``psislw`` does the same). The
    log weights would not do: their tail is light (k near 0) however heavy the weights' is.
    """
    n = log_w.shape[0]
    m = int(np.ceil(min(n / 5.0, 3.0 * np.sqrt(n))))
    finite = jnp.isfinite(log_w)
    top = jnp.max(jnp.where(finite, log_w, -jnp.inf))
    w = jnp.where(finite, jnp.exp(log_w - top), 0.0)
    # blackjax takes int(tail_frac * N) values; the half keeps rounding from dropping one
    return bjd.pareto_khat(w, tail="upper", tail_frac=(m + 0.5) / n)
