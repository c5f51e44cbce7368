"""The first program of a playbook run (controlplane/runner/ansible.py): gives ansible-playbook the
secrets that ansible-runner must never see, then becomes ansible-playbook.

    python -I -S launch.py --dir <private data dir> [--secrets <fifo>] -- ansible-playbook ARGS...

ansible-runner writes the child's whole environment to `artifacts/<id>/command`, so the secrets a
playbook needs are not in that environment: the worker writes them, one line of JSON, into a named
pipe in the run's private folder before the run starts. This program reads that line (a pipe's data
lives in memory, never on disk), removes the pipe's name and puts the values into the environment
it hands to ansible-playbook, which is exec'd in its place (same process).

It also holds a shared lock on the private folder, inherited by ansible-playbook and the processes
it forks, so the folder counts as in use while any of them runs, even after the worker that started
them was killed (runner.ansible.remove_leftover_runs takes the folders nobody holds).

With CONTROLPLANE_ANSIBLE_WARM (a socket path) in its environment, it first asks the worker's warm
Ansible process (runner/warm.py) to run ansible-playbook on this terminal, waits for the run to end
and exits with its status, leaving the file `warm` in the private folder when the run was a fork of
the warm process; it execs ansible-playbook itself when that process does not take the run.

Standard library only: it runs with -I -S, without the virtualenv's packages.
"""
import fcntl
import json
import os
import signal
import socket
import sys

MAX_SECRETS = 60000  # bytes: the worker writes at most this much (it fits in a pipe's buffer)
WARM_SOCKET = "CONTROLPLANE_ANSIBLE_WARM"
# How much lower than the worker's the run's CPU priority is (os.nice): the warm pool's fills and
# removals are niced so that on a busy node a user's create gets the cores first.
NICE = "CONTROLPLANE_ANSIBLE_NICE"
# Environment entries that Ansible reads when it is imported, besides ANSIBLE_* and LC_*: a warm
# process primed with other values does not run the playbook warm (runner/warm.py).
_CONFIG_NAMES = frozenset({"HOME", "TMPDIR", "LANG", "LANGUAGE", "PYTHONPATH", "PYTHONHASHSEED", "USER"})
# ANSIBLE_* entries that change with every run and are read only while it runs (ansible-runner's
# fact cache folder, used by the jsonfile cache plugin when the run loads it).
_PER_RUN = frozenset({"ANSIBLE_CACHE_PLUGIN_CONNECTION"})


def config_of(env: dict) -> dict:
    """What of `env` Ansible reads when it is imported: what a warm process is primed with. Never a
    secret: the secrets are CONTROLPLANE_* entries, read by the inventory while the run runs."""
    return {k: v for k, v in env.items()
            if (k.startswith(("ANSIBLE_", "LC_")) or k in _CONFIG_NAMES) and k not in _PER_RUN}


def fail(message: str) -> None:
    print(f"ERROR! the playbook could not be started: {message}", flush=True)
    sys.exit(1)


def read_secrets(path: str) -> dict:
    """The JSON object the worker wrote into the pipe at `path`, which is gone from the folder after."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        fail(f"no settings pipe ({exc.strerror})")
    try:
        try:
            os.unlink(path)
        except OSError:
            pass
        data = b""
        while not data.endswith(b"\n") and len(data) <= MAX_SECRETS:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:  # the worker writes everything before the run starts
                break
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    if not data.endswith(b"\n"):
        fail("the settings pipe was empty or cut short")
    try:
        values = json.loads(data)
    except ValueError:
        fail("the settings pipe did not hold JSON")
    if not isinstance(values, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in values.items()):
        fail("the settings pipe did not hold names and values")
    return values


def _line(conn: socket.socket) -> dict | None:
    data = b""
    while not data.endswith(b"\n"):
        try:
            chunk = conn.recv(4096)
        except InterruptedError:
            continue
        if not chunk:
            return None
        data += chunk
    return json.loads(data)


def run_warm(path: str, command: list, env: dict, private: str | None, lock: int | None) -> int | None:
    """The run's exit status, by the warm process at `path`; None when it did not take the run."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(5)
        conn.connect(path)
        conn.sendall((json.dumps({"config": config_of(env), "cwd": os.getcwd()}) + "\n").encode())
        conn.settimeout(120)  # the first run waits while the warm process imports Ansible
        if (_line(conn) or {}).get("ready") is not True:
            raise ValueError("the warm Ansible process refused the run")
        socket.send_fds(conn, [b"F"], [0, 1, 2] + ([lock] if lock is not None else []))
        conn.sendall((json.dumps({"argv": command, "env": env, "cwd": os.getcwd()}) + "\n").encode())
        conn.settimeout(None)
        started = _line(conn)
    except (OSError, ValueError):
        conn.close()
        return None
    if not started or "pid" not in started:
        conn.close()
        return None
    if started.get("warm") and private:
        os.close(os.open(os.path.join(private, "warm"), os.O_WRONLY | os.O_CREAT, 0o600))

    def forward(signum, _frame):  # a stop asked of this process is asked of the run
        try:
            os.killpg(started["pid"], signum)
        except OSError:
            pass
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    try:
        ended = _line(conn)
    except (OSError, ValueError):
        ended = None
    if not ended or not isinstance(ended.get("status"), int):
        print("ERROR! the warm Ansible process ended before the playbook", flush=True)
        return 1
    status = ended["status"]
    return status if status >= 0 else 128 - status


def nice_session() -> None:
    """With the kernel's autogroups (sched_autogroup_enabled), a process' niceness only counts within
    its session's group, and sessions share the CPU as equals: give this session's group the
    process' niceness, so that a niced run yields to the other sessions' (a user's create)."""
    niceness = os.getpriority(os.PRIO_PROCESS, 0)
    if niceness <= 0:
        return
    try:
        with open("/proc/self/autogroup", "w", encoding="ascii") as group:
            group.write(str(niceness))
    except OSError:  # no autogroups here: the niceness alone does it
        pass


def main(argv: list[str]) -> None:
    private = secrets = None
    while argv and argv[0] != "--":
        if argv[0] == "--dir" and len(argv) > 1:
            private, argv = argv[1], argv[2:]
        elif argv[0] == "--secrets" and len(argv) > 1:
            secrets, argv = argv[1], argv[2:]
        else:
            fail(f"unknown argument {argv[0]!r}")
    command = argv[1:]
    if not command:
        fail("no command")
    if private:
        lock = os.open(private, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(lock, fcntl.LOCK_SH)
        os.set_inheritable(lock, True)  # held by ansible-playbook and its workers until the last one ends
    env = dict(os.environ)
    if secrets:
        env.update(read_secrets(secrets))
    niceness = env.pop(NICE, "")
    if niceness.isdigit() and int(niceness) > 0:
        os.nice(int(niceness))  # ansible-playbook and its forks, cold or warm (warm.py keeps it), run niced
        nice_session()  # ansible-runner started this one in a session (an autogroup) of its own
    warm = env.pop(WARM_SOCKET, None)
    if warm and os.path.basename(command[0]) == "ansible-playbook":
        status = run_warm(warm, command, env, private, lock if private else None)
        if status is not None:
            sys.exit(status)
    try:
        os.execvpe(command[0], command, env)
    except OSError as exc:
        fail(f"{command[0]}: {exc.strerror}")


if __name__ == "__main__":
    main(sys.argv[1:])
