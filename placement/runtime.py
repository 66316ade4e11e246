"""Process set-up: a quiet terminal and a persistent XLA compile cache keyed by the host CPU.

Nothing here imports JAX at module level: ``configure_process`` must run before JAX is imported.

Findings behind this module (jax/jaxlib 0.9.2, XLA:CPU):

* Every load of a cached executable on an AVX-512 host logged two ERROR lines like
  ``E... cpu_aot_loader.cc:220] Loading XLA:CPU AOT result. Target machine feature
  +prefer-no-gather is not supported on the host machine ... could lead to execution errors such
  as SIGILL`` (about 1.7 kB each, two per executable). On the same machine that is a false
  alarm: XLA's ``IrCompiler::build_target_machine`` appends ``+prefer-no-gather,+prefer-no-scatter``
  to the target whenever any ``+avx512*`` feature is present ("scatter & gather can result in
  very poor performance"). They are LLVM code-generation preferences (what clang's
  ``-mno-gather``/``-mno-scatter`` set), not instructions, and host detection never reports them,
  so the loader's check "every compile feature is a host feature" can never pass there. In the
  logged lists these two are the only difference (openxla/xla#44565, jax-ml/jax#38445). The
  loader only logs; it still loads and runs the entry (the cache hits and the run is faster).
* The risk the message names is nevertheless real in principle: because the loader only logs,
  an executable built for a CPU with more features would run and could die with SIGILL. In jax
  0.9.2 the cache key already prevents that: ``cache_key.get`` hashes
  ``get_topology_for_devices(devices).serialize()``, and for CPU that serialization holds the
  target triple, the LLVM CPU name (e.g. ``emeraldrapids``) and the full feature string (checked:
  the key's "accelerator_config" hash equals sha256 of those bytes). But it rests on a private
  detail: if serializing the topology fails, ``_hash_accelerator_config`` falls back to hashing
  ``device_kind``, which is just "cpu" on every machine. A cache directory shared between
  different CPUs (a home directory on NFS in a cluster) would then hand one CPU's code to
  another. So the cache directory is keyed by the host CPU here as well (``host_key``), which
  holds whatever JAX does, and only the exact false-alarm line is filtered from stderr
  (``install_stderr_filter``); any other loader message, e.g. a missing ``+avx512f``, still shows.
* Separate, and not fixed here: jaxlib 0.9.2 can crash (SIGSEGV) while loading a cached
  executable with a few hundred kernels on the same machine: LLVM ORC links the per-kernel
  objects recursively on a fixed ~512 kB worker-thread stack (reproduced with a jit of 300 chained
  sin/cos/matmul steps; ``ulimit -s`` does not change it; the project's own programs load fine).
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import contextlib
import os
import platform
import re
import time
import subprocess
import sys
import warnings
from importlib import metadata
from pathlib import Path

# ---------------------------------------------------------------------------------------------
# environment, before JAX is imported


@contextlib.contextmanager
def env_restored(name: str, value: str | None = None):
    """Environment variable ``name`` as it was before the block when it ends; set to ``value``
    within it unless that is None."""
    before = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def keep_xla_flags():
    """Undo changes to XLA_FLAGS made inside the block. pymc.sampling.jax prepends
    --xla_force_host_platform_device_count=100 on import (for its chain_method="parallel"),
    which would split every sharded computation here over 100 fake CPU devices."""
    return env_restored("XLA_FLAGS")


def _accelerator_plugin_installed() -> bool:
    """A JAX GPU/TPU plugin is installed (e.g. by `pip install -e '.[cuda]'`): let JAX pick
    the accelerator (it falls back to the CPU when none is present)."""
    import importlib.util

    names = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin", "libtpu")
    return any(importlib.util.find_spec(n) is not None for n in names)


def cpu_device_flags(flags: str, setting: str, cores: int | None) -> str:
    """XLA_FLAGS with one CPU device per core (at most 8), so the draw axis of an estimate is
    sharded over the cores (``estimator.make_terms``): XLA:CPU runs each device's work on its
    own thread, while one device runs a batch of factorisations one after another on one core.
    ``setting``: "auto" (the core count), or a number ("1" = one device, no sharding). Flags
    that already name a device count are kept. The flag goes first: XLA stops parsing
    XLA_FLAGS at a token it does not know."""
    if "xla_force_host_platform_device_count" in flags:
        return flags
    if setting == "auto":
        count = min(max(cores or 1, 1), 8)
    else:
        try:
            count = int(setting)
        except ValueError:
            raise SystemExit(f"error: PLACEMENT_CPU_DEVICES must be 'auto' or a whole number; got {setting!r}.")
    if count <= 1:
        return flags
    return f"--xla_force_host_platform_device_count={count} {flags}".strip()


def cpu_device_count(flags: str) -> int:
    """The CPU device count that XLA_FLAGS asks for (1 when it names none)."""
    m = re.search(r"--xla_force_host_platform_device_count=(\d+)", flags)
    return int(m.group(1)) if m else 1


def single_threaded_blas() -> None:
    """One BLAS/LAPACK thread per call: with one XLA CPU device per core every core already
    runs its own factorisations (XLA:CPU calls LAPACK, e.g. potrf and trsm, from each
    device's thread), and a multi-threaded OpenBLAS under each of them oversubscribes the
    cores: measured on 2 cores, the terms of a 500-point GP took 100 ms per draw with
    OpenBLAS's default threads and 40-57 ms with one. Libraries loaded later read the
    environment; those already loaded (NumPy's, SciPy's) are limited through threadpoolctl.
    A thread count set by the user (OPENBLAS_NUM_THREADS, MKL_NUM_THREADS) is kept."""
    if any(v in os.environ for v in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")):
        return
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with PyMC
        return
    threadpool_limits(1, user_api="blas")


def configure_process() -> None:
    """Environment for JAX/XLA and warning filters; call before importing JAX."""
    if not _accelerator_plugin_installed():
        os.environ.setdefault("JAX_PLATFORMS", "cpu")  # no accelerator probing on CPU-only installs
    if os.environ.get("JAX_PLATFORMS") == "cpu":
        os.environ["XLA_FLAGS"] = cpu_device_flags(os.environ.get("XLA_FLAGS", ""),
                                                   os.environ.get("PLACEMENT_CPU_DEVICES", "auto"), os.cpu_count())
        if cpu_device_count(os.environ["XLA_FLAGS"]) > 1:
            single_threaded_blas()
    # XLA C++ INFO and WARNING lines (e.g. "Assume version compatibility" on every cache hit);
    # ERROR lines still show.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # The ArviZ message starts with a newline, so the pattern must allow leading whitespace.
    warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing a major refactor", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"\s*PyTensor could not link to a BLAS")


# ---------------------------------------------------------------------------------------------
# host-keyed compile cache

# Lines of /proc/cpuinfo that say what code the CPU can run: x86 (vendor, family/model, name,
# flags), ARM (implementer/part, Features), RISC-V (isa, uarch), POWER (cpu). Clock speed, core
# ids, bogomips and microcode change from read to read or between identical machines; left out.
_CPU_KEYS = ("vendor_id", "cpu family", "model", "model name", "flags",
             "CPU implementer", "CPU architecture", "CPU variant", "CPU part", "Features",
             "isa", "uarch", "cpu")


def cpu_description(cpuinfo: str | None = None) -> str:
    """The host CPU as text: the distinct processor descriptions from /proc/cpuinfo (or
    ``cpuinfo``), else what ``platform`` knows (coarser: on such systems JAX's own key, which
    holds the XLA target machine, is the guarantee)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    kinds = set()
    for block in re.split(r"\n\s*\n", cpuinfo):
        fields = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            key = key.strip()
            if sep and key in _CPU_KEYS:
                value = value.strip()
                fields[key] = " ".join(sorted(value.split())) if key in ("flags", "Features") else value
        if fields:
            kinds.add("; ".join(f"{k}={fields[k]}" for k in _CPU_KEYS if k in fields))
    if not kinds:
        kinds.add(f"system={platform.system()}; processor={platform.processor()}")
    return "\n".join(sorted(kinds))


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "none"


def host_key(cpuinfo: str | None = None, machine: str | None = None) -> str:
    """Name of this host's cache subdirectory: architecture plus a hash of the CPU description
    and the jax/jaxlib versions, e.g. ``x86_64-3f9c0a1b2c3d4e5f``."""
    machine = machine or platform.machine() or "cpu"
    text = "\n".join([f"machine={machine}", f"jax={_version('jax')}", f"jaxlib={_version('jaxlib')}",
                      cpu_description(cpuinfo)])
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", machine)
    return f"{safe}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def cache_base() -> Path:
    return Path(os.environ.get("PLACEMENT_CACHE") or Path.home() / ".cache" / "placement" / "jax").expanduser()


def compile_cache_dir(base: Path | str | None = None) -> Path:
    """``$PLACEMENT_CACHE`` (default ~/.cache/placement/jax) / host_key(): executables built for
    another CPU, or by another jax/jaxlib, live in another directory and are never loaded."""
    return (cache_base() if base is None else Path(base)) / host_key()


# The cache's size limit. A limit also makes JAX lock the folder around every read and write, so
# processes sharing it (a sweep's jobs, several runs at once) never read an entry another one is
# still writing; without one, JAX neither locks nor evicts.
CACHE_MAX_BYTES = 8 * 2**30


def repair_cache_times(path: Path) -> int:
    """Give every entry in ``path`` that lacks one the access-time file that JAX's size-limited
    cache keeps beside each entry; returns how many were written. A process that used the folder
    without a limit writes entries without them, and then every later write of a limited process
    fails on its eviction scan (a FileNotFoundError warning per compile, nothing cached). Stamped
    now: such entries count as just used."""
    stamp = time.time_ns().to_bytes(8, "little")
    fixed = 0
    for entry in Path(path).glob("*-cache"):
        atime = entry.with_name(entry.name[: -len("-cache")] + "-atime")
        if not atime.exists():
            try:
                atime.write_bytes(stamp)
                fixed += 1
            except OSError:  # a read-only or vanishing entry: JAX copes with what it can read
                pass
    return fixed


# What the first write of a process frees below the limit, for the rest of the process's writes.
EVICTION_HEADROOM = 1 / 8


def evict_once_per_process() -> bool:
    """Make JAX's size-limited compile cache run its eviction scan at the first write of each
    process only, freeing ``EVICTION_HEADROOM`` of the limit there for the writes that follow.
    JAX scans every entry of the folder (a stat and a file read each) before every write: 82 ms
    at 1360 entries, and a cold run writes tens of entries into a folder that holds thousands.
    The folder can pass its limit by what one process writes beyond the headroom. Returns whether
    JAX's cache was changed (False when its internals are not the ones this was written for)."""
    try:
        from jax._src import lru_cache
    except ImportError:
        return False
    cls = getattr(lru_cache, "LRUCache", None)
    scan = getattr(cls, "_evict_if_needed", None)
    if scan is None or getattr(scan, "placement_once", False):
        return False

    def evict_if_needed(self, *, additional_size: int = 0) -> None:
        if not getattr(self, "eviction_enabled", False) or getattr(self, "_placement_evicted", False):
            return
        scan(self, additional_size=max(int(additional_size), int(self.max_size * EVICTION_HEADROOM)))
        self._placement_evicted = True

    evict_if_needed.placement_once = True
    evict_if_needed.original = scan
    cls._evict_if_needed = evict_if_needed
    return True


def enable_compile_cache(min_compile_time_secs: float = 0.5) -> Path:
    """Turn on the persistent compile cache in ``compile_cache_dir()``, size-limited (LRU, with
    JAX's file lock): ``CACHE_MAX_BYTES`` unless ``jax_compilation_cache_max_size`` (or
    ``JAX_COMPILATION_CACHE_MAX_SIZE``) is set already."""
    import jax

    path = compile_cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_time_secs)
    if getattr(jax.config, "jax_compilation_cache_max_size", None) == -1:  # -1: JAX's "no limit"
        jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)
    repair_cache_times(path)
    evict_once_per_process()
    install_stderr_filter()
    return path


