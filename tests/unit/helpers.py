"""Small helpers shared by the unit tests that run playbooks."""
from __future__ import annotations

import textwrap
from pathlib import Path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path



def wait_for_exits(pids, timeout: float, what: str) -> None:
    """Wait until every process in `pids` has ended (exited, reaped or not), woken by each one's pidfd
    (readable when it ends); AssertionError after `timeout` seconds. Not only for children."""
    import os
    import select
    import time
    fds = []
    for pid in pids:
        try:
            fds.append(os.pidfd_open(pid))
        except ProcessLookupError:
            pass  # gone already
    deadline = time.monotonic() + timeout
    try:
        waiting = list(fds)
        while waiting:
            left = deadline - time.monotonic()
            readable, _, _ = select.select(waiting, [], [], max(left, 0))
            if not readable:
                raise AssertionError(f"timed out waiting for {what}")
            waiting = [fd for fd in waiting if fd not in readable]
    finally:
        for fd in fds:
            os.close(fd)


class Fifo:
    """A FIFO made at `path` and opened for reading without blocking (made before whatever writes to it
    starts, or it would write a plain file); read() returns all a writer wrote up to its close. Linux
    reports no end of file before a writer has come, so select() wakes only for what is written."""

    def __init__(self, path):
        import os
        os.mkfifo(path)
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)

    def read(self, timeout: float, what: str) -> str:
        import os
        import select
        import time
        deadline = time.monotonic() + timeout
        data = b""
        try:
            while True:
                readable, _, _ = select.select([self.fd], [], [], max(deadline - time.monotonic(), 0))
                if not readable:
                    raise AssertionError(f"timed out waiting for {what}")
                chunk = os.read(self.fd, 4096)
                if not chunk:
                    return data.decode()
                data += chunk
        finally:
            os.close(self.fd)


def wait_for_unlock(path, timeout: float, what: str) -> None:
    """Wait until nobody holds a lock (flock) on `path`: an exclusive lock taken and dropped at once, by
    a thread whose blocking flock returns when the last holder lets go; AssertionError after `timeout`."""
    import fcntl
    import os
    import threading
    done = threading.Event()

    def take():
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            fcntl.flock(fd, fcntl.LOCK_UN)
            done.set()
        finally:
            os.close(fd)
    threading.Thread(target=take, daemon=True).start()
    if not done.wait(timeout):
        raise AssertionError(f"timed out waiting for {what}")
