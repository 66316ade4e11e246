"""A quiet terminal, and a compile cache that keeps each host CPU's executables apart."""

import os
import re
import subprocess
import sys
from pathlib import Path

from placement import runtime

SMALL = ["sampler.num_samples=2048", "sampler.adapt_samples=1024", "sampler.rel_se=0"]

# absl / glog prefix of XLA's C++ log lines: E1126 07:41:05.792562    3461 file.cc:220]
ABSL_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ \S+:\d+\]", re.M)

FAKE_CPU_A = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 207
model name\t: Intel(R) Xeon(R) Processor
cpu MHz\t\t: 2100.000
core id\t\t: 0
flags\t\t: fpu sse sse2 avx avx2 avx512f avx512bw

processor\t: 1
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 207
model name\t: Intel(R) Xeon(R) Processor
cpu MHz\t\t: 2399.998
core id\t\t: 1
flags\t\t: fpu sse sse2 avx avx2 avx512f avx512bw
"""


def test_cache_key_differs_between_cpus_and_ignores_clock_and_core():
    key_a = runtime.host_key(FAKE_CPU_A, machine="x86_64")
    no_avx512 = FAKE_CPU_A.replace(" avx512f avx512bw", "")
    other_model = FAKE_CPU_A.replace("model\t\t: 207", "model\t\t: 143")
    arm = "processor\t: 0\nCPU implementer\t: 0x41\nCPU part\t: 0xd0c\nFeatures\t: fp asimd aes\n"
    keys = {key_a, runtime.host_key(no_avx512, "x86_64"), runtime.host_key(other_model, "x86_64"),
            runtime.host_key(arm, "aarch64")}
    assert len(keys) == 4
    # clock speed and core numbering change between reads and cores: same key
    wobble = FAKE_CPU_A.replace("2399.998", "800.000").replace("core id\t\t: 1", "core id\t\t: 7")
    assert runtime.host_key(wobble, "x86_64") == key_a
    assert key_a.startswith("x86_64-")
    assert runtime.compile_cache_dir("/base") == Path("/base") / runtime.host_key()


def test_stderr_filter_drops_only_the_tuning_feature_false_alarm():
    def aot(feature):
        return (f"E1126 07:41:05.792562    3461 cpu_aot_loader.cc:220] Loading XLA:CPU AOT result. "
                f"Target machine feature +{feature} is not  supported on the host machine. Machine type "
                f"used for XLA:CPU compilation doesn't match ... could lead to execution errors such as SIGILL.\n")

    text = (aot("prefer-no-gather") + "kept 1\n" + aot("prefer-no-scatter") + aot("avx512f")
            + "E1126 07:41:06.000000    3461 pjrt_client.cc:1] some other error\n" + "no newline at end")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", runtime._FILTER_SOURCE, runtime.TUNING_ONLY_AOT_LINE],
                         input=text.encode(), capture_output=True, timeout=60).stdout.decode()
    assert out == ("kept 1\n" + aot("avx512f") + "E1126 07:41:06.000000    3461 pjrt_client.cc:1] some other error\n"
                   + "no newline at end")


def test_second_run_loads_the_cache_quietly(tmp_path):
    cache = tmp_path / "cache"
    fresh = {  # first run on a fresh machine: ArviZ's daily warning, matplotlib's font cache, PyTensor's CVM
        "PLACEMENT_CACHE": str(cache), "XDG_CACHE_HOME": str(tmp_path / "xdg"),
        "MPLCONFIGDIR": str(tmp_path / "mpl"), "PYTENSOR_FLAGS": f"base_compiledir={tmp_path / 'pytensor'}",
    }
    env = dict(os.environ, **fresh)
    env.pop("PLACEMENT_RAW_STDERR", None)
    runs = []
    for i in (1, 2):
        r = subprocess.run([sys.executable, "-m", "placement.cli", "gradient", f"hydra.run.dir={tmp_path / f'run{i}'}",
                            *SMALL], capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        runs.append(r)
        if i == 1:  # the second run must have something to load
            host = cache / runtime.host_key()
            assert host.is_dir(), sorted(p.name for p in cache.iterdir())
            assert any(p.name.endswith("-cache") for p in host.iterdir())
            # size-limited (JAX's file lock and LRU): every entry has its access-time file
            assert not [p.name for p in host.glob("*-cache") if not p.with_name(p.name[:-6] + "-atime").exists()]
    assert [p.name for p in cache.iterdir()] == [runtime.host_key()]
    for r in runs:
        for stream in (r.stdout, r.stderr):
            assert not ABSL_LINE.search(stream), stream[:2000]
            assert "cpu_aot_loader" not in stream
            assert "INFO" not in stream, stream[:2000]
            assert "FutureWarning" not in stream, stream[:2000]
        assert "dF/dX" in r.stdout and "+- se" in r.stdout and "sampler=importance" in r.stdout
    # other libraries' INFO lines stay in the run's log file
    assert "[INFO]" in (tmp_path / "run1" / "cli.log").read_text()


REPAIR = """
import warnings, jax, jax.numpy as jnp
from placement import runtime
path = runtime.compile_cache_dir()
path.mkdir(parents=True)
(path / "jit_old-0123-cache").write_bytes(b"x")  # an entry from a process without a size limit
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    runtime.enable_compile_cache(0.0)
    jax.jit(lambda x: jnp.sin(x) * 3.0)(jnp.ones(3)).block_until_ready()
