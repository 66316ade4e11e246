"""Outer optimizers: optax chains built from the ``optimizer/`` config group."""

from __future__ import annotations

import optax

from placement.errors import PlacementError

BASE = {
    "adam": lambda lr, kw: optax.adam(lr, **kw),
    "sgd": lambda lr, kw: optax.sgd(lr, **kw),
    "momentum": lambda lr, kw: optax.sgd(lr, momentum=kw.pop("momentum", 0.9), nesterov=kw.pop("nesterov", False), **kw),
    "rmsprop": lambda lr, kw: optax.rmsprop(lr, **kw),
    "adamw": lambda lr, kw: optax.adamw(lr, **kw),
}


def schedule(lr: float, kind: str = "constant", steps: int = 50, warmup: int = 0, end_factor: float = 0.1):
    if kind == "constant":
        return lr
    if kind == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0 if warmup else lr, lr, max(warmup, 1) if warmup else 1, max(steps, 2), lr * end_factor)
    if kind == "exponential":
        return optax.exponential_decay(lr, max(steps, 1), end_factor)
    raise PlacementError(f"unknown schedule {kind!r}; choose constant, cosine or exponential.")


def make_optimizer(name: str, learning_rate: float, schedule_kind: str = "constant", clip_norm: float | None = None,
                   steps: int = 50, warmup: int = 0, end_factor: float = 0.1, **kwargs) -> optax.GradientTransformation:
    """Gradient clipping (global norm), then the named optimizer with a learning-rate schedule."""
    if name not in BASE:
        raise PlacementError(f"unknown optimizer {name!r}; choose one of {', '.join(BASE)}.")
    if not learning_rate > 0:
        raise PlacementError(f"optimizer.learning_rate must be positive; got {learning_rate}.")
    lr = schedule(learning_rate, schedule_kind, steps, warmup, end_factor)
    parts = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
    parts.append(BASE[name](lr, dict(kwargs)))
    return optax.chain(*parts)
