"""Settings from the config groups in ``conf/``: one path for the command line and the API.

The CLI gets its configuration from Hydra; the Python API composes the same root config
(``gradient`` or ``run``) with the named group options and sets the keywords it was given, so
both start from the same defaults. The functions below turn a composed config into the
objects the engine and the outer loop take (sampler config, optax optimizer, constraints,
loop settings). Every bad name or key raises one ``PlacementError`` that says what to fix,
before anything is compiled.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any

from placement.errors import PlacementError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def options(group: str) -> list[str]:
    """The options of a config group (the yaml files in ``conf/<group>/``)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@contextlib.contextmanager
def _hydra():
    """Hydra's compose API with our config folder, leaving any global Hydra state as it was."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    gh = GlobalHydra.instance()
    saved = gh.hydra
    gh.clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="placement"):
            yield
    finally:
        gh.hydra = saved


def compose(root: str, choices: dict[str, str] | None = None):
    """The root config (``gradient`` or ``run``) with group options chosen, e.g.
    ``{"sampler": "nuts"}``, exactly as ``placement <root> sampler=nuts`` composes it."""
    from hydra import compose as hydra_compose

    overrides = []
    for group, name in (choices or {}).items():
        known = options(group)
        if name not in known:
            raise PlacementError(f"unknown {group} {name!r}; choose one of {', '.join(known)}.")
        overrides.append(f"{group}={name}")
    with _hydra():
        return hydra_compose(config_name=root, overrides=overrides)


def set_keys(node, values: dict, where: str) -> None:
    """Set existing keys of a config node; an unknown key names the ones there are."""
    from omegaconf import OmegaConf

    for key, value in values.items():
        if key not in node or key.startswith("_"):
            known = ", ".join(k for k in node if not str(k).startswith("_"))
            raise PlacementError(f"unknown {where} option {key!r}; the options are: {known}.")
        OmegaConf.update(node, key, _plain(value), merge=False)


def _plain(value):
    import numpy as np

    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    return value


def instantiate(node, where: str):
    """``hydra.utils.instantiate`` with a config class's refusal turned into its own message."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    try:
        return hydra_instantiate(node)
    except InstantiationException as e:
        cause = e.__cause__
        while cause is not None and not isinstance(cause, PlacementError):
            cause = cause.__cause__
        if cause is not None:
            raise PlacementError(str(cause)) from None
        raise PlacementError(f"{where}: {str(e).splitlines()[-1]}") from None


def sampler_config(sampler: Any = "importance", root: str = "gradient", **values):
    """A sampler config object: a name from ``conf/sampler/`` with keywords on top of its yaml
    defaults, or a config object (keywords then replace its fields)."""
    if not isinstance(sampler, str):
        named_tuple = isinstance(sampler, tuple) and hasattr(sampler, "_fields")  # e.g. laplace.MAPConfig
        if not (dataclasses.is_dataclass(sampler) or named_tuple):
            raise PlacementError(f"sampler must be a name ({', '.join(options('sampler'))}) or a sampler config "
                                 f"object such as placement.importance.ISConfig; got {type(sampler).__name__}.")
        try:
            if not values:
                return sampler
            return sampler._replace(**values) if named_tuple else dataclasses.replace(sampler, **values)
        except (TypeError, ValueError):
            known = ", ".join(sampler._fields if named_tuple else (f.name for f in dataclasses.fields(sampler)))
            raise PlacementError(f"unknown sampler option among {', '.join(values)}; {type(sampler).__name__} "
                                 f"takes: {known}.") from None
    cfg = compose(root, {"sampler": sampler})
    set_keys(cfg.sampler, values, f"sampler={sampler}")
    return instantiate(cfg.sampler, "sampler")


def retry_config(values) -> Any:
    """``RetryConfig`` from the ``retry:`` block (a mapping)."""
    from omegaconf import OmegaConf

    from placement.retry import RetryConfig

    if values is not None and OmegaConf.is_config(values):
        values = OmegaConf.to_container(values, resolve=True)
    if isinstance(values, RetryConfig):
        return values
    try:
        return RetryConfig(**dict(values or {}))
    except TypeError as e:
        raise PlacementError(f"retry: {e}; see conf/run.yaml for the keys.") from None


def constraints_from(values, domain=None):
    """``Constraints`` from the ``constraints:`` block; bounds left at null default to the
    problem's domain ([lo, hi] or one [lo, hi] per column) when there is one."""
    from omegaconf import OmegaConf

    from placement.constraints import Constraints

    if isinstance(values, Constraints):
        return values
    if values is not None and OmegaConf.is_config(values):
        values = OmegaConf.to_container(values, resolve=True)
    values = dict(values or {})
    known = ("lower", "upper", "min_spacing", "fixed", "max_step")
    bad = [k for k in values if k not in known]
    if bad:
        raise PlacementError(f"unknown constraints option {bad[0]!r}; the options are: {', '.join(known)}.")
    lo, hi = values.get("lower"), values.get("upper")
    if domain is not None and OmegaConf.is_config(domain):
        domain = OmegaConf.to_container(domain, resolve=True)
    if domain is not None:
        lo = _domain_end(domain, 0) if lo is None else lo
        hi = _domain_end(domain, 1) if hi is None else hi
    try:
        return Constraints(lower=lo, upper=hi, min_spacing=float(values.get("min_spacing") or 0.0),
                           fixed=tuple(int(i) for i in (values.get("fixed") or ())), max_step=values.get("max_step"))
    except (TypeError, ValueError) as e:
        raise PlacementError(f"constraints: {e}; min_spacing is a number, fixed a list of point indices.") from None


def _domain_end(domain, i):
    import numpy as np

    box = np.atleast_2d(np.asarray(domain, dtype=float))
    return box[:, i].tolist() if box.shape[0] > 1 else float(box[0, i])


def loop_config(cfg):
    """``LoopConfig`` from a composed ``run`` config."""
    from placement.loop import LoopConfig

    return LoopConfig(steps=int(cfg.steps), direction=str(cfg.objective.direction), grad_tol=float(cfg.stop.grad_tol),
                      patience=int(cfg.stop.patience), retry=retry_config(cfg.get("retry")))
