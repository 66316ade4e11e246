"""Time budgets and cut points for long work.

Long compiled work runs in chunks that return to Python; between chunks the driver calls
``checkpoint(done, total, note)``. That one call is where a time budget ends the work
(``OutOfTime``), where progress is reported, and - because Python runs signal handlers only
between bytecodes - where Ctrl-C (KeyboardInterrupt), SIGTERM and a notebook's interrupt take
effect. A driver that can return a best-so-far answer catches ``OutOfTime`` and marks its
result cut short; one that cannot lets it rise, and the caller turns it into one
``PlacementError`` (``nothing_yet``).

The active budget is a context variable (``scope``), like a cancellation scope: the chunk
loops sit several calls below the API function that knows the budget (a sampler calls the
identity's terms), and threading a deadline through every sampler signature would change
them all for one number.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

from placement import distributed
from placement.errors import PlacementError


class OutOfTime(Exception):
    """The time budget ran out at a chunk boundary."""


@dataclass(frozen=True)
class Budget:
    """max_seconds: the setting that binds (inf = none; what messages name); start:
    perf_counter() when that budget began; progress: ``progress(done, total, note)`` called at
    every checkpoint, or None; deadline: perf_counter() when it runs out."""

    max_seconds: float = math.inf
    start: float = 0.0
    progress: Callable | None = None
    deadline: float = math.inf

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def passed(self) -> bool:
        return self.left() <= 0.0


def check_seconds(max_seconds, name: str = "max_seconds") -> float:
    """A budget setting as seconds: None or 0 = no budget (inf), else a positive number."""
    if max_seconds is None:
        return math.inf
    try:
        v = float(max_seconds)
    except (TypeError, ValueError):
        raise PlacementError(f"{name} must be a number of seconds (0 or null = no limit); got {max_seconds!r}.") from None
    if isinstance(max_seconds, bool) or math.isnan(v) or v < 0:
        raise PlacementError(f"{name} must be a number of seconds >= 0 (0 or null = no limit); got {max_seconds!r}.")
    return math.inf if v == 0 else v


_ACTIVE: contextvars.ContextVar[Budget] = contextvars.ContextVar("placement_budget", default=Budget())

# -- stop requests that must not be lost -------------------------------------------------------
# Python raises a signal handler's exception wherever the interpreter happens to be. Inside a
# garbage-collector callback or a finalizer (JAX registers one, _xla_gc_callback) it is printed
# as "Exception ignored" and dropped, and the work goes on: measured, 1 of 12 Ctrl-C's of a
# 1000-point suggest ran to the end and exited 0. So the handlers record the request as well as
# raising it, and every checkpoint (and the CLI before it writes anything) raises it again
# until the command has acted on it.
_PENDING: list = []
_RERAISED: list = []  # non-empty once a checkpoint has raised the recorded request again


def request_stop(exc_type) -> None:
    """Record a stop request (KeyboardInterrupt, or the CLI's SIGTERM exception type)."""
    _PENDING.append(exc_type)


def clear_stop() -> None:
    _PENDING.clear()
    _RERAISED.clear()


def raise_pending() -> None:
    """Raise a recorded stop request (once per call; it stays recorded until cleared)."""
    if _PENDING:
        _RERAISED.append(True)
        raise _PENDING[0]()


def stop_handler(exc_type):
    """A signal handler that records the stop request and raises it (exc_type: KeyboardInterrupt
    for SIGINT, the CLI's SIGTERM exception type)."""

    def handler(signum, frame):
        request_stop(exc_type)
        _quiet_dropped_stops()
        raise exc_type()

    return handler


def _quiet_dropped_stops() -> None:
    """Route Python's "Exception ignored" reports through a filter that drops recorded stop
    requests (once; the filter chains to the hook it replaces). A request raised inside a
    garbage-collector callback is reported there with a traceback, to stderr, and lost; it is
    recorded and raised again at the next checkpoint (or, when it comes after the last one, the
    command's output is already complete), so its report is noise that makes a clean interrupt
    look like a crash."""
    if getattr(sys.unraisablehook, "_placement", False):
        return
    previous = sys.unraisablehook

    def hook(args):
        if isinstance(args.exc_value, tuple(_PENDING)):
            return
        previous(args)

    hook._placement = True
    sys.unraisablehook = hook


_on_sigint = stop_handler(KeyboardInterrupt)


@contextlib.contextmanager
def _kept_sigint() -> Iterator[None]:
    """While the work runs (API calls, in the main thread, under Python's own SIGINT handler):
    Ctrl-C or a notebook's interrupt raises KeyboardInterrupt as usual and is also recorded.
    Work that ends normally with a request that was dropped and never raised again (no
    checkpoint came after it) raises it on leaving, instead of returning as if not asked."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    signal.signal(signal.SIGINT, _on_sigint)
    lost = None
    try:
        yield
        lost = _PENDING[0] if _PENDING and not _RERAISED else None
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        clear_stop()
    if lost is not None:
        raise lost()


def current() -> Budget:
    return _ACTIVE.get()


@contextlib.contextmanager
def scope(max_seconds=None, progress: Callable | None = None) -> Iterator[Budget]:
    """Make a budget of ``max_seconds`` (None/0: none) active for the enclosed work. An inner
    scope never extends an outer one: the earlier deadline wins. ``progress`` replaces the
    outer one when given."""
    outer = _ACTIVE.get()
    now = time.perf_counter()
    secs = check_seconds(max_seconds)
    progress = progress if progress is not None else outer.progress
    if outer.deadline <= now + secs:  # the outer budget ends first: it binds, and messages name its setting
        b = Budget(outer.max_seconds, outer.start, progress, outer.deadline)
    else:
        b = Budget(secs, now, progress, now + secs)
    token = _ACTIVE.set(b)
    try:
        with _kept_sigint():
            yield b
    finally:
        _ACTIVE.reset(token)


def counted() -> bool:
    """Whether a ``counting`` scope is active: inner work of another unit (NUTS transitions
    inside a batch of draws) then checks the budget without reporting its own count."""
    return _COUNT.get() is not None


def checkpoint(done: float = 0, total: float = 0, note: str = "", report: bool = True) -> None:
    """Between two chunks: raise a stop request that was recorded but lost (see _PENDING),
    report progress, then raise OutOfTime once the budget is spent. (A Ctrl-C or SIGTERM that
    was not lost has already been raised by the time Python runs this.)"""
    raise_pending()
    b = _ACTIVE.get()
    if b.progress is not None and report:
        b.progress(done, total, note)
    if math.isfinite(b.deadline) and distributed.agree(b.passed()):  # several processes: process 0's clock
        raise OutOfTime(f"the time budget of {b.max_seconds:g} s ran out")


def chunk_indices(N: int, size: int) -> Iterator[tuple]:
    """(indices, real) for chunks of ``size`` covering 0 .. N-1 in order; the last chunk padded
    to ``size`` by repeating its own first index (one compiled shape for every chunk; callers
    drop the padded rows, ``real`` of them are real)."""
    import numpy as np

    for i in range(0, N, size):
        idx = np.arange(i, min(i + size, N))
        real = idx.size
        yield (np.concatenate([idx, np.full(size - real, i)]) if real < size else idx), real


_COUNT: contextvars.ContextVar = contextvars.ContextVar("placement_count", default=None)


@contextlib.contextmanager
def counting(done: float, total: float) -> Iterator[None]:
    """Inside: ``over_chunks`` reports ``done`` plus its own rows, of ``total``: the work it
    does is one batch of a larger count (e.g. more draws after 8192, of 16384 wanted),
    not the whole."""
    token = _COUNT.set((done, total))
    try:
        yield
    finally:
        _COUNT.reset(token)


def over_chunks(call: Callable, N: int, size: int, note: str) -> tuple:
    """``call(indices)`` -> a tuple of arrays with ``size`` rows, on every chunk of
    ``chunk_indices(N, size)``, with a ``checkpoint`` after each (its rows counted on from
    ``counting``'s when one is active); the results' real rows concatenated (NumPy results
    stay on the host, JAX arrays on their device)."""
    import jax.numpy as jnp
    import numpy as np

    base, total = _COUNT.get() or (0, N)
    parts, done = [], 0
    for idx, real in chunk_indices(N, size):
        parts.append(tuple(o[:real] for o in call(idx)))
        done += real
        checkpoint(base + done, max(total, base + done), note)
    cat = np.concatenate if isinstance(parts[0][0], np.ndarray) else jnp.concatenate
    return tuple(cat([p[k] for p in parts]) for k in range(len(parts[0])))


def status(note: str) -> None:
    """Set the standing note of the active progress report (e.g. the precision reached so
    far), shown beside the per-chunk progress until replaced."""
    b = _ACTIVE.get()
    if b.progress is not None and hasattr(b.progress, "status"):
        b.progress.status = note


def nothing_yet(max_seconds: float, what: str, setting: str = "max_seconds") -> PlacementError:
    """The error for a budget that ran out before anything usable existed."""
    return PlacementError(f"{setting}={max_seconds:g} ran out before {what}; nothing usable to return. "
                          f"Raise {setting} (or set it to 0 for no limit), or make the problem smaller.")
