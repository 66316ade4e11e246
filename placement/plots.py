"""Figures for a run: points over steps, F with its error band, final posterior predictive."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    from placement.io import atomic_target

    with atomic_target(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return path


def points_over_steps(rows: list[dict], path: Path) -> Path:
    plt = _plt()
    xs = [k for k in rows[0] if k.startswith("x")]
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for k in xs:
        ax.plot(steps, [r[k] for r in rows], lw=1)
    ax.set_xlabel("outer step")
    ax.set_ylabel("point coordinate")
    ax.set_title("design points over steps")
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def objective_band(rows: list[dict], path: Path, name: str = "F") -> Path:
    plt = _plt()
    steps = np.array([r["step"] for r in rows])
    F = np.array([r["F"] for r in rows])
    se = np.array([r["F_se"] for r in rows])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, F, color="C0")
    ax.fill_between(steps, F - 2 * se, F + 2 * se, color="C0", alpha=0.3, label="+- 2 SE")
    ax.set_xlabel("outer step")
    ax.set_ylabel(name)
    ax.legend()
    ax.set_title(f"{name} over steps")
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def predictive(grid, mean, sd, X, y, path: Path, X0=None) -> Path:
    """Posterior predictive mean +- 2 sd of f on a 1-D grid, the data and the points."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(grid, mean, color="C0", label="predictive mean")
    ax.fill_between(grid, mean - 2 * sd, mean + 2 * sd, color="C0", alpha=0.25, label="+- 2 sd")
    ax.scatter(X, y, color="k", zorder=3, s=18, label="data at final points")
    if X0 is not None:
        ax.plot(X0, np.full(len(X0), ax.get_ylim()[0]), "|", color="C3", ms=14, label="start")
    ax.plot(X, np.full(len(X), ax.get_ylim()[0]), "|", color="k", ms=14)
    ax.set_xlabel("x")
    ax.legend(fontsize=8)
    ax.set_title("final posterior predictive")
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def suggestion_plot(X, y, pts, info, kernel, path: Path, names) -> Path:
    """d = 1: data, mixture predictive +- 2 sd, suggested points. d = 2: heat map of predictive sd."""
    from placement.suggest import mixture_predictive

    plt = _plt()
    b = info["bounds"]
    span = b[:, 1] - b[:, 0]
    y_mean, y_sd = info["y_scale"]
    d = X.shape[1]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if d == 1:
        g = np.linspace(0, 1, 200)[:, None]
        m, s = mixture_predictive(kernel, info["Xn"], info["yn"], g, info["hyper"])
        gx = g[:, 0] * span[0] + b[0, 0]
        ax.plot(gx, m * y_sd + y_mean, color="C0", label="predictive mean")
        ax.fill_between(gx, (m - 2 * s) * y_sd + y_mean, (m + 2 * s) * y_sd + y_mean, color="C0", alpha=0.25, label="+- 2 sd")
        ax.scatter(X[:, 0], y, color="k", zorder=3, s=18, label="data")
        for i, p in enumerate(pts[:, 0]):
            ax.axvline(p, color="C3", ls="--", lw=1, label="suggested" if i == 0 else None)
        ax.set_xlabel(names[0])
        ax.legend(fontsize=8)
    else:
        n = 60
        u = np.linspace(0, 1, n)
        U, V = np.meshgrid(u, u)
        g = np.zeros((n * n, d))
        g[:, 0], g[:, 1] = U.ravel(), V.ravel()
        if d > 2:
            g[:, 2:] = 0.5
        _, s = mixture_predictive(kernel, info["Xn"], info["yn"], g, info["hyper"])
        im = ax.pcolormesh(U * span[0] + b[0, 0], V * span[1] + b[1, 0], (s * y_sd).reshape(n, n), shading="auto")
        fig.colorbar(im, ax=ax, label="predictive sd")
        ax.scatter(X[:, 0], X[:, 1], color="w", edgecolor="k", s=25, label="data")
        ax.scatter(pts[:, 0], pts[:, 1], color="C3", marker="x", s=60, label="suggested")
        ax.set_xlabel(names[0]); ax.set_ylabel(names[1])
        ax.legend(fontsize=8)
    ax.set_title(f"suggestions ({info['criterion']})")
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out
