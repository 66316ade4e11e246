"""The command line run in this process (``placement.cli.main``): imports are paid once per
worker and identical XLA programs are compiled once. Used by test_paths.py and test_suggest.py.
Callers set PLACEMENT_RAW_STDERR=1 (placement.runtime's fd-2 filter would replace sys.stderr
in this process) and PLACEMENT_CACHE (a compile cache of their own)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import sys
import traceback
from dataclasses import dataclass
from unittest import mock


@dataclass
class Result:
    code: int
    out: str
    err: str

    def show(self) -> str:
        return f"exit {self.code}\n--- stdout ---\n{self.out[-3000:]}\n--- stderr ---\n{self.err[-4000:]}"


def placement(*args: str) -> Result:
    """``placement ARGS`` in this process: exit code, stdout and stderr. Restores what the CLI
    changes globally (sys.argv, the SIGTERM handler, Hydra's logging handlers, GlobalHydra)."""
    import placement.cli as cli
    from hydra.core.global_hydra import GlobalHydra

    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    argv, sigterm = sys.argv[:], signal.getsignal(signal.SIGTERM)
    GlobalHydra.instance().clear()
    code = None
    try:
        # Hydra configures logging with dictConfig, which calls logging.shutdown() on every
        # existing handler - pytest's own capture handlers included (then "I/O operation on
        # closed file" in every later test of the worker). Handlers the CLI adds are closed below.
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                mock.patch.object(logging, "shutdown", lambda *a, **k: None):
            try:
                code = cli.main(list(args))
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
            except Exception:  # noqa: BLE001 - an escaped exception is a broken path: report it
                code = 1
                traceback.print_exc(file=sys.stderr)
    finally:
        sys.argv[:] = argv
        signal.signal(signal.SIGTERM, sigterm)
        for h in root.handlers:
            if h not in handlers:
                with contextlib.suppress(Exception):
                    h.close()
        root.handlers[:] = handlers
        root.setLevel(level)
        GlobalHydra.instance().clear()
    if code == 143:  # the CLI's handler caught a SIGTERM meant for this process: deliver it as intended
        os.kill(os.getpid(), signal.SIGTERM)
    return Result(int(code or 0), out.getvalue(), err.getvalue())


def assert_ok(r: Result) -> None:
    assert r.code == 0, r.show()
    assert "Traceback" not in r.out + r.err, r.show()
    assert "Error executing job" not in r.err, r.show()


def assert_clear_error(r: Result, *needles: str) -> None:
    """Exit 2, one ``error:`` line that says what happened, no traceback."""
    assert r.code == 2, r.show()
    assert "Traceback" not in r.out + r.err, r.show()
    errors = [line for line in r.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.show()
    for n in needles:
        assert n in errors[0], r.show()


def default_sigint():
    """In the child, before Python starts: SIGINT handled by default. A test suite started in the
    background (`pytest &` from a script) inherits SIGINT ignored, and Python then never installs
    its KeyboardInterrupt handler, so the child would ignore the SIGINT a test sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def one_thread_xla_flags() -> str:
    """XLA_FLAGS for a CLI process started beside others on this machine: the suite's flags
    (tests/conftest.py, so its programs compile as this process's do) and one XLA thread."""
    return f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_multi_thread_eigen=false".strip()
