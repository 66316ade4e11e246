"""Several processes (hosts) computing one estimate together, through ``jax.distributed``.

Every process runs the same command (or script) with the same seed. Each computes the same
posterior draws; the expensive part of an estimate, the per-draw terms of the identity, is
sharded over the devices of all processes (``estimator._over_devices``) and gathered back
into every process, so all of them hold the same estimate and take the same decisions.
Process 0 alone writes files and prints results.

What every process must agree on is agreed here, not assumed:

- the draws and design each chunk is computed for (``check_same``: a hash of each process's
  copy, compared at every chunk; processes that diverged stop with an error instead of mixing
  different draws), and a resumed run's checkpoint;
- the memory limit, batch and chunk sizes (``agree_min``: the smallest over the processes, so
  the work fits every host's memory and every process makes the same calls);
- decisions taken from the clock (``agree``: process 0's), because the processes' clocks and
  speeds differ and a stop taken by one process alone would leave the others waiting.

Work marked ``alone`` (``placement.suggest``) runs on this process's devices with its own
clock. Start it from the environment (``initialize_from_env``, which the command line calls)
or from Python (``initialize``) before any JAX computation.
"""

from __future__ import annotations

import contextlib
import contextvars
import os

from placement.errors import PlacementError

_STATE = {"active": False}
HEARTBEAT_SECONDS = 30
RANK_VARIABLES = ("PLACEMENT_PROCESS_ID", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK")
_ALONE = contextvars.ContextVar("placement_alone", default=False)

ENV_HELP = ("Set PLACEMENT_COORDINATOR=host:port, PLACEMENT_NUM_PROCESSES=N and PLACEMENT_PROCESS_ID=i (0 .. N-1) "
            "in every process, or PLACEMENT_DISTRIBUTED=auto inside a Slurm / Open MPI job.")


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> int:
    """Join the processes of one computation; returns the number of processes. With no
    arguments JAX finds them from the cluster's environment (Slurm, Open MPI, ...). Call it in
    every process, before any JAX computation. On the CPU, collectives use Gloo."""
    import jax

    if _STATE["active"]:
        return jax.process_count()
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # the CPU's collectives; GPUs use NCCL
    try:  # a process that stops is noticed by the others within HEARTBEAT_SECONDS, and they stop too
        jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id,
                                   heartbeat_timeout_seconds=HEARTBEAT_SECONDS)
    except (RuntimeError, ValueError) as e:
        raise PlacementError(f"could not join the other processes ({str(e).splitlines()[0]}). {ENV_HELP}") from None
    _STATE["active"] = True
    return jax.process_count()


def requested(environ=os.environ) -> bool:
    """Whether the environment asks for several processes (PLACEMENT_COORDINATOR, or
    PLACEMENT_DISTRIBUTED=auto)."""
    auto = environ.get("PLACEMENT_DISTRIBUTED", "").strip().lower()
    if auto not in ("", "auto"):
        raise PlacementError(f"PLACEMENT_DISTRIBUTED must be 'auto' (or unset); got {environ['PLACEMENT_DISTRIBUTED']!r}.")
    return bool(environ.get("PLACEMENT_COORDINATOR")) or auto == "auto"


def initialize_from_env(environ=os.environ) -> int:
    """``initialize`` from PLACEMENT_COORDINATOR / PLACEMENT_NUM_PROCESSES / PLACEMENT_PROCESS_ID,
    or from the cluster with PLACEMENT_DISTRIBUTED=auto; 1 (nothing done) when neither is set."""
    if not requested(environ):
        return 1
    coordinator = environ.get("PLACEMENT_COORDINATOR")
    if not coordinator:
        return initialize()
    try:
        count, index = int(environ["PLACEMENT_NUM_PROCESSES"]), int(environ["PLACEMENT_PROCESS_ID"])
    except (KeyError, ValueError):
        raise PlacementError(f"PLACEMENT_COORDINATOR is set, so PLACEMENT_NUM_PROCESSES and PLACEMENT_PROCESS_ID "
                             f"must be whole numbers. {ENV_HELP}") from None
    if count < 1 or not 0 <= index < count:
        raise PlacementError(f"PLACEMENT_PROCESS_ID={index} is not one of 0 .. {count - 1} "
                             f"(PLACEMENT_NUM_PROCESSES={count}).")
    return initialize(coordinator, count, index)


