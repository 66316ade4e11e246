"""The JAX pin, and a large vmapped batch of the real model finishing (jaxlib 0.10.x
deadlocks on batched Cholesky solves of this size on 2-core machines)."""

import subprocess
import sys
import textwrap

import jax


def test_jax_is_the_pinned_version():
    import jaxlib

    assert jax.__version__ == "0.9.2" and jaxlib.__version__ == "0.9.2"


def test_large_vmapped_batch_of_the_seed_model_finishes():
    code = textwrap.dedent(
        """
        import numpy as np, jax, jax.numpy as jnp
        import placement
        from placement.model import from_pymc
        from placement.problems import seed_gp
        from placement.estimator import make_terms
        jm = from_pymc(seed_gp(), "gp_mu")
        theta = jnp.asarray(np.random.default_rng(0).normal([1.0, 1.5, -1.0], 0.3, (20000, 3)))
        terms = make_terms(jm, batch_size=20000)
        logp, f, df, s = terms(theta, jnp.asarray(jm.X), jnp.asarray(jm.y))
        jac = jax.jit(jax.vmap(jax.jacfwd(jm.logdensity, argnums=1), in_axes=(0, None, None)))(theta[:4000], jm.X, jm.y)
        assert np.all(np.isfinite(np.asarray(logp))) and jac.shape == (4000, 10)
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_cpu_is_forced_only_without_an_accelerator_plugin(tmp_path):
    """With a JAX GPU plugin importable the package leaves JAX_PLATFORMS to JAX; without one
    it sets cpu (a user's own setting always wins)."""
    code = "import os, placement.runtime as r; r.configure_process(); print(os.environ.get('JAX_PLATFORMS'))"
    (tmp_path / "jax_cuda12_plugin").mkdir()
    (tmp_path / "jax_cuda12_plugin" / "__init__.py").write_text("")
    env = {k: v for k, v in __import__("os").environ.items() if k != "JAX_PLATFORMS"}

    def run(extra_path, **more):
        e = dict(env, **more)
        if extra_path:
            e["PYTHONPATH"] = str(tmp_path)
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=60).stdout.strip()

    assert run(False) == "cpu"
    assert run(True) == "None"
    assert run(True, JAX_PLATFORMS="cuda") == "cuda"


def test_the_cuda_extra_has_a_build_for_every_supported_python():
    """JAX 0.11 needs Python >= 3.12, so the ``cuda`` extra must also admit a build older Pythons
    can install (0.9.2), never the 0.10 series (excluded for its CPU deadlock), and stay inside
    the core dependency's range."""
    from pathlib import Path

    import pytest
    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    meta = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    (cuda,) = [Requirement(r) for r in meta["optional-dependencies"]["cuda"] if r.startswith("jax")]
    (core,) = [Requirement(r) for r in meta["dependencies"] if r.startswith("jax>") or r.startswith("jax=")]
    assert "cuda12" in cuda.extras and meta["requires-python"] == ">=3.10"
    for version, ok in [("0.9.2", True), ("0.10.2", False), ("0.11.2", True), ("0.12.0", False)]:
        assert cuda.specifier.contains(version) is ok and (not ok or core.specifier.contains(version)), version
