"""The warm Ansible process (controlplane/runner/warm.py): runs forked from it behave as runs of a fresh
ansible-playbook (tests/unit/test_runner.py runs all its tests both ways); here, what is its own: it
takes no secret itself, a run with other Ansible settings starts afresh, its absence costs nothing but
time, and a run killed by ansible-runner takes every process it started with it."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from controlplane.runner import ansible
from controlplane.runner.ansible import run_playbook
from controlplane.runner.launch import config_of
from tests.unit.helpers import Fifo, wait_for_exits, write

SECRET = "Warm-Secret-9c1e"


@pytest.fixture
def project(tmp_path):
    root = tmp_path / "ansible"
    write(root / "ansible.cfg", "[defaults]\nretry_files_enabled = False\n")
    inventory = write(root / "hosts.ini", "localhost ansible_connection=local\n")

    class Project:
        def playbook(self, name: str, tasks: str) -> str:
            body = textwrap.indent(textwrap.dedent(tasks).strip(), "    ")
            write(root / "playbooks" / name, f"- hosts: localhost\n  gather_facts: false\n  tasks:\n{body}\n")
            return name

        def run(self, playbook: str, env: dict | None = None, timeout: int = 60, secrets: list[str] | None = None,
                extravars: dict | None = None, niceness: int = 0):
            return run_playbook(root, playbook, inventory, extravars or {}, env or {}, timeout, secrets or [],
                                niceness=niceness)

    return Project()


def environ_of(pid: int) -> bytes:
    return Path(f"/proc/{pid}/environ").read_bytes()


def test_runs_are_forked_warm_and_the_warm_process_never_holds_a_secret(project, warm_ansible, tmp_path):
    out = tmp_path / "out.txt"
    project.playbook("secret.yml", f"""
        - name: Write what the run was given
          copy: {{dest: "{out}", content: "{{{{ lookup('env', 'CP_TEST_PASSWORD') }}}}"}}
    """)
    for _ in range(2):
        result = project.run("secret.yml", env={"CP_TEST_PASSWORD": SECRET}, secrets=[SECRET])
        assert result.ok and result.warm, result
        assert out.read_text() == SECRET  # the run had it
    # The warm process took the settings line, never the environment with the secrets (the monitor, a
    # fork that ended with the run, did): neither its environment nor its command line holds it.
    assert SECRET.encode() not in environ_of(warm_ansible.pid)
    assert SECRET.encode() not in Path(f"/proc/{warm_ansible.pid}/cmdline").read_bytes()
    assert b"CONTROLPLANE_" not in environ_of(warm_ansible.pid)  # only base_env of the starting process
    # Each run's monitor ended with it, and the warm process reaped it at once (it watches their pidfds):
    # the next connection it takes, after they ended, finds none of them left a zombie.
    monitors = children(warm_ansible.pid)
    wait_for_exits(monitors, 10, "the monitors to end")
    project.playbook("ok.yml", "- debug: {msg: hello}")
    assert project.run("ok.yml").warm
    assert not set(monitors) & set(children(warm_ansible.pid)), "a monitor that ended was not reaped"


def children(pid: int) -> list[int]:
    return [int(p) for p in subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                                           text=True).stdout.split()]


def test_a_run_with_other_ansible_settings_starts_afresh_and_the_next_one_is_warm_again(project, warm_ansible):
    project.playbook("ok.yml", "- debug: {msg: hello}")
    assert project.run("ok.yml").warm
    other = project.run("ok.yml", env={"ANSIBLE_DISPLAY_SKIPPED_HOSTS": "False"})
    assert other.ok and not other.warm, other  # imported under other settings: not used
    assert project.run("ok.yml").warm


def test_a_niced_run_is_niced_warm_or_cold_and_the_next_one_is_not(project, warm_ansible, tmp_path):
    """A warm-pool fill's run (PoolVmJob.niceness) gets a lower CPU priority, also when it is forked by
    the warm process (which keeps its own); a user's run after it does not inherit it."""
    out = tmp_path / "nice.txt"
    project.playbook("nice.yml", f"""
        - name: Write the run's niceness
          copy: {{dest: "{out}", content: "{{{{ lookup('pipe', 'ps -o ni= -p $PPID') | trim }}}}"}}
    """)
    base = os.getpriority(os.PRIO_PROCESS, 0)
    niced = project.run("nice.yml", niceness=7)
    assert niced.ok and niced.warm, niced
    assert int(out.read_text()) == base + 7
    plain = project.run("nice.yml")
    assert plain.ok and plain.warm and int(out.read_text()) == base
    assert os.getpriority(os.PRIO_PROCESS, warm_ansible.pid) == base  # the warm process itself keeps its own
    warm_ansible.terminate()
    warm_ansible.wait(10)
    cold = project.run("nice.yml", niceness=7)
    assert cold.ok and not cold.warm and int(out.read_text()) == base + 7


