"""Running a playbook with ansible-runner, the way AWX does it.

- One private data directory per run (mode 0700), removed in `finally`; env files are not
  written (secrets travel only in the child's environment).
- Extra vars from API input are data: every string is tagged `!unsafe`, so Jinja never runs on it.
- The event handler stays cheap: it maps a task-start event to (role, task file) for the caller
  and remembers the last failure; it returns False so runner keeps no event files.
- Each task's time is kept (`PlaybookResult.timings`): from its task-start event to the next one
  (or to the play's stats), by the events' own timestamps; `startup` is ansible-playbook's time
  before its first task (interpreter, inventory, playbook parsing). benchmarks/create.py reads them.
- `runner.status` (successful, failed, timeout, canceled) is mapped to a result in one place.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import ansible_runner
import yaml

from ..logs import redact

log = logging.getLogger(__name__)


@dataclass
class PlaybookResult:
    status: str  # successful | failed | timeout | canceled
    rc: int | None
    stats: dict = field(default_factory=dict)  # set_stats data (artifact_data)
    failed_task: str | None = None
    failure: str | None = None
    tasks: list[tuple[str, str, str]] = field(default_factory=list)  # (role, file, task name) in order
    # {role, file, task, action, start, seconds[, attempts]} per task, in order; start is from the run's start
    timings: list[dict] = field(default_factory=list)
    seconds: float | None = None  # the whole run's wall time
    startup: float | None = None  # from the run's start to the first task

    @property
    def ok(self) -> bool:
        return self.status == "successful"

    def reason(self) -> str:
        if self.status == "timeout":
            return "the playbook did not finish before its timeout"
        if self.status == "canceled":
            return "the playbook was canceled"
        if self.failure and self.failed_task and self.failed_task not in self.failure:
            return f"{self.failed_task}: {self.failure}"
        return self.failure or f"the playbook ended with status {self.status} (rc {self.rc})"


class _Unsafe(dict):
    """The extra vars mapping, tagged !unsafe as a whole: nothing inside is ever templated, and quoted
    strings stay strings (ansible-core 2.19 re-resolves a tagged *scalar* as if it were plain, so
    `!unsafe '0123'` would load as the integer 83, `!unsafe 'yes'` as True)."""


class _UnsafeDumper(yaml.SafeDumper):
    pass


_UnsafeDumper.add_representer(_Unsafe, lambda dumper, value: dumper.represent_mapping("!unsafe", dict(value)))


def _mark_unsafe(value):
    """Plain YAML-safe data (tuples become lists, str subclasses str), the top mapping tagged !unsafe."""
    def plain(v):
        if isinstance(v, str):
            return str(v)
        if isinstance(v, dict):
            return {k: plain(item) for k, item in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(item) for item in v]
        return v
    return _Unsafe(plain(value))


def _task_location(event_data: dict) -> tuple[str, str]:
    """(role, task file name) of a task event: ('proxmox_desktop', 'clone.yml')."""
    path = (event_data.get("task_path") or "").rsplit(":", 1)[0]
    role = event_data.get("role") or ""
    if not role and "/roles/" in path:
        role = path.split("/roles/", 1)[1].split("/", 1)[0]
    return role, os.path.basename(path)


def _message(res: dict) -> str:
    msg = res.get("msg") or res.get("reason") or res.get("stderr") or res.get("module_stderr") or ""
    if isinstance(msg, (list, dict)):
        msg = str(msg)
    return " ".join(str(msg).split())[:1000]


def _created(event: dict, fallback: float) -> float:
    """The event's own timestamp (ansible-runner's `created`, UTC) as epoch seconds."""
    from datetime import datetime, timezone
    try:
        return datetime.fromisoformat(event["created"]).replace(tzinfo=timezone.utc).timestamp()
    except (KeyError, TypeError, ValueError):
        return fallback


def run_playbook(ansible_dir: Path, playbook: str, inventory: Path, extravars: dict, env: dict[str, str],
                 timeout: int, secrets: list[str],
                 on_task: Callable[[str, str, str], None] | None = None) -> PlaybookResult:
    result = PlaybookResult(status="failed", rc=None)
    private = tempfile.mkdtemp(prefix="controlplane-run-")  # mkdtemp: mode 0700
    try:
        env_dir = Path(private, "env")
        env_dir.mkdir(mode=0o700)
        extravars_file = env_dir / "extravars"
        extravars_file.touch(mode=0o600)
        extravars_file.write_text(yaml.dump(_mark_unsafe(extravars), Dumper=_UnsafeDumper))

        started_wall, started = time.time(), time.monotonic()

        def close_last_task(at: float) -> None:
            if result.timings and result.timings[-1]["seconds"] is None:
                last = result.timings[-1]
                last["seconds"] = round(max(0.0, at - started_wall - last["start"]), 4)

        def handle(event: dict) -> bool:
            kind = event.get("event")
            data = event.get("event_data") or {}
            if kind == "playbook_on_task_start":
                role, filename = _task_location(data)
                task = redact(data.get("task") or "", secrets)  # a templated task name may show a secret
                result.tasks.append((role, filename, task))
                at = _created(event, time.time())
                close_last_task(at)
                result.timings.append({"role": role, "file": filename, "task": task,
                                       "action": data.get("task_action") or "",
                                       "start": round(at - started_wall, 4), "seconds": None})
                if on_task is not None:
                    try:
                        on_task(role, filename, task)
                    except Exception:
                        log.exception("task event handler failed")
            elif kind in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
                result.failed_task = redact(data.get("task") or "", secrets)
                result.failure = redact(_message(data.get("res") or {}), secrets)
            elif kind == "playbook_on_stats":
                result.stats = dict(data.get("artifact_data") or {})
                close_last_task(_created(event, time.time()))
            if kind in ("runner_on_ok", "runner_on_failed") and result.timings:
                attempts = (data.get("res") or {}).get("attempts")  # an `until` loop's polls
                if isinstance(attempts, int):
                    result.timings[-1]["attempts"] = attempts
            return False  # keep no job_events files

        bin_dir = os.path.dirname(sys.executable)
        child_env = {
            **env,
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin"),
            "ANSIBLE_CONFIG": str(Path(ansible_dir, "ansible.cfg")),
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
        }
        runner = ansible_runner.run(
            private_data_dir=private,
            project_dir=str(ansible_dir),
            playbook=str(Path(ansible_dir, "playbooks", playbook)),
            inventory=str(inventory),
            envvars=child_env,
            suppress_env_files=True,
            event_handler=handle,
            quiet=True,
            timeout=timeout,
        )
        result.status, result.rc = runner.status, runner.rc
        result.seconds = round(time.monotonic() - started, 4)
        close_last_task(time.time())  # no stats event (a failed or stopped run)
        if result.timings:
            result.startup = result.timings[0]["start"]
        if not result.ok and not result.failure:
            # No task failed: a syntax error, a missing inventory, ansible not found ... stdout says.
            try:
                tail = [line for line in runner.stdout.read().splitlines() if line.strip()][-3:]
            except Exception:
                tail = []
            result.failure = redact(" ".join(" ".join(tail).split())[:500], secrets) or None
        return result
    finally:
        shutil.rmtree(private, ignore_errors=True)
