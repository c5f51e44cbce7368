"""Secrets and playbook runs: each playbook is given only the secrets it uses (Settings.playbook_env),
and the private folder of a run killed with its worker is removed at worker start and by the reaper's
pass, while a live run's folder is kept (runner/ansible.py, remove_leftover_runs).
The runner's own tests (nothing secret on disk during or after a run, the child's environment) are in
test_runner.py."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from controlplane.config import REPO_ROOT, Settings
from controlplane.runner.ansible import run_playbook
from tests.unit.helpers import wait_for_unlock, write

RUN_PREFIX = "controlplane-run-"  # run_playbook's private folders, in tempfile.gettempdir()

REPO = Path(__file__).resolve().parents[2]
JWT = "jwt-secret-" + "x" * 32
OWN_SECRETS = dict(jwt_secret=JWT, shares_secret="shares-" + "s" * 32, guacamole_json_secret="ab" * 16,
                   llm_openai_api_key="sk-model-key", llm_anthropic_api_key="sk-ant-key",
                   llm_user_keys_secret="user-keys-" + "u" * 32,
                   database_url="postgresql://cp:db-password@db/cp", redis_url="redis://:redis-password@r:6379/0")


# ---- which secrets each playbook gets ----------------------------------------------------------------------

def test_each_playbook_gets_only_the_secrets_it_uses():
    from controlplane.config import GUACAMOLE_PLAYBOOKS
    s = Settings(proxmox_password="pve-password", guacamole_password="guac-password",
                 guacamole_vnc_password="vnc-password", **OWN_SECRETS)
    playbooks = sorted(p.name for p in (REPO_ROOT / "playbooks").glob("*.yml"))
    talks_to_guacamole = {name for name in playbooks
                          if "guacamole_connection" in (REPO_ROOT / "playbooks" / name).read_text()}
    assert talks_to_guacamole == GUACAMOLE_PLAYBOOKS  # the list in config.py follows the playbooks
    for name in playbooks:
        env = s.playbook_env(name)
        values = set(env.values())
        assert "pve-password" in values, name
        assert ({"guac-password", "vnc-password"} <= values) == (name in GUACAMOLE_PLAYBOOKS), name
        assert not {"guac-password", "vnc-password"} & values or name in GUACAMOLE_PLAYBOOKS, name
        leaked = [v for v in OWN_SECRETS.values() if any(v in value for value in values)]
        assert not leaked, (name, leaked)
    # With an API token, the token's secret and not the password; without one, no token secret.
    token = s.replace(proxmox_token_id="controlplane@pve!desktops", proxmox_token_secret="token-secret")
    env = token.playbook_env("desktop_stop.yml")
    assert env["CONTROLPLANE_PROXMOX_TOKEN_SECRET"] == "token-secret"
    assert "CONTROLPLANE_PROXMOX_PASSWORD" not in env and "pve-password" not in env.values()
    assert "CONTROLPLANE_PROXMOX_TOKEN_SECRET" not in s.playbook_env("desktop_stop.yml")


# ---- leftovers of killed runs -----------------------------------------------------------------------------

@pytest.fixture
def ansible_project(tmp_path):
    """A tiny ansible dir whose playbook waits for the file named by its extra var `flag`, so a run
    can be caught alive."""
    root = tmp_path / "ansible"
    write(root / "ansible.cfg", "[defaults]\nretry_files_enabled = False\n")
    write(root / "hosts.ini", "localhost ansible_connection=local\n")
    write(root / "playbooks" / "wait.yml", """
        - hosts: localhost
          gather_facts: false
          tasks:
            - name: Wait for the flag
              ansible.builtin.wait_for: {path: "{{ flag }}", timeout: 540}
            - name: Done
              ansible.builtin.debug: {msg: done}
    """)
    flags = []

    class Project:
        dir = root
        inventory = root / "hosts.ini"

        @staticmethod
        def flag(name: str) -> Path:
            flags.append(tmp_path / name)
            return flags[-1]

    yield Project()
    for flag in flags:
        flag.touch()  # a playbook still waiting ends


def run_dirs(root: Path) -> set[str]:
    return {p.name for p in root.iterdir() if p.name.startswith(RUN_PREFIX)}


def leftover(runs: Path, name: str, made_by_this_version: bool = True, age: float = 0) -> Path:
    """What a run killed with its worker leaves, nobody holding it: here with the secret-bearing files
    ansible-runner wrote before this fix (the child's whole environment in artifacts/<id>/command, a
    task's result in an event file). Folders this version makes have a marker; older ones do not."""
    folder = runs / f"{RUN_PREFIX}{name}"
    artifacts = folder / "artifacts" / "5f0c6a2e"
    write(artifacts / "command", json.dumps({"command": ["ansible-playbook"], "env": {"CONTROLPLANE_JWT_SECRET": JWT}}))
    write(artifacts / "job_events" / "1-partial.json", json.dumps({"event_data": {"res": {"msg": JWT}}}))
    write(folder / "env" / "extravars", "desktop_id: 7\n")
    if made_by_this_version:
        (folder / ".locked-while-running").touch()
    if age:
        then = time.time() - age
        for path in [folder, *folder.rglob("*")]:
            os.utime(path, (then, then), follow_symlinks=False)
    return folder


@pytest.fixture
def live_run(ansible_project, tmp_path, monkeypatch):
    """A run in progress in this process (a worker's job), waiting for its flag: (its folder, finish)."""
    import tempfile
    runs = tmp_path / "runs"
    runs.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(runs))
    started, outcome = threading.Event(), {}
    flag = ansible_project.flag("live-run")

    def run():
        outcome["result"] = run_playbook(ansible_project.dir, "wait.yml", ansible_project.inventory,
                                         {"flag": str(flag)}, {"CONTROLPLANE_PROXMOX_PASSWORD": "pve-password"}, 600,
                                         ["pve-password"], on_task=lambda *a: started.set())
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(60), "the live run did not start"
    (folder,) = run_dirs(runs)

    def finish():
        flag.touch()
        thread.join(120)
        return outcome["result"]

    yield runs / folder, finish
    flag.touch()
    thread.join(120)