# ---------------------------------------------------------------------------------------------
# stderr: drop exactly the same-machine false alarm

# The tuning-only features XLA adds on AVX-512 hosts (see the module docstring). A line naming
# any other feature is a real mismatch and passes.
TUNING_ONLY_AOT_LINE = (r"E\d{4} [0-9:. ]+\d+ cpu_aot_loader\.cc:\d+\] Loading XLA:CPU AOT result\. "
                        r"Target machine feature \+prefer-no-(?:gather|scatter) is not\s+supported "
                        r"on the host machine\.")

# Runs in a child process: reads what native code writes to fd 2, passes every line on to the
# real stderr except the false alarm. A child, not a thread, so that whatever precedes a crash
# still comes out. Partial lines pass at once unless they could start a log line ("E...").
_FILTER_SOURCE = r"""
import os, re, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
drop = re.compile(sys.argv[1].encode())
def write(b):
    while b:
        try:
            b = b[os.write(1, b):]
        except OSError:
            return
buf = b""
while True:
    try:
        chunk = os.read(0, 1 << 16)
    except OSError:
        break
    if not chunk:
        break
    lines = (buf + chunk).split(b"\n")
    buf = lines.pop()
    out = b"".join(line + b"\n" for line in lines if not drop.match(line))
    if buf and not buf.startswith(b"E"):
        out, buf = out + buf, b""
    write(out)
if buf and not drop.match(buf):
    write(buf)
"""

