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

Standard library only: it runs with -I -S, without the virtualenv's packages.
"""
import fcntl
import json
import os
import sys

MAX_SECRETS = 60000  # bytes: the worker writes at most this much (it fits in a pipe's buffer)


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
    try:
        os.execvpe(command[0], command, env)
    except OSError as exc:
        fail(f"{command[0]}: {exc.strerror}")


if __name__ == "__main__":
    main(sys.argv[1:])
