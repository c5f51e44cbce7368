"""run_playbook (controlplane/runner/ansible.py) on tiny throw-away playbooks against localhost."""
from __future__ import annotations

import hashlib
import json
import os
import pwd
import stat
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from controlplane.logs import REDACTED
from controlplane.runner.ansible import PlaybookResult, run_playbook
from controlplane.states import TASK_FILE_STATUS, Status

SECRET = "Pve-Pa55word-7f3a"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    """Where run_playbook's private data directories go (so the test can see them come and go)."""
    runs = tmp_path / "runs"
    runs.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(runs))
    return runs


@pytest.fixture(params=["cold", "warm"])
def project(request, tmp_path, run_dir):
    """An ansible dir shaped like the repository's: ansible.cfg, playbooks/, roles/, an inventory. Every
    test runs twice: with ansible-playbook started afresh (cold), and forked from a warm Ansible process
    (runner/warm.py), as the worker runs it."""
    if request.param == "warm":
        request.getfixturevalue("warm_ansible")
    root = tmp_path / "ansible"
    write(root / "ansible.cfg", """
        [defaults]
        roles_path = roles
        host_key_checking = False
        retry_files_enabled = False
    """)
    inventory = write(root / "inventory" / "hosts.ini", "localhost ansible_connection=local\n")

    class Project:
        dir = root
        runs = run_dir
        mode = request.param

        def playbook(self, name: str, tasks: str, header: str = "") -> str:
            body = textwrap.indent(textwrap.dedent(tasks).strip(), "    ")
            write(root / "playbooks" / name,
                  f"- hosts: localhost\n  gather_facts: false\n{header}  tasks:\n{body}\n")
            return name

        def run(self, playbook: str, extravars: dict | None = None, env: dict | None = None, timeout: int = 60,
                secrets: list[str] | None = None, on_task=None) -> PlaybookResult:
            result = run_playbook(root, playbook, inventory, extravars or {}, env or {}, timeout, secrets or [],
                                  on_task=on_task)
            if result.status in ("successful", "failed"):  # ansible-playbook ran to its end, forked or not
                assert result.warm == (self.mode == "warm"), result
            return result

    return Project()


def private_dirs(runs: Path) -> list[Path]:
    return [p for p in runs.iterdir() if p.name.startswith("controlplane-run-")]


# ---- extra vars are data ---------------------------------------------------------------------------------

def test_extra_vars_are_passed_as_data_not_templated(project, tmp_path):
    marker = tmp_path / "pwned"
    extravars = {
        "home": "{{ lookup('env', 'HOME') }}",
        "pipe": "{{ lookup('pipe', 'touch " + str(marker) + "') }}",
        "nested": {"list": ["{{ 1 + 1 }}", 3, True, None], "inner": {"x": "{% raw %}{{ y }}"}},
        "digits": "0123", "word": "yes", "number": "12345", "nothing": "null", "multiline": "a\nb: c",
        "unicode": "Zoë ☃",
        "count": 5, "flag": False,
    }
    project.playbook("vars.yml", """
        - name: Hand the variables back
          set_stats:
            data:
              home: "{{ home }}"
              pipe: "{{ pipe }}"
              nested: "{{ nested }}"
              digits: "{{ digits }}"
              word: "{{ word }}"
              number: "{{ number }}"
              nothing: "{{ nothing }}"
              types: "{{ [digits, word, number, nothing] | map('type_debug') | list }}"
              multiline: "{{ multiline }}"
              unicode: "{{ unicode }}"
              count: "{{ count }}"
              flag: "{{ flag }}"
              templated: "{{ 40 + 2 }}"
    """)
    result = project.run("vars.yml", extravars)
    assert result.ok, result
    stats = result.stats
    assert stats["home"] == "{{ lookup('env', 'HOME') }}"
    assert stats["pipe"] == extravars["pipe"]
    assert not marker.exists(), "a lookup in an extra var ran"
    assert stats["nested"] == {"list": ["{{ 1 + 1 }}", 3, True, None], "inner": {"x": "{% raw %}{{ y }}"}}
    for key in ("digits", "word", "number", "nothing", "multiline", "unicode"):
        assert stats[key] == extravars[key], key
    assert stats["types"] == ["str"] * 4  # quoted-looking strings keep their type inside the playbook
    assert stats["count"] == 5 and stats["flag"] is False
    assert stats["templated"] == 42  # the playbook's own expressions still work