_filter: subprocess.Popen | None = None


def install_stderr_filter() -> bool:
    """Route fd 2 (where XLA's C++ logging writes) through the filter child; Python's own
    ``sys.stderr`` keeps writing straight to the original stream, so its output is neither
    delayed nor filtered and ``isatty()`` is unchanged. Off with PLACEMENT_RAW_STDERR=1."""
    global _filter
    if _filter is not None or os.name != "posix" or not sys.executable or os.environ.get("PLACEMENT_RAW_STDERR"):
        return False
    if sys.stderr is not sys.__stderr__:  # someone (pytest's capture, a notebook) owns stderr: leave it alone
        return False
    try:
        for stream in (sys.stderr, sys.__stderr__):
            if stream is not None:
                stream.flush()
        orig = os.dup(2)
    except (OSError, ValueError):
        return False
    r = w = None
    try:
        r, w = os.pipe()
        proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _FILTER_SOURCE, TUNING_ONLY_AOT_LINE],
                                stdin=r, stdout=orig, stderr=orig, close_fds=True)
        os.dup2(w, 2)
    except OSError:
        for fd in (r, w, orig):
            if fd is not None:
                os.close(fd)
        return False
    os.close(r)
    os.close(w)
    old = sys.stderr
    sys.stderr = open(orig, "w", buffering=1, closefd=False,
                      encoding=getattr(old, "encoding", None) or "utf-8",
                      errors=getattr(old, "errors", None) or "backslashreplace")
    sys.stderr.reconfigure(write_through=True)
    _filter = proc
    atexit.register(_close_filter, orig)
    return True


