"""The request's table: CSV or DataFrame in, checked arrays and bounds, normalised inputs;
the suggestions DataFrame out (one builder for the CLI and the Python API)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from placement.errors import PlacementError


def read_table(path, x_columns=None, y_column: str = "y"):
    """Read a CSV into (X (n, d), y (n,), x column names) with clear errors."""
    df = read_csv(path, "data file", "data=path/to/file.csv")
    return frame_to_arrays(df, x_columns, y_column, source=str(path))


def read_csv(path, what: str, hint: str):
    """A CSV file as a DataFrame, or one PlacementError naming ``what`` and how to give it."""
    import pandas as pd

    p = Path(str(path))
    if not p.exists():
        raise PlacementError(f"{what} {p} does not exist; give {hint}.")
    try:
        return pd.read_csv(p)
    except Exception as e:  # pandas raises many types for unreadable files
        raise PlacementError(f"cannot read {what} {p} as CSV ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}).") from None


def frame_to_arrays(df, x_columns=None, y_column: str = "y", source: str = "the table"):
    if df is None or len(df.columns) == 0:
        raise PlacementError(f"{source} has no columns; it needs input columns and a '{y_column}' column.")
    if y_column not in df.columns:
        raise PlacementError(f"{source} has no column {y_column!r} (columns: {', '.join(map(str, df.columns))}); "
                             "set y_column=NAME.")
    x_columns = [c for c in df.columns if c != y_column] if not x_columns else list(x_columns)
    missing = [c for c in x_columns if c not in df.columns]
    if missing or not x_columns:
        raise PlacementError(f"{source} lacks input columns {missing or '(none left besides y)'} "
                             f"(columns: {', '.join(map(str, df.columns))}); set x_columns=[...].")
    try:
        X = df[x_columns].to_numpy(dtype=np.float64)
        y = df[y_column].to_numpy(dtype=np.float64)
    except (ValueError, TypeError):
        import pandas as pd

        text = [c for c in x_columns + [y_column] if pd.to_numeric(df[c], errors="coerce").isna().gt(df[c].isna()).any()]
        raise PlacementError(f"{source}: column(s) {text or x_columns + [y_column]} hold text; every input and y column "
                             "must hold numbers only (drop a label column or name the inputs with x_columns=[...]).") \
            from None
    bad = ~np.isfinite(X).all(axis=1) | ~np.isfinite(y)
    if bad.any():
        raise PlacementError(f"{source}: rows {np.nonzero(bad)[0][:10].tolist()} contain NaN, empty or infinite "
                             "values; remove or fill them.")
    if len(y) < 2:
        raise PlacementError(f"{source} has {len(y)} observation(s); at least two are needed to fit the GP.")
    _, counts = np.unique(X, axis=0, return_counts=True)
    if (counts > 1).any():
        raise PlacementError(f"{source} has duplicate input rows; average repeated measurements into one row.")
    return X, y, [str(c) for c in x_columns]


def check_bounds(bounds, X, also=None):
    """bounds: None (the range of the data and of ``also``, further points (m, d) the box must
    hold) or [[lo, hi], ...] per column (or [lo, hi] when d = 1)."""
    d = X.shape[1]
    if bounds is None:
        pts = X if also is None or not len(also) else np.concatenate([X, also])
        lo, hi = pts.min(0), pts.max(0)
        if np.any(hi <= lo):
            raise PlacementError("an input column is constant, so the data range is empty; give bounds=[[lo,hi],...].")
        return np.stack([lo, hi], 1)
    try:
        b = np.atleast_2d(np.asarray(bounds, dtype=np.float64))
    except (TypeError, ValueError):
        b = None
    if b is None or b.shape != (d, 2):
        raise PlacementError(f"bounds must be one [lo, hi] pair of numbers per input column ({d} column(s)), "
                             f"e.g. bounds=[[0,1]]; got {bounds!r}.")
    if not np.isfinite(b).all():
        raise PlacementError(f"bounds must be finite numbers; got {b.tolist()}.")
    if np.any(b[:, 0] >= b[:, 1]):
        raise PlacementError(f"bounds need lo < hi in every column; got {b.tolist()}.")
    return b



def prepare(X, y, bounds, cfg=None, also=None):
    """Every check on the data, before any work: returns (bounds (d, 2), Xn in [0, 1]^d,
    standardised y, (y mean, y sd)). cfg, when given, must be a SuggestConfig (its own
    checks ran when it was made); ``also``: points the default bounds take in (check_bounds)."""
    from placement.suggest.config import SuggestConfig

    if cfg is not None and not isinstance(cfg, SuggestConfig):
        raise PlacementError("cfg must be a SuggestConfig.")
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if X.ndim != 2 or X.shape[0] != y.shape[0]:
        raise PlacementError(f"X must be (n, d) and y (n,) with the same n; got {X.shape} and {y.shape}.")
    if not (np.isfinite(X).all() and np.isfinite(y).all()):
        raise PlacementError("X and y must be finite numbers (no NaN or infinity).")
    b = check_bounds(bounds, X, also)
    span = b[:, 1] - b[:, 0]
    Xn = (X - b[:, 0]) / span
    if np.any(Xn < -1e-9) or np.any(Xn > 1 + 1e-9):
        raise PlacementError("some data points lie outside the given bounds; widen bounds to include the data.")
    y_mean, y_sd = float(y.mean()), float(y.std()) or 1.0
    return b, np.clip(Xn, 0.0, 1.0), (y - y_mean) / y_sd, (y_mean, y_sd)


def normalise_points(points, b, names=None, what: str = "pending"):
    """Points (see check_points) on the normalised scale of bounds b (d, 2); ``what``
    names them in errors (pending, target)."""
    P = check_points(points, b.shape[0], names, what)
    Pn = (P - b[:, 0]) / (b[:, 1] - b[:, 0])
    out = np.any((Pn < -1e-9) | (Pn > 1 + 1e-9), axis=1)
    if np.any(out):
        raise PlacementError(f"{int(out.sum())} {what} point(s) lie outside the bounds {b.tolist()} (e.g. "
                             f"{P[out][:3].tolist()}); widen bounds or drop those points.")
    return np.clip(Pn, 0.0, 1.0)


def check_points(points, d: int, names=None, what: str = "pending"):
    """Points given by the user, named ``what`` in errors (pending: suggested, not yet
    measured; target: where the predictions matter; measured: the inputs given to ``tell``):
    None, an array (p, d) (or (p,) when d = 1), a DataFrame or a CSV path: the input columns
    by name when it has them all (so a suggestions.csv can be passed back as it is), else its
    first d columns. Returns (p, d), possibly p = 0."""
    if points is None:
        return np.zeros((0, d))
    if isinstance(points, (str, Path)):
        points = read_csv(points, f"{what} file", f"{what}=path/to/points.csv")
    if hasattr(points, "iloc"):
        named = names is not None and all(str(c) in map(str, points.columns) for c in names)
        points = points[[c for c in points.columns if str(c) in set(map(str, names))]] if named \
            else points.iloc[:, :d]
    try:
        P = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        raise PlacementError(f"{what} points must be numbers, one row per point and one column per input.") from None
    if P.ndim == 1 and d == 1:
        P = P[:, None]
    if P.ndim != 2 or P.shape[1] != d:
        raise PlacementError(f"{what} points need {d} input column(s), one row per point; got shape {P.shape}.")
    if not np.isfinite(P).all():
        raise PlacementError(f"{what} points must be finite numbers (no NaN or infinity).")
    return P


def suggestions_frame(points, names, info):
    """The suggestions table (CLI's suggestions.csv and the API's return value): input
    columns, pred_mean, pred_sd, <criterion>_before, <criterion>_after."""
    import pandas as pd

    out = pd.DataFrame(np.asarray(points, dtype=np.float64).reshape(-1, len(names)), columns=list(names))
    out["pred_mean"] = info["pred_mean"]
    out["pred_sd"] = info["pred_sd"]
    out[f"{info['criterion']}_before"] = info["before"]
    out[f"{info['criterion']}_after"] = info["after"]
    out.attrs["info"] = info
    return out
