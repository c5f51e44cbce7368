"""Where the lab keeps its state (var/lab by default; CONTROLPLANE_LAB_DIR overrides)."""
from __future__ import annotations

import os
from pathlib import Path

from ..config import REPO_ROOT


def lab_dir() -> Path:
    return Path(os.environ.get("CONTROLPLANE_LAB_DIR") or REPO_ROOT / "var" / "lab")


def lab_env_file() -> Path:
    return lab_dir() / "lab.env"


def endpoints_file() -> Path:
    return lab_dir() / "endpoints.json"