def _close_filter(orig: int) -> None:
    """At exit: put the original stream back on fd 2, which closes the pipe, and let the child
    drain it so nothing arrives after the process has returned."""
    try:
        for stream in (sys.stderr, sys.__stderr__):
            if stream is not None:
                stream.flush()
        os.dup2(orig, 2)
        if _filter is not None:
            _filter.wait(timeout=2)
    except Exception:  # noqa: BLE001 - exit path: never mask the real exit status
        pass


# ---------------------------------------------------------------------------------------------
# Python logging on the terminal

# Set to WARNING outright (also in the run's .log file), as before.
NOISY_LOGGERS = ("arviz", "arviz.preview", "jax._src.xla_bridge", "pymc")
# Loggers whose INFO lines belong on the terminal.
OWN_LOGGERS = ("placement", "hydra")


def _console_record(record: logging.LogRecord) -> bool:
    name = record.name
    return record.levelno >= logging.WARNING or any(name == n or name.startswith(n + ".") for n in OWN_LOGGERS)


def quiet_console_logging() -> None:
    """Third-party INFO lines (matplotlib "generated new fontManager", PyTensor "Compiling new
    CVM" - logged under its file path, so no logger name catches it) stay off the terminal; the
    run's .log file keeps them. Warnings and errors from anyone still show."""
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            if _console_record not in handler.filters:
                handler.addFilter(_console_record)