def test_a_killed_runs_folder_is_removed_at_worker_start_and_a_live_runs_is_kept(base_settings, redis_conn,
                                                                                  database, live_run):
    live, finish = live_run
    runs = live.parent
    killed = leftover(runs, "killed01")
    # Of an older version (no lock): gone once unchanged for longer than a job may run, else kept.
    old_killed = leftover(runs, "older01", made_by_this_version=False, age=base_settings.job_timeout + 600)
    old_live = leftover(runs, "older02", made_by_this_version=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROLPLANE_")}
    env.update(base_settings.to_env())
    env["TMPDIR"] = str(runs)
    worker = subprocess.run([sys.executable, "-m", "controlplane.cli", "worker", "--burst", "--name",
                             f"leftovers-{os.getpid()}"], env=env, cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert worker.returncode == 0, worker.stdout[-2000:] + worker.stderr[-2000:]
    assert not killed.exists(), "the killed run's folder is still there after a worker started"
    assert not old_killed.exists(), "an old killed run's folder is still there after a worker started"
    assert live.is_dir(), "a live run's folder was removed"
    assert old_live.is_dir(), "a folder an older worker may still use was removed"
    result = finish()
    assert result.ok, result.reason()  # the live run was not disturbed
    assert run_dirs(runs) == {old_live.name}


def test_the_reaper_pass_removes_a_killed_runs_folder_once_its_playbook_ended_and_keeps_a_live_one(
        client, base_settings, redis_conn, live_run, ansible_project):
    from controlplane.cli import _reaper_pass
    live, finish = live_run
    runs = live.parent
    # A worker killed (SIGKILL) in the middle of its run: the folder stays behind.
    flag = ansible_project.flag("killed-run")
    script = ("import sys; from pathlib import Path; from controlplane.runner.ansible import run_playbook; "
              "run_playbook(Path(sys.argv[1]), 'wait.yml', Path(sys.argv[2]), {'flag': sys.argv[3]}, "
              "{'CONTROLPLANE_PROXMOX_PASSWORD': 'pve-password'}, 600, ['pve-password'], "
              "on_task=lambda *a: print('task', flush=True))")
    env = {**os.environ, "TMPDIR": str(runs)}
    worker = subprocess.Popen([sys.executable, "-c", script, str(ansible_project.dir), str(ansible_project.inventory),
                               str(flag)], env=env, cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout.readline().strip() == "task"
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(30)
        worker.stdout.close()
    (killed,) = run_dirs(runs) - {live.name}
    # Its ansible-playbook outlives it, still at work: the folder is kept while it runs.
    _reaper_pass(base_settings, redis_conn)
    assert (runs / killed).is_dir() and live.is_dir()
    # Once the playbook has ended, the next pass removes the folder; the live run's stays.
    flag.touch()

    wait_for_unlock(runs / killed, 60, "the killed run's playbook to end")
    _reaper_pass(base_settings, redis_conn)
    assert not (runs / killed).exists(), "the reaper kept a killed run's folder nobody holds"
    assert live.is_dir(), "a live run's folder was removed"
    result = finish()
    assert result.ok, result.reason()
    assert run_dirs(runs) == set()
