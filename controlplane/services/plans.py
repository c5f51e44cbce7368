"""What users can ask for: desktop plans from the one plans file (config/plans.yml), and projects'
operating systems and network pool (config/projects.yml); both shared with the playbooks."""
from __future__ import annotations

import dataclasses
import functools
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..config import ConfigError, Settings


@dataclass(frozen=True)
class Plan:
    name: str
    cores: int
    memory_mb: int
    template: str
    description: str = ""
    # Lifecycle policies (services/policies.py), in seconds; None: never.
    expires_after: int | None = None  # a desktop's lifetime: the default and the latest expiresAt
    idle_stop_after: int | None = None  # a RUNNING desktop nobody is connected to is stopped after this
    # The warm pool (services/pool.py): VMs kept cloned ahead of demand, and how they wait.
    pool_size: int = 0
    pool_power: str = "running"  # running: a create is RUNNING in seconds; stopped: it still boots


POOL_POWERS = ("running", "stopped")


def _pool(path: str, name: str, spec) -> dict:
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: plan {name!r}: pool must be a mapping (size, power)")
    size, power = spec.get("size", 0), str(spec.get("power", "running"))
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ConfigError(f"{path}: plan {name!r}: pool size must be a whole number, 0 or more")
    if power not in POOL_POWERS:
        raise ConfigError(f"{path}: plan {name!r}: pool power must be running or stopped, not {power!r}")
    return {"pool_size": size, "pool_power": power}


_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration_text(seconds: int) -> str:
    """30 minutes, 8 hours, 7 days, 2 weeks (the largest unit that divides it)."""
    for unit, size in (("week", 604800), ("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


def parse_duration(value) -> int | None:
    """Seconds from 90, "90s", "30m", "8h", "7d" or "2w"; None for None/"never"/"". ValueError otherwise."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "never", "none")):
        return None
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int):
        seconds = value
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"not a duration (like 90s, 30m, 8h, 7d): {value!r}")
        seconds = int(match.group(1)) * _UNIT[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"a duration must be positive: {value!r}")
    return seconds


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
            raise ConfigError(f"{path}: plan {name!r} needs integer cores, memory_mb and a template ({exc})") from None
        try:
            plans[name] = dataclasses.replace(plans[name], expires_after=parse_duration(spec.get("expires_after")),
                                              idle_stop_after=parse_duration(spec.get("idle_stop_after")))
        except ValueError as exc:
            raise ConfigError(f"{path}: plan {name!r}: expires_after and idle_stop_after must be durations "
                              f"(30m, 8h, 7d) or never ({exc})") from None
        plans[name] = dataclasses.replace(plans[name], **_pool(path, name, spec.get("pool")))
    if not plans:
        raise ConfigError(f"{path}: no plans defined")
    return plans


def load_plans(path: Path) -> dict[str, Plan]:
    return _load(str(path), path.stat().st_mtime)


DEFAULT_PLAN = "BASIC"


# ---- projects (config/projects.yml) ----------------------------------------------------------

@dataclass(frozen=True)
class ProjectsConfig:
    os_templates: dict[str, str]
    default_os: str
    network_pool: ipaddress.IPv4Network
    default_estimate_seconds: int


_config_cache: dict[Path, tuple[float, ProjectsConfig]] = {}


def projects_config(settings: Settings) -> ProjectsConfig:
    """config/projects.yml (CONTROLPLANE_PROJECTS_FILE), re-read when it changes."""
    path = Path(settings.projects_file)
    mtime = path.stat().st_mtime
    cached = _config_cache.get(path)
    if cached and cached[0] == mtime:
        return cached[1]
    data = yaml.safe_load(path.read_text()) or {}
    templates = {str(k): str(v) for k, v in (data.get("os_templates") or {}).items()}
    if not templates:
        raise ValueError(f"{path}: os_templates is empty")
    default_os = str(data.get("default_os") or next(iter(templates)))
    config = ProjectsConfig(os_templates=templates, default_os=default_os,
                            network_pool=ipaddress.ip_network(str(data.get("network_pool", "172.30.0.0/16"))),
                            default_estimate_seconds=int(data.get("default_estimate_seconds", 150)))
    _config_cache[path] = (mtime, config)
    return config
