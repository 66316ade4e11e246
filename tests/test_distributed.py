"""Several processes computing one estimate (placement.distributed, jax.distributed with Gloo on
the CPU): the numbers of one process, files from process 0 only, one error when they disagree."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from placement import distributed
from placement.errors import PlacementError

from inprocess import one_thread_xla_flags

PLACEMENT = [sys.executable, "-m", "placement.cli"]
# one XLA thread and one CPU device per process: the two processes share this machine's cores
QUIET = {"XLA_FLAGS": one_thread_xla_flags(), "OMP_NUM_THREADS": "1", "PLACEMENT_CPU_DEVICES": "1",
         "JAX_PLATFORMS": "cpu"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(tmp_path, cache, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLACEMENT_", "XLA_"))}
    return dict(env, **QUIET, PLACEMENT_CACHE=str(cache), TMPDIR=str(tmp_path), **extra)


def _together(tmp_path, cache, args_of, timeout=300):
    """Run ``placement`` in two processes joined through a coordinator; (rc, stdout, stderr) of each."""
    port = _free_port()
    procs = [subprocess.Popen(PLACEMENT + args_of(i), cwd=tmp_path, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE,
                              env=_env(tmp_path, cache, PLACEMENT_COORDINATOR=f"localhost:{port}",
                                       PLACEMENT_NUM_PROCESSES="2", PLACEMENT_PROCESS_ID=str(i)))
             for i in range(2)]
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            p.kill()
    return [(p.returncode, o, e) for p, (o, e) in zip(procs, outs)]


def _no_gloo(text: str) -> str:  # Gloo (C++) announces its connections on stdout
    return "\n".join(ln for ln in text.splitlines() if not ln.startswith("[Gloo]"))


def test_two_processes_give_the_one_process_estimate_and_only_process_0_writes(tmp_path, session_cache_base):
    args = ["gradient", "sampler=quadrature"]
    (rc0, out0, err0), (rc1, out1, err1) = _together(tmp_path, session_cache_base,
                                                     lambda i: args + [f"hydra.run.dir={tmp_path / 'together'}"])
    assert rc0 == 0 and rc1 == 0, (err0[-2000:], err1[-2000:])
    assert "relative SE" in out0 and _no_gloo(out1) == "" and _no_gloo(err1) == ""  # process 1 prints nothing
    one = subprocess.run(PLACEMENT + args + [f"hydra.run.dir={tmp_path / 'alone'}"], cwd=tmp_path, text=True,
                         capture_output=True, env=_env(tmp_path, session_cache_base), timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    a = json.loads((tmp_path / "together" / "gradient.json").read_text())
    b = json.loads((tmp_path / "alone" / "gradient.json").read_text())
    assert a["diagnostics"]["num_draws"] == b["diagnostics"]["num_draws"] > 10000
    for key in ("F", "F_se", "grad", "grad_se"):  # the same draws and terms, gathered: bit for bit
        assert np.array_equal(np.asarray(a[key]), np.asarray(b[key])), key
    assert sorted(p.name for p in (tmp_path / "together").iterdir()) == \
        sorted(p.name for p in (tmp_path / "alone").iterdir())
    left = [p.name for p in tmp_path.iterdir() if p.name not in ("together", "alone")]
    assert not [n for n in left if n.startswith("placement-process-")], left  # process 1's scratch folder is gone
    assert not (tmp_path / "outputs").exists()


def test_processes_that_compute_different_draws_stop_with_one_error(tmp_path, session_cache_base):
    # process 1 has another seed: its posterior draws differ from process 0's at the first chunk
    runs = _together(tmp_path, session_cache_base,
                     lambda i: ["gradient", f"seed={i}", f"hydra.run.dir={tmp_path / 'out'}"])
    for i, (rc, out, err) in enumerate(runs):
        assert rc == 2, (i, err[-2000:])
        assert "the processes computed different posterior draws" in err and "Traceback" not in err, err[-2000:]
    assert runs[1][2].lstrip().startswith("[process 1] error:")
    assert not (tmp_path / "out" / "gradient.json").exists()


def test_the_environment_asks_for_processes_with_clear_errors():
    assert not distributed.requested({}) and distributed.requested({"PLACEMENT_DISTRIBUTED": "auto"})
    assert distributed.initialize_from_env({}) == 1  # nothing asked: one process, nothing joined
    with pytest.raises(PlacementError, match="PLACEMENT_NUM_PROCESSES and PLACEMENT_PROCESS_ID"):
        distributed.initialize_from_env({"PLACEMENT_COORDINATOR": "localhost:1234"})
    with pytest.raises(PlacementError, match="PLACEMENT_PROCESS_ID=2 is not one of 0 .. 1"):
        distributed.initialize_from_env({"PLACEMENT_COORDINATOR": "localhost:1234", "PLACEMENT_NUM_PROCESSES": "2",
                                         "PLACEMENT_PROCESS_ID": "2"})
    with pytest.raises(PlacementError, match="must be 'auto'"):
        distributed.requested({"PLACEMENT_DISTRIBUTED": "yes"})
    assert not distributed.multi() and distributed.is_main() and distributed.agree(True)


def test_a_sweep_is_refused_and_suggest_left_to_rank_0_before_joining(monkeypatch, capsys):
    from placement.cli import main

    monkeypatch.setenv("PLACEMENT_COORDINATOR", "localhost:1")  # nobody listens: joining would wait
    monkeypatch.setenv("PLACEMENT_NUM_PROCESSES", "2")
    monkeypatch.setenv("PLACEMENT_PROCESS_ID", "0")
    assert main(["gradient", "-m", "seed=1,2"]) == 2
    assert "a sweep (-m) runs its jobs one by one" in capsys.readouterr().err
    monkeypatch.setenv("PLACEMENT_PROCESS_ID", "1")  # suggest: computed by rank 0 alone; the others end at once
    assert main(["suggest", "data=no-such-file.csv"]) == 0
    assert capsys.readouterr().err == ""