def test_settings_sent_to_the_warm_process_are_ansibles_never_secrets():
    env = {"ANSIBLE_CONFIG": "/x/ansible.cfg", "ANSIBLE_CACHE_PLUGIN_CONNECTION": "/run/1/fact_cache", "HOME": "/h",
           "LC_ALL": "C.UTF-8", "CONTROLPLANE_PROXMOX_PASSWORD": SECRET, "PATH": "/bin", "AWX_ISOLATED_DATA_DIR": "/a"}
    assert config_of(env) == {"ANSIBLE_CONFIG": "/x/ansible.cfg", "HOME": "/h", "LC_ALL": "C.UTF-8"}


def test_without_its_warm_process_a_run_starts_ansible_playbook_itself(project, warm_ansible):
    project.playbook("ok.yml", "- debug: {msg: hello}")
    assert project.run("ok.yml").warm
    warm_ansible.terminate()
    warm_ansible.wait(10)
    result = project.run("ok.yml")
    assert result.ok and not result.warm, result


def test_a_killed_warm_run_takes_every_process_it_started_even_in_other_sessions(project, warm_ansible, tmp_path):
    """ansible-runner kills launch.py's process group on a timeout or a cancel; the run's processes are
    not in it (and a module may start a session of its own): the monitor kills them all."""
    import signal
    import threading
    mark = f"CP_TEST_WARM_MARK={os.getpid()}-{time.monotonic_ns()}"
    started = tmp_path / "started"
    fifo = Fifo(started)  # the shell's echo waits for this reader
    project.playbook("hang.yml", f"""
        - name: Start a process in a session of its own, then wait
          shell: "setsid sh -c 'echo $$ > {started}; exec tail -f /dev/null' & tail -f /dev/null"
    """)
    results = []
    runner = threading.Thread(target=lambda: results.append(project.run("hang.yml", env=dict([mark.split("=", 1)]),
                                                                        timeout=300)))
    runner.start()
    detached = int(fifo.read(60, "the detached process's pid"))

    def marked() -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and mark.encode() in environ_of(int(entry.name)).split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                pass
        return found
    assert detached in marked()
    # What ansible-runner does on a timeout: SIGKILL to launch.py's process group.
    (launcher,) = [pid for pid in marked() if b"launch.py" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    os.killpg(os.getpgid(launcher), signal.SIGKILL)
    runner.join(60)
    assert results and not results[0].ok, results
    deadline = time.monotonic() + 30
    while left := marked():  # again if one started as the others were killed
        wait_for_exits(left, deadline - time.monotonic(), "every process of the run to end")


def test_the_warm_process_ends_with_the_process_that_started_it(tmp_path):
    """A worker killed outright leaves no warm process behind (it watches its parent)."""
    import tempfile
    folder = tempfile.mkdtemp(prefix="cp-warm-", dir="/tmp")
    code = textwrap.dedent(f"""
        import os, sys
        from controlplane.runner import warm
        p = warm.start({os.path.join(folder, "s")!r})
        print(p.pid, warm.wait_ready(p), flush=True)
        sys.stdin.read()  # until it is killed
    """)
    parent = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        child, listening = parent.stdout.readline().split()
        assert listening == "True", "the warm process did not listen"
        parent.kill()
        parent.wait(10)
        wait_for_exits([int(child)], 30, "the warm process to end")
    finally:
        parent.kill()
        import shutil
        shutil.rmtree(folder, ignore_errors=True)


def test_use_warm_none_means_cold(project, monkeypatch):
    monkeypatch.setattr(ansible, "_warm_socket", None)
    project.playbook("ok.yml", "- debug: {msg: hello}")
    result = project.run("ok.yml")
    assert result.ok and not result.warm
