"""One estimate's draw axis sharded over several local devices gives the unsharded numbers."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

CODE = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import numpy as np, jax
    import placement
    from conjugate import build
    from placement.api import Problem, gradient
    from placement.importance import ISConfig
    from placement.model import from_pymc
    jm = from_pymc(build(), "f")
    est = gradient(Problem("conjugate", jm), ISConfig(num_samples=4099, adapt_samples=1024, rel_se=0.0, qmc=False), seed=3)
    print("RESULT", json.dumps({"devices": len(jax.devices()), "F": est.F, "grad": est.grad.tolist(),
                                "se": est.grad_se.tolist()}))
    """
)


def _run(devices):
    # the device-count flag first: XLA stops parsing XLA_FLAGS at a token it does not know
    flags = f"--xla_force_host_platform_device_count={devices} --xla_cpu_multi_thread_eigen=false"
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", CODE, str(Path(__file__).parent)], capture_output=True, text=True,
                         env=env, timeout=300)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    assert line, out.stderr[-3000:]
    return json.loads(line[0][7:])


def _in_process():
    """The same estimate in this process (one device: no forced device count here)."""
    import jax

    from conjugate import build
    from placement.api import Problem, gradient
    from placement.importance import ISConfig
    from placement.model import from_pymc

    jm = from_pymc(build(), "f")
    est = gradient(Problem("conjugate", jm), ISConfig(num_samples=4099, adapt_samples=1024, rel_se=0.0, qmc=False), seed=3)
    return {"devices": len(jax.local_devices()), "F": est.F, "grad": est.grad.tolist(), "se": est.grad_se.tolist()}


def test_sharded_draws_give_the_unsharded_estimate():
    one, two = _in_process(), _run(2)
    assert one["devices"] == 1 and two["devices"] == 2
    # 4099 draws: the odd one out is padded and dropped; equal up to round-off (the per-device
    # batches vectorise differently)
    np.testing.assert_allclose(two["F"], one["F"], rtol=1e-12)
    np.testing.assert_allclose(two["grad"], one["grad"], rtol=1e-11, atol=1e-15)
    np.testing.assert_allclose(two["se"], one["se"], rtol=1e-11, atol=1e-15)


def test_one_cpu_device_per_core_unless_set():
    from placement.runtime import cpu_device_flags

    assert cpu_device_flags("", "auto", 2) == "--xla_force_host_platform_device_count=2"
    assert cpu_device_flags("--xla_cpu_multi_thread_eigen=false", "auto", 64).startswith(
        "--xla_force_host_platform_device_count=8 ")  # at most 8, and first (XLA stops at unknown tokens)
    assert cpu_device_flags("", "auto", 1) == "" and cpu_device_flags("", "1", 16) == ""
    kept = "--xla_force_host_platform_device_count=3"
    assert cpu_device_flags(kept, "auto", 16) == kept  # the user's own count wins


BLAS_THREADS = ("import placement, jax.numpy as jnp, threadpoolctl; jnp.linalg.cholesky(jnp.eye(2)).block_until_ready(); "
                "print(sorted({i['num_threads'] for i in threadpoolctl.threadpool_info() if i['user_api'] == 'blas'}))")


def blas_threads(**env) -> list[int]:
    base = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS",
                                                            "XLA_FLAGS", "PLACEMENT_CPU_DEVICES")}
    out = subprocess.run([sys.executable, "-c", BLAS_THREADS], capture_output=True, text=True, env={**base, **env},
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return eval(out.stdout.strip().splitlines()[-1])


def test_blas_is_single_threaded_when_each_core_is_a_device():
    """With one XLA CPU device per core, LAPACK calls run one per core already; OpenBLAS's own
    threads under each would oversubscribe the cores (2x slower terms at n=500, runtime.py)."""
    assert blas_threads(PLACEMENT_CPU_DEVICES="2") == [1]
    if (os.cpu_count() or 1) > 1:  # otherwise the libraries' own default is one thread too
        assert blas_threads(PLACEMENT_CPU_DEVICES="1") != [1]  # one device: the libraries' own default
        assert blas_threads(PLACEMENT_CPU_DEVICES="2", OPENBLAS_NUM_THREADS="2") == [2]  # the user's setting wins
