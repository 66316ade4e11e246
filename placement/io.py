"""Atomic file output: write to a temporary file in the same folder, then rename."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from placement import distributed


def _plain(obj):
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None  # strict JSON has no NaN
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    return obj


def write_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_atomic_bytes(path, text.encode())


def write_atomic_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never a part."""
    with atomic_target(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


@contextlib.contextmanager
def atomic_target(path: str | os.PathLike):
    """A temporary file name beside ``path`` for a writer to fill; renamed onto ``path`` when the
    block ends normally, removed when it raises (an interrupt included). In a process other
    than process 0 (``placement.distributed``) the file is written to a scratch folder and dropped."""
    path = Path(path)
    if not distributed.is_main():  # several processes: process 0 writes, the others' output is dropped
        with tempfile.TemporaryDirectory() as scratch:
            yield os.path.join(scratch, path.name)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path, obj) -> Path:
    return write_atomic(path, json.dumps(_plain(obj), indent=2, allow_nan=False) + "\n")


def write_csv(path, rows: list[dict]) -> Path:
    """Rows of a trajectory as CSV, atomically. Columns: every key of any row, in order of first
    appearance (rows from an older checkpoint or a sampler that reports more may differ)."""
    import csv
    import io

    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), restval="")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return write_atomic(path, buf.getvalue())
