"""Running a playbook with ansible-runner, the way AWX does it.

- One private data directory per run (mode 0700), removed in `finally`; env files, stdout and
  fact cache files are not written. While the run lives, its folder is locked (by the worker, and
  by ansible-playbook and its forks through launch.py); a folder nobody locks is a killed run's
  leftover, which `remove_leftover_runs` deletes (at worker start and on every reaper pass).
- The child's environment is an allow-list (`_INHERITED`: locale, home, temp dir, CA bundle,
  proxies, the operator's ANSIBLE_*), plus what the caller gives; never the rest of the worker's
  environment (its JWT, share and auth-json secrets, model keys, database URL ...).
- ansible-runner writes the child's environment to `artifacts/<id>/command`, so the secrets a
  playbook needs (the caller's `env` entries whose value holds one of `secrets`, or whose name
  says PASSWORD, SECRET, TOKEN or KEY; inherited ones named so, or URLs with a password, such as
  a proxy's) are not in it: they go through a named pipe that launch.py reads and removes before
  it becomes ansible-playbook. Modules are pipelined (no module file with its arguments in
  ~/.ansible/tmp). No secret is written to disk by the run itself.
- Extra vars from API input are data: every string is tagged `!unsafe`, so Jinja never runs on it.
- The event handler stays cheap: it maps a task-start event to (role, task file) for the caller
  and remembers the last failure and the last lines of output; it returns False so runner keeps
  no event files (only its callback's short-lived `-partial.json` ones, read and removed at once).
- Each task's time is kept (`PlaybookResult.timings`): from its task-start event to the next one
  (or to the play's stats), by the events' own timestamps; `startup` is ansible-playbook's time
  before its first task (interpreter, inventory, playbook parsing). benchmarks/create.py reads them.
- `runner.status` (successful, failed, timeout, canceled) is mapped to a result in one place.
"""
from __future__ import annotations

import collections
import fcntl
import json
import logging
import os
import re
import shutil
import stat
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml
from ansible_runner import interface as runner_interface

from ..logs import redact
from . import launch

log = logging.getLogger(__name__)

# What a playbook inherits from the worker's environment: what Python, ansible and the modules'
# HTTP clients need. Everything else the worker has stays out; what a playbook needs, the caller
# gives (Settings.playbook_env).
_INHERITED = frozenset({"HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR",
                        "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
                        "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"})
_INHERITED_PREFIXES = ("LC_", "ANSIBLE_")
# What ansible-runner sets for its event callback.
_RUNNER_SETS = frozenset({"AWX_ISOLATED_DATA_DIR", "RUNNER_OMIT_EVENTS", "RUNNER_ONLY_FAILED_EVENTS",
                          "ORIGINAL_STDOUT_CALLBACK"})
# An env entry with such a name is passed as a secret even when `secrets` does not list its value.
_SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|KEY", re.IGNORECASE)
_URL_CREDENTIALS = re.compile(r"://[^/\s@]*:[^/\s@]*@")  # scheme://user:password@host
_LAUNCHER = str(Path(__file__).with_name("launch.py"))

RUN_PREFIX = "controlplane-run-"  # a run's private data directory, in tempfile.gettempdir()
_NEW_PREFIX = ".controlplane-new-"  # the same before it is locked and renamed
_LOCKED = ".locked-while-running"  # in every folder made so (not in those of older versions)
CANCEL_POLL = 1  # seconds
_warm_socket: str | None = None  # this worker's warm Ansible process (runner/warm.py), if it has one


def use_warm(socket_path: str | None) -> None:
    """Runs from this process (and the work horses it forks) go through the warm Ansible process
    listening at `socket_path` (None: every run starts ansible-playbook afresh)."""
    global _warm_socket
    _warm_socket = socket_path