def test_environment_reaches_the_playbook(project):
    project.playbook("env.yml", """
        - set_stats:
            data: {value: "{{ lookup('env', 'CP_TEST_VALUE') }}"}
    """)
    result = project.run("env.yml", env={"CP_TEST_VALUE": "from-env"})
    assert result.ok and result.stats == {"value": "from-env"}


# ---- the private data dir --------------------------------------------------------------------------------

def test_private_data_dir_is_private_and_removed_after_a_success(project):
    seen = []

    def look(role, filename, task):
        (private,) = private_dirs(project.runs)
        extravars = private / "env" / "extravars"
        seen.append((stat.S_IMODE(private.stat().st_mode), stat.S_IMODE(extravars.stat().st_mode),
                     sorted(p.name for p in (private / "env").iterdir())))

    project.playbook("ok.yml", """
        - name: Say hello
          debug: {msg: hello}
    """)
    result = project.run("ok.yml", {"desktop_id": 1}, on_task=look)
    assert result.ok and result.rc == 0 and result.status == "successful"
    assert result.failed_task is None and result.failure is None
    assert seen == [(0o700, 0o600, ["extravars"])]  # no envvars/passwords files next to the extra vars
    assert private_dirs(project.runs) == []


def test_private_data_dir_is_removed_after_a_failure(project):
    during = []
    project.playbook("fail.yml", """
        - name: Fail at once
          fail: {msg: nope}
    """)
    result = project.run("fail.yml", on_task=lambda *a: during.append(len(private_dirs(project.runs))))
    assert not result.ok
    assert during == [1]
    assert private_dirs(project.runs) == []


def test_private_data_dir_is_removed_when_the_runner_itself_raises(project, monkeypatch):
    from ansible_runner.runner import Runner

    def explode(self):
        assert Path(self.config.private_data_dir).is_dir()
        raise RuntimeError("runner broke")

    monkeypatch.setattr(Runner, "run", explode)  # run_playbook prepares the run, then runs it
    project.playbook("ok.yml", "- debug: {msg: hi}")
    with pytest.raises(RuntimeError, match="runner broke"):
        project.run("ok.yml", env={"CP_TEST_PASSWORD": SECRET}, secrets=[SECRET])
    assert private_dirs(project.runs) == []


# ---- secrets: only the ones a playbook needs, never on disk ---------------------------------------------------

# What a worker's environment holds besides what a playbook needs (Settings.to_env puts every setting there).
WORKER_SECRETS = {
    "CONTROLPLANE_JWT_SECRET": "jwt-" + "j" * 40,
    "CONTROLPLANE_SHARES_SECRET": "shares-" + "s" * 40,
    "CONTROLPLANE_GUACAMOLE_JSON_SECRET": "0123456789abcdef0123456789abcdef",
    "CONTROLPLANE_LLM_OPENAI_API_KEY": "sk-model-key-4f1e9a",
    "CONTROLPLANE_DATABASE_URL": "postgresql://cp:Db-Pa55-91c2@db.internal/cp",
    "CONTROLPLANE_PROXMOX_PASSWORD": SECRET,
}
PLAYBOOK_ENV = {"CONTROLPLANE_PROXMOX_PASSWORD": SECRET, "CONTROLPLANE_PROXMOX_HOST": "pve.example"}
SECRET_SHA1 = hashlib.sha1(SECRET.encode()).hexdigest()
USES_THE_PASSWORD = textwrap.dedent(f"""
    - name: Use the Proxmox password
      assert:
        that: lookup('env', 'CONTROLPLANE_PROXMOX_PASSWORD') | hash('sha1') == '{SECRET_SHA1}'
        quiet: true
      no_log: true
""")


@pytest.fixture
def worker_env(monkeypatch):
    for key, value in WORKER_SECRETS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SOME_OTHER_VARIABLE", "not-for-playbooks")
    return list(WORKER_SECRETS.values())


