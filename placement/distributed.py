"""Several processes (hosts) computing one estimate together, through ``jax.distributed``.

Every process runs the same command (or script) with the same seed. Each computes the same
posterior draws; the expensive part of an estimate, the per-draw terms of the identity, is
sharded over the devices of all processes (``estimator._over_devices``) and gathered back
into every process, so all of them hold the same estimate and take the same decisions.
Process 0 alone writes files and prints results.

What every process must agree on is agreed here, not assumed:

- the draws each chunk is computed for (``check_same``: a checksum of each process's draws,
  compared at every chunk; processes that diverged stop with an error instead of mixing
  different draws);
- the batch and chunk sizes (``agree_min``: the smallest over the processes, so the work fits
  every host's memory and every process makes the same calls);
- decisions taken from the clock (``agree``: process 0's), because the processes' clocks and
  speeds differ and a stop taken by one process alone would leave the others waiting.

Start it from the environment (``initialize_from_env``, which the command line calls) or from
Python (``initialize``) before any JAX computation.
"""

from __future__ import annotations

import contextlib
import contextvars
import os

from placement.errors import PlacementError

_STATE = {"active": False}
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
    if os.environ.get("JAX_PLATFORMS", "") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
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


def multi() -> bool:
    """Whether several processes take part (``initialize`` was called with more than one)."""
    if not _STATE["active"]:
        return False
    import jax

    return jax.process_count() > 1


def is_main() -> bool:
    """Process 0, or the only process: the one that writes files and prints results."""
    if not _STATE["active"]:
        return True
    import jax

    return jax.process_index() == 0


def index() -> int:
    if not _STATE["active"]:
        return 0
    import jax

    return jax.process_index()


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

    return float(np.asarray(multihost_utils.broadcast_one_to_all(np.asarray(float(x), dtype=np.float64))))


def agree(flag: bool) -> bool:
    """In lockstep, process 0's ``flag`` in every process (a collective); else ``flag``."""
    return bool(flag) if not lockstep() else agree_value(float(bool(flag))) > 0.5


def agree_min(values) -> tuple[int, ...]:
    """The smallest of each whole number over all processes (a collective)."""
    values = tuple(int(v) for v in values)
    if not multi():
        return values
    import numpy as np
    from jax.experimental import multihost_utils

    every = np.asarray(multihost_utils.process_allgather(np.asarray(values, dtype=np.int64)))
    return tuple(int(v) for v in every.reshape(-1, len(values)).min(axis=0))


def check_same(arr, what: str) -> None:
    """Stop with an error unless every process holds the same ``arr`` (compared by a checksum
    of its values: a sum and a position-weighted sum, equal bit for bit when the arrays are)."""
    if not multi():
        return
    import numpy as np
    from jax.experimental import multihost_utils

    a = np.asarray(arr, dtype=np.float64).ravel()
    mine = np.array([a.size, np.sum(a), np.sum(a * np.arange(1, a.size + 1) / max(a.size, 1))])
    every = np.asarray(multihost_utils.process_allgather(mine)).reshape(-1, 3)
    if not np.array_equal(every, np.broadcast_to(every[0], every.shape), equal_nan=True):
        raise PlacementError(f"the processes computed different {what} (process checksums {every.tolist()}). Every "
                             "process must run the same command with the same seed, data and software versions, "
                             "on the same kind of hardware.")


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

    return multihost_utils.process_allgather(tree, tiled=True)
