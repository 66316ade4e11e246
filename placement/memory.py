"""Memory planned, not discovered: how much a compiled program needs, how much may be used,
and the largest batch that fits.

What a compiled XLA program needs is read from XLA's own buffer assignment
(``compiled.memory_analysis()``: arguments + outputs + temporaries at their peak), which is
known after compiling and before running: nothing is allocated to find out. A vmapped batch
of b items needs about b times what one needs, so a driver compiles at its preferred batch,
and when that does not fit under ``max_memory`` shrinks the batch (``fit_batch``); when even
one item does not fit it stops with one ``PlacementError`` naming the sizes and what to change.
An allocation failure that slips through (``is_oom``) becomes the same kind of message.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
from typing import Callable, Iterator

import numpy as np

from placement.errors import PlacementError

DEFAULT_FRACTION = 0.8  # default max_memory: this share of the memory available when the work starts
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def human(nbytes: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= size:
            return f"{nbytes / size:.3g} {unit}"
    return f"{int(nbytes)} bytes"


def available() -> int:
    """Bytes this process may still allocate: the accelerator's free memory when JAX runs
    on one, else MemAvailable from /proc/meminfo (free + reclaimable, what the kernel
    reports before it has to swap or kill)."""
    try:
        import jax

        dev = jax.local_devices()[0]
        if dev.platform != "cpu":
            stats = dev.memory_stats() or {}
            if "bytes_limit" in stats:
                return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    except Exception:  # noqa: BLE001 - no stats on this backend: fall back to host memory
        pass
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def limit(max_memory=None) -> int:
    """``max_memory`` as bytes: None/"auto"/0 -> DEFAULT_FRACTION of ``available()``; a number
    <= 1 -> that share of it; a larger number -> bytes; a string such as "8GB" or "512MiB"."""
    if max_memory is None or (isinstance(max_memory, str) and max_memory.strip().lower() in ("auto", "")):
        return int(DEFAULT_FRACTION * available())
    if isinstance(max_memory, str):
        m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", max_memory)
        if not m or m.group(2).lower() not in _UNITS:
            raise PlacementError(f"max_memory must be bytes, a size such as 8GB or 512MiB, a share of the available "
                                 f"memory (0 < x <= 1) or auto; got {max_memory!r}.")
        max_memory = float(m.group(1)) * _UNITS[m.group(2).lower()]
    try:
        v = float(max_memory)
    except (TypeError, ValueError):
        raise PlacementError(f"max_memory must be a size such as 8GB, a share (0 < x <= 1) or auto; got {max_memory!r}.") from None
    if isinstance(max_memory, bool) or not v >= 0:
        raise PlacementError(f"max_memory must be a size such as 8GB, a share (0 < x <= 1) or auto; got {max_memory!r}.")
    if v == 0:
        return int(DEFAULT_FRACTION * available())
    return int(v * available()) if v <= 1 else int(v)


_SETTING: contextvars.ContextVar = contextvars.ContextVar("placement_max_memory", default=None)


def setting():
    """The active ``max_memory`` setting (None: auto), as given to ``scope``."""
    return _SETTING.get()


@contextlib.contextmanager
def scope(max_memory=None) -> Iterator[None]:
    """Make ``max_memory`` the setting that work planned inside reads (``setting()``); None
    keeps the outer one. Checked here, so a bad value fails before anything is built. Like
    ``placement.budget.scope``, a context variable: the plans are made several calls below
    the function that knows the setting (an engine's shared terms, a sampler's fit)."""
    if max_memory is None:
        yield
        return
    limit(max_memory)
    token = _SETTING.set(max_memory)
    try:
        yield
    finally:
        _SETTING.reset(token)


def compiled_bytes(compiled, resident: int = 0) -> int | None:
    """Peak bytes of a compiled program (arguments + outputs + temporaries, less aliased
    buffers), from XLA's buffer assignment, less ``resident``: argument bytes that exist
    already (data made before the program runs); None when the backend does not say."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001
        return None
    if m is None:
        return None
    return max(0, int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)
                  - int(resident))


def _jaxpr_values_bytes(jaxpr) -> int:
    """Bytes of every value a jaxpr creates, its sub-jaxprs' (loop bodies, calls, branches)
    counted once each: an upper bound on what it holds at once, whatever XLA reuses."""
    total = 0
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            aval = getattr(v, "aval", None)
            if hasattr(aval, "shape") and hasattr(aval, "dtype"):
                total += int(np.prod(aval.shape, dtype=np.int64)) * np.dtype(aval.dtype).itemsize
        for param in eqn.params.values():
            for sub in (param if isinstance(param, (tuple, list)) else (param,)):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    total += _jaxpr_values_bytes(inner)
    return total


def per_item_bound(fn: Callable, *args) -> int:
    """An upper bound on the bytes ``fn(*args)`` holds at once for one item (one draw): every
    intermediate value of its traced program, none reused. Tracing only: nothing is compiled."""
    import jax

    return _jaxpr_values_bytes(jax.make_jaxpr(fn)(*args).jaxpr)


def fit_batch(compile_at: Callable[[int], object], batch: int, budget: int, what: Callable[[int], str],
              change: str, resident: int = 0, snap: Callable[[int], int] | None = None,
              share: str = "") -> tuple[int, object, int | None]:
    """The largest batch <= ``batch`` whose compiled program fits in ``budget`` bytes.

    compile_at(b) -> a compiled program for b items (``jit(...).lower(...).compile()``);
    what(nbytes) names the work in the error; change says what the user can do. Returns
    (batch, compiled, bytes). Compiles at ``batch``, then - only when that is too big - at
    the batch the linear scaling predicts, shrinking until it fits or one item does not.
    ``snap(b)``: the batch to use instead of a predicted b (<= b; e.g. a power of two that
    divides the work into equal batches). ``share``: what ``budget`` is a part of, for the
    error (e.g. " per device (1 kB over 2 CPU devices)")."""
    compiled = compile_at(batch)
    need = compiled_bytes(compiled, resident)
    while need is not None and need > budget:
        if batch == 1:
            raise PlacementError(f"{what(need)} needs {human(need)} but max_memory allows {human(budget)}{share}. {change}")
        per_item = need / batch
        batch = max(1, min(batch - 1, int(budget // max(per_item, 1))))
        batch = batch if snap is None else max(1, min(batch, snap(batch)))
        compiled = compile_at(batch)
        need = compiled_bytes(compiled, resident)
    return batch, compiled, need


_OOM = re.compile(r"RESOURCE_EXHAUSTED|[Oo]ut of memory|OutOfMemory|failed to allocate|Allocation .* failed")


def is_oom(exc: BaseException) -> bool:
    """An allocation failure from XLA (or NumPy)."""
    return isinstance(exc, MemoryError) or bool(_OOM.search(str(exc)[:2000]))


def oom_error(exc: BaseException, what: str, change: str) -> PlacementError:
    """The one-message form of an allocation failure."""
    m = re.search(r"allocating (\d+) bytes", str(exc))
    size = f" (an allocation of {human(int(m.group(1)))})" if m else ""
    return PlacementError(f"{what} ran out of memory{size}; max_memory is {human(limit(setting()))} of "
                          f"{human(available())} available. {change}")