def test_no_secret_is_written_under_the_private_folder_during_or_after_a_run(project, worker_env):
    needles = [s.encode() for s in worker_env]
    seen: set[str] = set()
    leaks: list[str] = []
    scans = [0]
    # Where ansible puts a module with its arguments when modules are not pipelined (`echo ~user`).
    modules_tmp = Path(pwd.getpwuid(os.getuid()).pw_dir, ".ansible", "tmp")

    def scan() -> None:
        for private in [*private_dirs(project.runs), modules_tmp]:
            for folder, _, files in os.walk(private):  # what vanishes meanwhile is skipped
                for file in files:
                    path = Path(folder, file)
                    try:
                        if not stat.S_ISREG(path.lstat().st_mode):  # never open the pipe
                            continue
                        data = path.read_bytes()
                    except OSError:  # removed meanwhile (event files come and go)
                        continue
                    seen.add("partial event" if file.endswith("-partial.json") else file)
                    leaks.extend(f"{path.relative_to(private)}: {n.decode()[:8]}..." for n in needles if n in data)
        scans[0] += 1

    done = threading.Event()

    def keep_scanning() -> None:  # between the task events too
        while not done.is_set():
            scan()

    scanner = threading.Thread(target=keep_scanning, daemon=True)
    project.playbook("secret.yml", USES_THE_PASSWORD + textwrap.dedent("""
        - name: A module given the password as an argument, for a while
          wait_for: {timeout: 1, msg: "{{ lookup('env', 'CONTROLPLANE_PROXMOX_PASSWORD') }}"}
          no_log: true
        - name: After the password was used
          debug: {msg: next}
        - name: Last
          debug: {msg: last}
    """))
    scanner.start()
    try:
        result = project.run("secret.yml", {"desktop_id": 7}, env=PLAYBOOK_ENV, secrets=worker_env,
                             on_task=lambda *a: scan())
    finally:
        done.set()
        scanner.join(10)
    assert result.ok, result.reason()  # the playbook had its password
    assert scans[0] >= 3
    assert "command" in seen and "extravars" in seen, seen  # the scans saw what ansible-runner writes
    assert not leaks, leaks
    assert private_dirs(project.runs) == []


def test_a_playbook_gets_only_the_environment_it_needs(project, worker_env):
    project.playbook("env.yml", USES_THE_PASSWORD + textwrap.dedent("""
        - name: List the environment's names
          command: "{{ ansible_playbook_python }} -c 'import json, os; print(json.dumps(sorted(os.environ)))'"
          register: names
        - set_stats:
            data: {names: "{{ names.stdout | from_json }}"}
    """))
    result = project.run("env.yml", env=PLAYBOOK_ENV, secrets=worker_env)
    assert result.ok, result.reason()
    names = set(result.stats["names"])
    assert {"CONTROLPLANE_PROXMOX_PASSWORD", "CONTROLPLANE_PROXMOX_HOST", "PATH", "HOME"} <= names
    unneeded = (set(WORKER_SECRETS) - set(PLAYBOOK_ENV)) | {"SOME_OTHER_VARIABLE"}
    assert not names & unneeded, names & unneeded


