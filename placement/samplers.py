"""The sampler interface and its registry.

A sampler is a few pure functions over an explicit state (a NamedTuple), built once per
model and configuration, blackjax style:

    init(key, X, y) -> state
    draw(key, state, X, y) -> (state, Sample)          # draws (or grid points) at design X
    extend(key, state, X, y) -> (state, Sample)        # more draws at the same X (optional)
    plug_in(state, X, y) -> (F, dF/dX)                  # a deterministic answer (optional, MAP)

The engine (placement/engine.py) is glue: it applies the gradient identity to what
``draw`` returns, adds ``extend`` batches until a precision target is met, and runs the
gradient self-check. Each sampler lives in its own module (importance, nuts, reweight,
quadrature, laplace) and registers a builder for its config type::

    @register(MyConfig)
    def build(jm: JaxModel, cfg: MyConfig) -> Sampler: ...

so adding a sampler means one new module and one yaml in conf/sampler/ whose ``_target_``
is the config class (instantiating it imports the module, which registers it). A config
may define ``safer(level) -> (config, description)``: the settings a retry uses.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from placement.errors import PlacementError


class Sampler(NamedTuple):
    name: str  # "importance", "nuts", ... (diagnostics["sampler"])
    init: Callable
    draw: Callable
    extend: Callable | None = None
    plug_in: Callable | None = None


_REGISTRY: dict[type, Callable[[Any, Any], Sampler]] = {}


def register(config_type: type):
    """Class decorator-style registration of ``build(jm, cfg) -> Sampler`` for a config type."""

    def deco(build):
        _REGISTRY[config_type] = build
        return build

    return deco


def build(jm, cfg) -> Sampler:
    """The sampler for ``cfg``: the builder registered for its type (or its nearest base)."""
    for t in type(cfg).__mro__:
        if t in _REGISTRY:
            return _REGISTRY[t](jm, cfg)
    known = ", ".join(sorted(t.__module__ + "." + t.__name__ for t in _REGISTRY))
    raise PlacementError(f"unknown sampler configuration {type(cfg).__name__}; registered: {known}.")


def safer(cfg, level: int) -> tuple[Any, str]:
    """The config a retry at ``level`` (1, 2, ...) uses, or (None, reason) if there is none."""
    fn = getattr(cfg, "safer", None)
    return fn(level) if fn is not None else (None, "no safer setting for this sampler")


def as_dict(info) -> dict:
    """A sampler's typed info (NamedTuple) or a dict, as a plain dict."""
    return dict(info._asdict()) if hasattr(info, "_asdict") else dict(info)
