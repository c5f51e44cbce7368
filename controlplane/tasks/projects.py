"""RQ job functions for projects: thin names over the engine (tasks/engine.py)."""
from __future__ import annotations

from .engine import run_job


def run_project_job(project_id: int, operation: str, force: bool = False) -> dict:
    return run_job("project", project_id, operation, force)