def test_a_secret_the_playbook_never_got_is_not_in_its_environment_even_inside_another_variable(project,
                                                                                                   monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy-user:" + SECRET + "@proxy.example:3128")
    project.playbook("proxy.yml", """
        - set_stats:
            data: {proxy: "{{ lookup('env', 'HTTPS_PROXY') }}"}
    """)
    result = project.run("proxy.yml", secrets=[SECRET])
    assert result.ok and result.stats == {"proxy": ""}


def test_a_proxy_password_reaches_the_playbook_but_not_the_disk(project, monkeypatch):
    proxy = "http://proxy-user:Proxy-Pa55-0c1d@proxy.example:3128"
    monkeypatch.setenv("HTTPS_PROXY", proxy)
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")  # not a credential: stays in the environment
    written = []

    def look(*_):
        (private,) = private_dirs(project.runs)
        command = next(private.glob("artifacts/*/command"))
        written.append(json.loads(command.read_text()))

    project.playbook("proxy.yml", """
        - name: Read the proxy settings
          set_stats:
            data: {proxy: "{{ lookup('env', 'HTTPS_PROXY') }}", no_proxy: "{{ lookup('env', 'NO_PROXY') }}"}
    """)
    result = project.run("proxy.yml", on_task=look)
    assert result.ok and result.stats == {"proxy": proxy, "no_proxy": "localhost,127.0.0.1"}
    (command,) = written
    assert "Proxy-Pa55-0c1d" not in json.dumps(command) and command["env"]["NO_PROXY"] == "localhost,127.0.0.1"


# ---- failures -----------------------------------------------------------------------------------------------

def test_a_failing_task_gives_status_rc_task_and_message(project):
    project.playbook("fail.yml", """
        - name: Fine
          debug: {msg: fine}
        - name: Clone the VM
          fail: {msg: "template 9000 does not exist"}
        - name: Never reached
          debug: {msg: unreachable}
    """)
    result = project.run("fail.yml")
    assert result.status == "failed" and not result.ok
    assert result.rc not in (0, None)
    assert result.failed_task == "Clone the VM"
    assert result.failure == "template 9000 does not exist"
    assert result.reason() == "Clone the VM: template 9000 does not exist"
    assert [t[2] for t in result.tasks] == ["Fine", "Clone the VM"]


def test_an_ignored_failure_is_not_the_failure(project):
    project.playbook("ignored.yml", """
        - name: Allowed to fail
          fail: {msg: ignored}
          ignore_errors: true
        - name: Really fails
          command: /bin/false
    """)
    result = project.run("ignored.yml")
    assert result.status == "failed"
    assert result.failed_task == "Really fails"
    assert result.failure and "ignored" not in result.failure


def test_secrets_are_redacted_from_the_failure(project):
    project.playbook("leak.yml", """
        - name: "Log in to Proxmox with {{ lookup('env', 'CP_TEST_PASSWORD') }}"
          fail:
            msg: "login as root@pam with password {{ lookup('env', 'CP_TEST_PASSWORD') }} was refused"
    """)
    seen = []
    result = project.run("leak.yml", env={"CP_TEST_PASSWORD": SECRET}, secrets=[SECRET],
                         on_task=lambda *a: seen.append(a))
    assert result.status == "failed"
    assert result.failure == f"login as root@pam with password {REDACTED} was refused"
    assert result.failed_task == f"Log in to Proxmox with {REDACTED}"
    assert SECRET not in result.reason()
    assert SECRET not in repr(result.tasks) and SECRET not in repr(seen)


def test_a_playbook_that_does_not_parse_fails_with_a_redacted_message(project):
    write(project.dir / "playbooks" / "broken.yml", f"""
        - hosts: localhost
          gather_facts: false
          tasks:
            - no_such_module_{SECRET}: {{}}
    """)
    result = project.run("broken.yml", secrets=[SECRET])
    assert result.status == "failed" and result.rc not in (0, None)
    assert result.failed_task is None and result.tasks == []
    assert result.failure and "no_such_module_" in result.failure
    assert SECRET not in result.failure and REDACTED in result.failure


def test_a_missing_playbook_fails(project):
    result = project.run("no_such_playbook.yml")
    assert not result.ok
    assert "no_such_playbook.yml" in result.reason()
    assert private_dirs(project.runs) == []


# ---- set_stats ----------------------------------------------------------------------------------------------

def test_set_stats_data_comes_back(project):
    project.playbook("stats.yml", """
        - set_stats:
            data: {desktop_ip: "192.0.2.10"}
        - set_stats:
            data: {guacamole_connection_id: "{{ 6 * 7 }}", extra: {a: [1, 2]}}
    """)
    result = project.run("stats.yml")
    assert result.ok
    assert result.stats == {"desktop_ip": "192.0.2.10", "guacamole_connection_id": 42, "extra": {"a": [1, 2]}}


def test_no_set_stats_gives_empty_stats(project):
    project.playbook("plain.yml", "- debug: {msg: hi}")
    assert project.run("plain.yml").stats == {}


# ---- task events ------------------------------------------------------------------------------------------

def test_on_task_gets_role_task_file_and_task_name(project):
    role = project.dir / "roles" / "proxmox_desktop" / "tasks"
    write(role / "main.yml", """
        - name: Clone
          include_tasks: clone.yml
        - name: Wait
          import_tasks: wait_ip.yml
    """)
    write(role / "clone.yml", """
        - name: Clone the template
          debug: {msg: cloning}
    """)
    write(role / "wait_ip.yml", """
        - name: Wait for the guest agent
          debug: {msg: waiting}
    """)
    project.playbook("roles.yml", """
        - name: Play task
          debug: {msg: after}
    """, header="  roles: [proxmox_desktop]\n")
    calls = []
    result = project.run("roles.yml", on_task=lambda *a: calls.append(a))
    assert result.ok, result
    assert ("proxmox_desktop", "clone.yml", "Clone the template") in calls
    assert ("proxmox_desktop", "wait_ip.yml", "Wait for the guest agent") in calls
    assert calls[-1] == ("", "roles.yml", "Play task")
    assert calls.index(("proxmox_desktop", "clone.yml", "Clone the template")) < \
        calls.index(("proxmox_desktop", "wait_ip.yml", "Wait for the guest agent"))
    assert result.tasks == calls
    # what the worker does with these: the state machine's task file table
    statuses = [TASK_FILE_STATUS[(r, f)][0] for r, f, _ in calls if (r, f) in TASK_FILE_STATUS]
    assert statuses == [Status.PROVISIONING, Status.WAITING_FOR_IP]


def test_a_failing_task_callback_does_not_stop_the_run(project):
    project.playbook("two.yml", """
        - name: One
          debug: {msg: 1}
        - name: Two
          debug: {msg: 2}
    """)

    def broken(*args):
        raise RuntimeError("callback bug")

    result = project.run("two.yml", on_task=broken)
    assert result.ok
    assert [t[2] for t in result.tasks] == ["One", "Two"]


# ---- timeout ------------------------------------------------------------------------------------------------

def processes_marked(mark: str) -> list[int]:
    """This user's processes whose environment holds `mark` (a run's ansible-playbook, its forks, their commands)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or another user's
            continue
        if mark.encode() in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def test_a_timeout_is_honoured(project, tmp_path):
    marker, release = tmp_path / "after-wait", tmp_path / "release"
    project.playbook("slow.yml", f"""
        - name: Wait too long
          wait_for: {{path: "{release}", timeout: 60}}
        - name: Must never run
          file: {{path: "{marker}", state: touch}}
    """)
    mark = f"CP_TEST_RUN_MARK={os.getpid()}-{time.monotonic_ns()}"  # inherited by every process of the run
    started = time.monotonic()
    result = project.run("slow.yml", env=dict([mark.split("=", 1)]), timeout=1)
    elapsed = time.monotonic() - started
    assert not result.ok
    assert result.status == "timeout"
    assert result.reason() == "the playbook did not finish before its timeout"
    # ansible-runner checks its timeout whenever output arrives, at least every 5 s (pexpect_timeout): stopped
    # long before the task's own 60 s (a margin for a loaded machine)
    assert elapsed < 40, elapsed
    assert private_dirs(project.runs) == []
    # the playbook was stopped: let the first task end, then wait until no process of the run is left
    # (ansible's worker runs its task to the end: it is in a session of its own, which the kill
    # misses); had ansible-playbook lived on, it would have run the next task by then
    release.touch()
    deadline = time.monotonic() + 30
    while processes_marked(mark) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_marked(mark) == [], "the timed-out playbook's processes are still running"
    assert not marker.exists()


# ---- timings ------------------------------------------------------------------------------------------------

def test_each_task_has_its_time_from_its_start_to_the_next(project):
    project.playbook("timed.yml", """
        - name: Quick
          debug: {msg: quick}
        - name: Slow
          command: sleep 0.6
        - name: Poll three times
          command: /bin/true
          register: polled
          until: polled.attempts | default(0) >= 3
          retries: 5
          delay: 0
        - name: Last
          debug: {msg: last}
    """)
    result = project.run("timed.yml")
    assert result.ok, result
    timings = result.timings
    assert [t["task"] for t in timings] == ["Quick", "Slow", "Poll three times", "Last"]
    assert [(t["role"], t["file"]) for t in timings] == [("", "timed.yml")] * 4
    assert all(t["seconds"] is not None and t["seconds"] >= 0 for t in timings)
    slow = timings[1]
    assert 0.55 <= slow["seconds"] < 5, slow
    assert timings[2]["attempts"] == 3 and "attempts" not in timings[0]
    starts = [t["start"] for t in timings]
    assert starts == sorted(starts) and result.startup == starts[0] > 0
    # the tasks fit inside the run, which took at least the start-up and the tasks
    assert result.seconds >= result.startup + sum(t["seconds"] for t in timings) - 0.05
    assert timings[-1]["start"] + timings[-1]["seconds"] <= result.seconds + 0.05


def test_a_failed_run_still_times_its_last_task(project):
    project.playbook("fails.yml", """
        - name: Fine
          debug: {msg: fine}
        - name: Breaks
          fail: {msg: broken}
    """)
    result = project.run("fails.yml")
    assert not result.ok
    assert [t["task"] for t in result.timings] == ["Fine", "Breaks"]
    assert all(t["seconds"] is not None for t in result.timings)
