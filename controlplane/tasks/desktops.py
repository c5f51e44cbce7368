"""RQ job functions for desktops: thin names over the engine (tasks/engine.py)."""
from __future__ import annotations

from .engine import run_job


def run_desktop_job(desktop_id: int, operation: str, force: bool = False) -> dict:
    return run_job("desktop", desktop_id, operation, force)
