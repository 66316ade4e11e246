import os

# Two xdist workers share two cores: XLA's multi-threaded CPU runtime in two processes at once
# oversubscribes them and runs many times slower (measured: 30x on the suggest search), so each
# worker, and every CLI process it starts, runs XLA on one thread. Set before JAX is imported.
_flags = os.environ.get("XLA_FLAGS", "")
if os.environ.get("PYTEST_XDIST_WORKER"):
    if "xla_cpu_multi_thread_eigen" not in _flags:
        _flags += " --xla_cpu_multi_thread_eigen=false"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
# XLA:CPU's older fusion emitters (LLVM IR directly, not through MLIR) compile the suite's
# programs in about 60% of the time: a cold default gradient's 44 compiles took 3.3 s with the
# MLIR emitters and 1.8-1.9 s without (2.1 s of 15 s whole call), with the same numbers. Not the
# package's default: the code runs slower (a warm n = 200 gradient call: 14.5 s against 12.2-13.1).
# For this process and every CLI process a test starts, unless XLA_FLAGS names the flag already.
# Checked: the stock kernels' wrong d/dX (tests/test_stock_kernels.py) shows with these emitters.
if "xla_cpu_use_fusion_emitters" not in _flags:
    _flags += " --xla_cpu_use_fusion_emitters=false"
os.environ["XLA_FLAGS"] = _flags.strip()
# One CPU device per process in tests (the package's default is one per core, see
# runtime.cpu_device_flags); tests/test_sharding.py checks the sharded path against this one.
os.environ.setdefault("PLACEMENT_CPU_DEVICES", "1")
# XLA's optimisation passes off (JAX's "disable most optimizations": LLVM at -O0, no expensive
# passes), for this process and every CLI process a test starts; see _xla_optimizations below.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import numpy as np
import pytest

import placement  # noqa: F401  (enables float64)
from placement.model import from_pymc
from placement.problems import seed_gp


# -- the order files start in ---------------------------------------------------------------------
# With --dist loadfile a file runs whole on one worker, and a worker is handed the next file when
# it has two tests left. By default xdist hands files out by test count, most first, which started
# the heaviest files with few tests (test_properties.py, test_quiet.py) last, while the other
# worker ran out of files and waited. Longest first instead (the greedy schedule that balances the
# two workers best): these files, heaviest first, then every other file in collection order.
# Seconds per file on one worker of a 2-core machine (clean-clone run with --durations=0, XLA's
# optimisations off as below): paths ~320, long_work ~150, cli_run ~110, samplers ~95, properties
# ~90, design_mode ~85, stock_kernels ~80, exact_seed ~80, suggest, hsgp_suggest, examples, hsgp,
# distributed ~55-60, retry ~50, loop ~45, rewrites ~40. Keep the list in that order as files
# change (a name with no file is ignored).
SLOWEST_FIRST = ["test_paths.py", "test_long_work.py", "test_cli_run.py", "test_samplers.py", "test_properties.py",
                 "test_design_mode.py", "test_stock_kernels.py", "test_exact_seed.py", "test_suggest.py",
                 "test_hsgp_suggest.py", "test_examples.py", "test_hsgp.py", "test_distributed.py", "test_retry.py",
                 "test_loop.py", "test_rewrites.py", "test_no_silent_wrong.py", "test_launchers.py", "test_quiet.py"]


def pytest_configure(config):
    if getattr(config.option, "loadscopereorder", False):  # xdist's reordering by test count: off
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a file kept


# -- one compile cache for the session ----------------------------------------------------------
# Compiling dominates the suite, and tests in different files (so often on different workers)
# compile the same programs: the conjugate model's engines, the seed problem's CLI paths. So every
# in-process compile of the session goes through one persistent XLA cache shared by the two
# workers (the parent of the workers' temporary folders), and subprocess tests whose outcome
# does not depend on a cold cache point PLACEMENT_CACHE at its base (``session_cache_base``).
# JAX fixes its cache folder at the first compile that finds one set, so this runs before every
# test (the in-process CLI's own enable_compile_cache cannot move it later). A size limit turns
# on JAX's file lock around reads and writes, so one worker never reads an entry the other is
# still writing. tests/test_quiet.py keeps a cache of its own: it tests the cold start.
# Every compile is written (a small program recurs in many tests), so JAX's eviction scan, which
# reads every entry of the folder before each write (82 ms at 1360 entries), runs once per
# process, as in the package (runtime.evict_once_per_process); it would make the session's
# writes quadratic in its compiles.
SESSION_CACHE_BYTES = 32 * 2**30


@pytest.fixture(scope="session")
def session_cache_base(tmp_path_factory):
    """Base folder of the session's compile cache (PLACEMENT_CACHE for subprocesses)."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "jaxcache-session"


@pytest.fixture(scope="session", autouse=True)
def _session_compile_cache(session_cache_base):
    import jax

    from placement.runtime import compile_cache_dir, evict_once_per_process

    path = compile_cache_dir(session_cache_base)
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_compilation_cache_max_size", SESSION_CACHE_BYTES)
    evict_once_per_process()
    yield path


# -- XLA's optimisations ---------------------------------------------------------------------
# Compiling dominates the suite and most of a compile is LLVM's optimisation passes, which the
# tests' small, short-lived programs do not repay: with them off (above) a clean-clone run of the
# suite took 957 s instead of 1179 s. A test file keeps XLA's full optimisation, as users run it,
# by setting ``XLA_OPTIMIZED = True``:
# - files whose subject is a rounding effect that depends on how XLA compiles: PyMC's stock
#   kernels' wrong d/dX at coincident points appears only in optimised code (unoptimised, the
#   expanded-form distance cancels exactly and the gradient is right), so the tests of the
#   rewrite that fixes it, and of our own kernels at coincident points, could not fail without it;
# - files that run more than they compile (dozens of estimates of one program).
@pytest.fixture(autouse=True)
def _xla_optimizations(request):
    import jax

    before = bool(jax.config.values["jax_disable_most_optimizations"])
    jax.config.update("jax_disable_most_optimizations", before and not getattr(request.module, "XLA_OPTIMIZED", False))
    yield
    jax.config.update("jax_disable_most_optimizations", before)


@pytest.fixture(scope="session")
def seed_jm():
    return from_pymc(seed_gp(), "gp_mu")


def rel_err(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(b))


def cosine(a, b):
    a, b = np.ravel(a), np.ravel(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def assert_within_se(est_grad, est_se, truth, *, se_cap, k=4.0, atol=1e-6):
    """Every component within k reported standard errors (plus a tiny absolute tolerance), and
    the standard errors no larger than the sampler should achieve: |est_se| <= se_cap |truth|
    (Euclidean norms; callers set se_cap to about twice what they measured), so an inflated SE
    cannot pass the first check for free."""
    err = np.abs(np.ravel(est_grad) - np.ravel(truth))
    bound = k * np.ravel(est_se) + atol
    bad = np.nonzero(err > bound)[0]
    assert bad.size == 0, f"components {bad.tolist()} off by {err[bad]} > {bound[bad]}"
    rel = float(np.linalg.norm(np.ravel(est_se)) / np.linalg.norm(np.ravel(truth)))
    assert rel <= se_cap, f"standard errors too large: |se| / |truth| = {rel:.3g} > se_cap = {se_cap}"
