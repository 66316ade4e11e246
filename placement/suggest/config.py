"""SuggestConfig: every setting of `placement suggest`, checked when it is made
(conf/suggest.yaml documents each key)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from placement.errors import PlacementError

SUGGEST_SAMPLERS = ("bayes", "nuts", "map")


@dataclass(frozen=True)
class SuggestConfig:
    k: int = 5
    criterion: str = "expected_total_variance"
    kernel: str = "matern52"
    num_hyper: int = 32
    num_fantasies: int = 16
    grid: int = 256
    restarts: int = 8
    steps: int = 150
    learning_rate: float = 0.02
    seed: int = 0
    sampler: str = "bayes"  # "bayes": posterior by importance sampling; "nuts": by NUTS; "map": the mode only
    ell_prior: str = "fixed"  # length-scale prior: "fixed" (InverseGamma mean 0.3, sd 0.2 of the box) | "spacing"
    noise_sd: float = 0.5  # HalfNormal sd of the noise sd (standardised y)
    alpha: float = 2.0  # ratquad kernel's shape
    period: object = None  # periodic kernel's period in the data's units (a number, or one per input column)
    max_seconds: float = 0.0  # time budget of the whole request (0 = none): the best batch so far, marked cut short
    max_memory: object = None  # bytes, "8GB", a share of the available memory (<= 1), or None/"auto" (80%)
    progress: object = "auto"  # auto (bar on a terminal or in a notebook, else a line every 5 s) | bar | lines | off
    approx: str = "exact"  # the GP: "exact" (n x n per draw) | "hsgp" (pm.gp.HSGP's basis, m^d x m^d per draw)
    hsgp_m: int = 40  # approx=hsgp: basis functions per input column (as conf/problem/hsgp.yaml's m)
    hsgp_c: float = 2.0  # approx=hsgp: boundary factor, L = c x the box's half-width (as its c)

    def __post_init__(self):
        """Coerce and check every setting up front, so a bad override fails in milliseconds
        with one message instead of deep inside the search."""
        def num(name, cast, low, what):
            v = getattr(self, name)
            try:
                if isinstance(v, bool) or (cast is int and float(v) != int(float(v))):
                    raise ValueError
                v = cast(float(v)) if cast is int else cast(v)
            except (TypeError, ValueError, OverflowError):
                raise PlacementError(f"{name} must be {what}; got {v!r}.") from None
            if not np.isfinite(v) or v < low:
                raise PlacementError(f"{name} must be {what}; got {v!r}.")
            object.__setattr__(self, name, v)

        num("k", int, 1, "a whole number >= 1 (the number of points to suggest)")
        num("num_hyper", int, 1, "a whole number >= 1")
        num("num_fantasies", int, 1, "a whole number >= 1")
        num("grid", int, 2, "a whole number >= 2")
        num("restarts", int, 1, "a whole number >= 1")
        num("steps", int, 1, "a whole number >= 1")
        num("seed", int, 0, "a whole number >= 0")
        num("learning_rate", float, 1e-12, "a positive number")
        from placement.suggest.criteria import CRITERIA

        if self.criterion not in CRITERIA:
            raise PlacementError(f"unknown criterion {self.criterion!r}; choose one of {', '.join(CRITERIA)}.")
        if self.sampler not in SUGGEST_SAMPLERS:
            raise PlacementError(f"sampler must be one of {', '.join(SUGGEST_SAMPLERS)} for suggest; got {self.sampler!r}.")
        from placement.gpjax import KERNEL_CLASSES

        if self.kernel not in KERNEL_CLASSES:
            raise PlacementError(f"unknown kernel {self.kernel!r}; choose one of {', '.join(sorted(KERNEL_CLASSES))}.")
        if self.kernel == "periodic" and self.period is None:
            raise PlacementError("the periodic kernel needs a period in the data's units, e.g. period=5.")
        num("alpha", float, 1e-12, "a positive number")
        num("noise_sd", float, 1e-12, "a positive number")
        from placement.suggest.hyper import ELL_PRIORS

        if self.ell_prior not in ELL_PRIORS:
            raise PlacementError(f"ell_prior must be one of {', '.join(ELL_PRIORS)}; got {self.ell_prior!r}.")
        if self.approx not in ("exact", "hsgp"):
            raise PlacementError(f"approx must be exact or hsgp; got {self.approx!r}.")
        num("hsgp_m", int, 1, "a whole number >= 1 (basis functions per input column)")
        num("hsgp_c", float, 1.0 + 1e-9, "a number > 1 (the boundary L = c x the box's half-width)")
        if self.approx == "hsgp":
            from placement.suggest.hsgp import check

            check(self.kernel, self.sampler, self.hsgp_m, self.hsgp_c)
        from placement import budget, memory, progress

        budget.check_seconds(self.max_seconds)
        object.__setattr__(self, "max_seconds", float(self.max_seconds or 0.0))
        memory.limit(self.max_memory)  # checks the setting
        progress.resolve(self.progress)