def _private_dir() -> tuple[str, int]:
    """A new private data directory (mode 0700) and a descriptor holding a shared lock on it. It
    appears under its RUN_PREFIX name already locked, so remove_leftover_runs never takes a live one."""
    staging = tempfile.mkdtemp(prefix=_NEW_PREFIX)  # mkdtemp: mode 0700
    fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        os.close(os.open(os.path.join(staging, _LOCKED), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        private = os.path.join(os.path.dirname(staging), RUN_PREFIX + os.path.basename(staging)[len(_NEW_PREFIX):])
        os.rename(staging, private)  # a unique name: staging's random part
    except BaseException:
        os.close(fd)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return private, fd


def _last_change(path: str) -> float:
    """The newest modification time in the folder (a running playbook keeps adding event files)."""
    newest = os.lstat(path).st_mtime
    for folder, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                newest = max(newest, os.lstat(os.path.join(folder, name)).st_mtime)
            except OSError:
                pass
    return newest


def remove_leftover_runs(root: str | None = None, unlocked_after: float | None = None) -> list[str]:
    """Delete the private data directories of runs nobody holds any more: a worker (or its work
    horse, and the ansible-playbook it started) killed mid-run leaves its folder behind, with the
    extra vars and whatever the run had written. A live run's folder is locked (by its worker and
    by its playbook's processes) and kept. A folder an older version made (never locked: it may be
    a live run of a worker not yet upgraded) goes only when nothing in it changed for
    `unlocked_after` seconds (never when None). Only this user's folders named by run_playbook, in
    `root` (default: tempfile.gettempdir(), where run_playbook makes them). Returns their names."""
    root = root or tempfile.gettempdir()
    removed = []
    try:
        entries = list(os.scandir(root))
    except OSError as exc:
        log.warning("could not look for leftover playbook runs in %s: %s", root, exc)
        return removed
    for entry in entries:
        if not entry.name.startswith(RUN_PREFIX):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                continue
            fd = os.open(entry.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live run's
            held = os.fstat(fd)
            try:
                now = os.lstat(entry.path)
            except OSError:
                continue  # removed meanwhile
            if (held.st_dev, held.st_ino) != (now.st_dev, now.st_ino):
                continue  # replaced meanwhile: not the folder that was found unlocked
            if not os.path.lexists(os.path.join(entry.path, _LOCKED)) and (
                    unlocked_after is None or time.time() - _last_change(entry.path) < unlocked_after):
                continue
            shutil.rmtree(entry.path, ignore_errors=True)
            if not os.path.lexists(entry.path):
                removed.append(entry.name)
        finally:
            os.close(fd)
    return removed


def _split_env(env: dict[str, str], secrets: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """(plain, secret): the caller's entries whose value holds a secret, or whose name looks like
    one, are secret."""
    plain, secret = {}, {}
    for key, value in env.items():
        value = str(value)
        is_secret = bool(_SECRET_NAME.search(key)) or any(s and s in value for s in secrets)
        (secret if is_secret else plain)[key] = value
    return plain, secret


def _child_env(prepared: dict[str, str], given: dict[str, str],
               secrets: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """ansible-runner's environment for the child (the worker's whole environment, updated) cut down
    to the allow-list, the caller's entries and what ansible-runner sets; no value holding a secret.
    (plain, secret): what it inherits that looks like a credential (by its name, or a URL with a
    password, such as a proxy's) is secret."""
    plain, secret = {}, {}
    for key, value in prepared.items():
        value = str(value)
        allowed = key in given or key in _INHERITED or key in _RUNNER_SETS or key.startswith(_INHERITED_PREFIXES)
        if not allowed or any(s and s in value for s in secrets):
            continue
        inherited = key not in given and os.environ.get(key) == value
        credential = inherited and (_SECRET_NAME.search(key) or _URL_CREDENTIALS.search(value))
        (secret if credential else plain)[key] = value
    return plain, secret


def _send_secrets(private: str, values: dict[str, str]) -> tuple[str, int]:
    """A named pipe in the private folder holding `values` (one line of JSON) for launch.py, and the
    descriptor that keeps it open (closing it drops what was not read). Nothing reaches the disk."""
    path = os.path.join(private, "secrets.fifo")
    os.mkfifo(path, 0o600)
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)  # a reader and a writer: neither open blocks
    try:
        data = (json.dumps(values) + "\n").encode()
        if len(data) > 60000:
            raise ValueError("the playbook's secrets are too large for the pipe")
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]  # BlockingIOError if the pipe is full: a clear failure
    except BaseException:
        os.close(fd)
        raise
    return path, fd


@dataclass
class PlaybookResult:
    status: str  # successful | failed | timeout | canceled
    rc: int | None
    stats: dict = field(default_factory=dict)  # set_stats data (artifact_data)
    failed_task: str | None = None
    failed_role: str | None = None  # the role of the first task that failed ("" for the playbook's own)
    failure: str | None = None
    tasks: list[tuple[str, str, str]] = field(default_factory=list)  # (role, file, task name) in order
    # {role, file, task, action, start, seconds[, attempts]} per task, in order; start is from the run's start
    timings: list[dict] = field(default_factory=list)
    seconds: float | None = None  # the whole run's wall time
    startup: float | None = None  # from the run's start to the first task
    warm: bool = False  # ansible-playbook was a fork of the worker's warm Ansible process

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


# Complexity above 15 (C901): one run: warm or cold, its timeout, cancel and the stats it reads back.
def run_playbook(ansible_dir: Path, playbook: str, inventory: Path, extravars: dict, env: dict[str, str],  # noqa: C901
                 timeout: int, secrets: list[str],
                 on_task: Callable[[str, str, str], None] | None = None, niceness: int = 0,
                 cancel: Callable[[], bool] | None = None) -> PlaybookResult:
    """Run the playbook. `cancel`, when given, is asked about once a second and at every line of
    output: once it says True, the run is stopped (ansible-runner kills ansible-playbook's process
    group; a warm run's monitor kills what the run started) and the result's status is canceled."""
    if cancel is not None and cancel():
        return PlaybookResult(status="canceled", rc=None)
    result = PlaybookResult(status="failed", rc=None)
    private, lock = _private_dir()
    secrets_fd = None
    output = collections.deque(maxlen=20)  # the last lines ansible-playbook printed (no stdout file)
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
            if event.get("stdout"):
                output.extend(line for line in str(event["stdout"]).splitlines() if line.strip())
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
                if result.failed_role is None:  # the step that failed first (a rescue's report fails after it)
                    result.failed_role = _task_location(data)[0]
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
        plain_env, secret_env = _split_env(env, secrets)
        given = {
            **plain_env,
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin"),
            "ANSIBLE_CONFIG": str(Path(ansible_dir, "ansible.cfg")),
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
            # Modules get their code and arguments on stdin: without pipelining, ansible writes each
            # module with its arguments (api_password ...) to ~/.ansible/tmp, left there if the run is killed.
            "ANSIBLE_PIPELINING": "True",
        }
        if _warm_socket:
            given[launch.WARM_SOCKET] = _warm_socket
        if niceness > 0:  # launch.py lowers the run's CPU priority (a warm-pool fill, say)
            given[launch.NICE] = str(niceness)
        runner = runner_interface.init_runner(
            private_data_dir=private,
            project_dir=str(ansible_dir),
            playbook=str(Path(ansible_dir, "playbooks", playbook)),
            inventory=str(inventory),
            envvars=given,
            suppress_env_files=True,  # no env/envvars, env/passwords ...
            fact_cache_type="memory",  # no artifacts/<id>/fact_cache
            event_handler=handle,
            cancel_callback=cancel,
            quiet=True,
            timeout=timeout,
        )
        # ansible-runner seeds the child's environment with the worker's whole environment, and
        # writes it to artifacts/<id>/command: keep only the allow-list, and start ansible-playbook
        # through launch.py, which adds the secrets from a pipe.
        runner.config.env, inherited_secrets = _child_env(runner.config.env, given, secrets)
        secret_env = {**inherited_secrets, **secret_env}
        # No artifacts/<id>/stdout and stderr (a task's output may hold anything). Set here: prepare()
        # resets the option from env/settings, which is not written.
        runner.config.suppress_output_file = True
        runner.config.pexpect_timeout = CANCEL_POLL  # how often a quiet run asks `cancel` (and checks its timeout)
        launcher = [sys.executable, "-I", "-S", _LAUNCHER, "--dir", private]
        if secret_env:
            fifo, secrets_fd = _send_secrets(private, secret_env)
            launcher += ["--secrets", fifo]
        runner.config.command = [*launcher, "--", *runner.config.command]
        runner.run()
        result.status, result.rc = runner.status, runner.rc
        result.warm = os.path.exists(os.path.join(private, "warm"))
        result.seconds = round(time.monotonic() - started, 4)
        close_last_task(time.time())  # no stats event (a failed or stopped run)
        if result.timings:
            result.startup = result.timings[0]["start"]
        if not result.ok and not result.failure:
            # No task failed: a syntax error, a missing inventory, ansible not found ... its output says.
            tail = list(output)[-3:]
            result.failure = redact(" ".join(" ".join(tail).split())[:500], secrets) or None
        return result
    finally:
        if secrets_fd is not None:
            os.close(secrets_fd)  # what launch.py did not read is gone with it
        shutil.rmtree(private, ignore_errors=True)
        os.close(lock)
