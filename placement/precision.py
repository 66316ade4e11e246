"""Precision on demand: how precise an estimate is, and how many more draws a target needs.

The precision of dF/dX is its relative standard error |grad_se| / |grad| (Euclidean norms
over all components), or the absolute |grad_se|. Monte Carlo standard errors fall like
1/sqrt(N), so a target r reached from r_now at N draws needs about N (r_now / r)^2 draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from placement.errors import PlacementError
from placement.estimator import GradientEstimate


@dataclass(frozen=True)
class Target:
    """rel_se: wanted |grad_se| / |grad| (0 = none); abs_se: wanted |grad_se| (0 = none);
    max_draws: stop adding draws beyond this many; max_seconds: or after this long (0 = no limit);
    ess_floor: wanted importance-weight ESS, for weighted draws whose weights are thin but sound
    (0 = none; see ``_ess_wanted``)."""

    rel_se: float = 0.0
    abs_se: float = 0.0
    max_draws: int = 1 << 20
    max_seconds: float = 0.0
    ess_floor: float = 0.0

    def __post_init__(self):
        if self.rel_se < 0 or self.abs_se < 0 or self.max_seconds < 0 or self.ess_floor < 0:
            raise PlacementError("sampler.rel_se, sampler.abs_se, sampler.max_seconds and sampler.ess_floor must be >= 0.")
        if self.max_draws < 1:
            raise PlacementError("sampler.max_draws must be at least 1.")

    @property
    def active(self) -> bool:
        return self.rel_se > 0 or self.abs_se > 0 or self.ess_floor > 0


def target_of(cfg) -> Target:
    """The precision target in a sampler config (fields rel_se, abs_se, max_draws, max_seconds,
    ess_floor)."""
    return Target(float(getattr(cfg, "rel_se", 0.0)), float(getattr(cfg, "abs_se", 0.0)),
                  int(getattr(cfg, "max_draws", 1 << 20)), float(getattr(cfg, "max_seconds", 0.0)),
                  float(getattr(cfg, "ess_floor", 0.0)))


def _ess(est: GradientEstimate) -> float | None:
    """The importance weights' ESS, or None for unweighted draws."""
    v = est.diagnostics.get("ess_weights")
    return None if v is None else float(v)


def _ess_wanted(est: GradientEstimate, target: Target) -> bool:
    """Whether more sets from the same proposal should lift the weight ESS to the floor: it is
    under it, within 8x, and the weights' Pareto k is at most 0.7. Weights thinner than that
    need a new proposal (the retry's job), not up to max_draws more draws from this one."""
    ess = _ess(est)
    if target.ess_floor <= 0 or ess is None or ess >= target.ess_floor:
        return False
    k = est.diagnostics.get("pareto_k")
    return 8 * ess >= target.ess_floor and (k is None or not np.isfinite(k) or k <= 0.7)


def rel_se(est: GradientEstimate) -> float:
    """|grad_se| / |grad| (inf when the gradient is zero or not finite)."""
    g = float(np.linalg.norm(est.grad))
    se = float(np.linalg.norm(est.grad_se))
    return se / g if g > 0 and np.isfinite(g) and np.isfinite(se) else float("inf")


def describe(est: GradientEstimate, target: Target) -> str:
    """Progress text: the relative SE (and the weight ESS under an ESS floor) against the target."""
    out = f"relative SE {rel_se(est):.3g}" + (f" (target {target.rel_se:g})" if target.rel_se > 0 else "")
    if target.ess_floor > 0 and _ess(est) is not None:
        out += f", weight ESS {_ess(est):.0f} (floor {target.ess_floor:g})"
    return out


def reached(est: GradientEstimate, target: Target) -> bool:
    se = float(np.linalg.norm(est.grad_se))
    ok = np.isfinite(se)
    if target.rel_se > 0:
        ok = ok and rel_se(est) <= target.rel_se
    if target.abs_se > 0:
        ok = ok and se <= target.abs_se
    if _ess_wanted(est, target):
        ok = False
    return bool(ok)


def draws_needed(est: GradientEstimate, n: int, target: Target) -> int:
    """Total draws the target needs, from the precision at n draws (10% margin)."""
    ratios = []
    if target.rel_se > 0:
        ratios.append(rel_se(est) / target.rel_se)
    if target.abs_se > 0:
        ratios.append(float(np.linalg.norm(est.grad_se)) / target.abs_se)
    if _ess_wanted(est, target):  # the ESS grows like N: as an SE ratio, its square root
        ratios.append(float(np.sqrt(target.ess_floor / max(_ess(est), 1e-300))))
    r = max(ratios) if ratios else 1.0
    if not np.isfinite(r):
        return 2 * n
    return int(np.ceil(n * 1.1 * r**2))


def record(est: GradientEstimate, target: Target, draws: int, seconds: float) -> None:
    """Put what was reached into the estimate's diagnostics."""
    d = est.diagnostics
    d["rel_se"] = rel_se(est)
    if target.active:
        d["target_rel_se"] = target.rel_se
        d["target_abs_se"] = target.abs_se
        d["target_met"] = reached(est, target)
        if not d["target_met"]:
            limit = d.get("target_stop", "max_draws")
            ess = f", weight ESS {_ess(est):.0f} (floor {target.ess_floor:g})" if target.ess_floor > 0 and _ess(est) else ""
            d["target_note"] = (f"precision target missed: relative SE {d['rel_se']:.3g}{ess} after {draws} draws "
                                f"({seconds:.1f} s), stopped by sampler.{limit}; raise it or relax sampler.rel_se.")
