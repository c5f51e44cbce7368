"""Processes of this host, by id."""
from __future__ import annotations

import os
from pathlib import Path


def alive(pid: int) -> bool:
    """Whether process `pid` exists on this host: another user's counts (it is not ours to take); a
    zombie (a child that exited and was not waited for) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def stop_all(processes, timeout: float) -> None:
    """Ask every process (subprocess.Popen) still running to end (SIGTERM), all at once; kill the ones
    still there `timeout` seconds later. Each is waited for (no zombie left)."""
    import subprocess
    import time
    processes = [p for p in processes if p is not None]
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