print(sorted(p.name.rsplit("-", 1)[-1] for p in path.iterdir() if not p.name.startswith(".")))
print([str(w.message)[:200] for w in caught if "persistent compilation cache" in str(w.message)])
"""


def test_an_entry_without_its_access_time_does_not_stop_later_cache_writes(tmp_path):
    env = dict(os.environ, PLACEMENT_CACHE=str(tmp_path / "cache"), JAX_PLATFORMS="cpu")
    env.pop("JAX_COMPILATION_CACHE_MAX_SIZE", None)
    r = subprocess.run([sys.executable, "-c", REPAIR], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    kinds, failed = r.stdout.strip().splitlines()
    assert failed == "[]", failed  # JAX's eviction scan read every entry's access time
    kinds = eval(kinds)  # noqa: S307 - our own printed list
    assert kinds.count("cache") >= 2 and kinds.count("atime") == kinds.count("cache"), kinds  # new entries written


def test_cache_eviction_scans_at_the_first_write_of_a_process_only(tmp_path, monkeypatch):
    """The first write evicts the least recently used entries down to the limit less its
    headroom; later writes of the process do not scan the folder (an entry that would make a
    scan fail, one without its access-time file, does not stop them)."""
    from jax._src import lru_cache

    current = lru_cache.LRUCache._evict_if_needed
    monkeypatch.setattr(lru_cache.LRUCache, "_evict_if_needed", getattr(current, "original", current))
    assert runtime.evict_once_per_process()
    limit = 8000  # headroom 1000 bytes
    for i in range(11):  # 7700 bytes, entry 0 used least recently
        (tmp_path / f"old{i}-cache").write_bytes(b"x" * 700)
        (tmp_path / f"old{i}-atime").write_bytes((1000 + i).to_bytes(8, "little"))
    cache = lru_cache.LRUCache(str(tmp_path), max_size=limit)
    cache.put("new0", b"y" * 700)
    left = sorted(p.name for p in tmp_path.glob("*-cache"))
    assert "old0-cache" not in left and "old1-cache" in left and "new0-cache" in left, left
    assert sum(p.stat().st_size for p in tmp_path.glob("*-cache")) <= limit - runtime.EVICTION_HEADROOM * limit + 700
    (tmp_path / "orphan-cache").write_bytes(b"z")  # no access-time file: a scan would raise
    cache.put("new1", b"y" * 700)
    assert (tmp_path / "new1-cache").exists()