def rank_from_env(environ=os.environ) -> int:
    """This process's rank as the launcher gave it, without joining (0 when none is set)."""
    for name in RANK_VARIABLES:
        if environ.get(name, "").strip().isdigit():
            return int(environ[name])
    return 0


def exit_now(code: int) -> None:
    """End this process at once with ``code``: a process that stops early (an error, an interrupt)
    must not wait at JAX's exit barrier for processes that are still working."""
    import sys

    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    os._exit(code)


def multi() -> bool:
    """Whether several processes take part (``initialize`` was called with more than one)."""
    if not _STATE["active"]:
        return False
    import jax

    return jax.process_count() > 1


def index() -> int:
    """This process's index among the joined processes (0 when alone)."""
    if not _STATE["active"]:
        return 0
    import jax

    return jax.process_index()


def is_main() -> bool:
    """Process 0, or the only process: the one that writes files and prints results."""
    return index() == 0


def lockstep() -> bool:
    """Whether this work runs in step with the other processes: several processes take part
    and the work is not marked ``alone``. Then every decision taken from the clock is process
    0's (``agree``), and every place that takes one is reached as often in every process."""
    return multi() and not _ALONE.get()


@contextlib.contextmanager
def alone():
    """Work that each process does by itself (``placement.suggest``: no sharded terms, so no
    collectives): its time budget is checked by each process's own clock."""
    token = _ALONE.set(True)
    try:
        yield
    finally:
        _ALONE.reset(token)


def agree_value(x: float) -> float:
    """In lockstep, process 0's ``x`` in every process (a collective); else ``x``."""
    if not lockstep():
        return float(x)
    import numpy as np
    from jax.experimental import multihost_utils

    return float(np.asarray(_collective(multihost_utils.broadcast_one_to_all, np.asarray(float(x), dtype=np.float64))))


def agree(flag: bool) -> bool:
    """In lockstep, process 0's ``flag`` in every process (a collective); else ``flag``."""
    return bool(flag) if not lockstep() else agree_value(float(bool(flag))) > 0.5


def agree_min(values) -> tuple[int, ...]:
    """In lockstep, the smallest of each whole number over all processes (a collective)."""
    values = tuple(int(v) for v in values)
    if not lockstep():
        return values
    import numpy as np
    from jax.experimental import multihost_utils

    every = np.asarray(_collective(multihost_utils.process_allgather, np.asarray(values, dtype=np.int64)))
    return tuple(int(v) for v in every.reshape(-1, len(values)).min(axis=0))


def check_same(what: str, *arrays) -> None:
    """In lockstep, stop with an error unless every process holds the same ``arrays`` (compared
    by a hash of their bytes, shapes and dtypes; a collective)."""
    if not lockstep():
        return
    import hashlib

    import numpy as np
    from jax.experimental import multihost_utils

    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    mine = np.frombuffer(h.digest()[:16], dtype=np.int64)
    every = np.asarray(_collective(multihost_utils.process_allgather, mine)).reshape(-1, 2)
    if not (every == every[0]).all():
        differ = [i for i in range(every.shape[0]) if not (every[i] == every[0]).all()]
        raise PlacementError(f"the processes computed different {what} (processes {differ} differ from process 0). "
                             "Every process must run the same command with the same seed, data and software "
                             "versions, on the same kind of hardware.")


def _collective(fn, *args, **kwargs):
    """``fn`` (a collective); a failure there, almost always another process that stopped, is one
    error in this process too, not a traceback from the transport."""
    try:
        return fn(*args, **kwargs)
    except (RuntimeError, ValueError) as e:
        raise PlacementError(f"another process stopped or could not be reached ({str(e).splitlines()[0][:200]}); "
                             "this process stops too.") from None


def to_global(arr, sharding):
    """A host array that every process holds whole, as one global array laid out by
    ``sharding`` (each process supplies the slices on its own devices)."""
    import jax
    import numpy as np

    a = np.asarray(arr)
    return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])


def gather(tree):
    """Every process's shards of the arrays in ``tree``, whole, as NumPy arrays in every process."""
    from jax.experimental import multihost_utils

    return _collective(multihost_utils.process_allgather, tree, tiled=True)
