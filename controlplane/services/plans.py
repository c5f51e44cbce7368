"""Desktop plans from the one plans file (config/plans.yml), shared with the playbooks."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..config import ConfigError


@dataclass(frozen=True)
class Plan:
    name: str
    cores: int
    memory_mb: int
    template: str
    description: str = ""


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime: float) -> dict[str, Plan]:
    with open(path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh) or {}
    plans = {}
    for name, spec in (raw.get("plans") or {}).items():
        try:
            plans[name] = Plan(name=name, cores=int(spec["cores"]), memory_mb=int(spec["memory_mb"]),
                               template=str(spec["template"]), description=str(spec.get("description", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: plan {name!r} needs integer cores, memory_mb and a template ({exc})")
    if not plans:
        raise ConfigError(f"{path}: no plans defined")
    return plans


def load_plans(path: Path) -> dict[str, Plan]:
    return _load(str(path), path.stat().st_mtime)


DEFAULT_PLAN = "BASIC"
