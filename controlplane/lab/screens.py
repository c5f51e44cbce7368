"""Real screens for the lab's VMs: while a fakepve VM runs, it has an X display of its own (Xvfb)
with a terminal on it (xterm) and a VNC server on that display (x11vnc), listening on loopback
only and taking only VNC authentication with the lab's VNC password (the deployment's
CONTROLPLANE_GUACAMOLE_VNC_PASSWORD, stored VNC's way in a file only the lab's user reads; never on a
command line or in a log). The Guacamole stand-in's client page shows it with noVNC through a
WebSocket relay that takes only a valid, unexpired session token and logs in to the VNC server with
the connection's `password` parameter, as guacd does (lab/guacamole.py, lab/rfb.py).

Needs Debian's xvfb, x11vnc and xterm (and novnc for the page); `available()` says what is
missing, and the lab falls back to the plain stand-in page without them.
"""
from __future__ import annotations

import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .rfb import write_password_file

log = logging.getLogger(__name__)

PROGRAMS = ("Xvfb", "x11vnc", "xterm")
NOVNC_DIRS = ("/usr/share/novnc",)  # Debian's novnc (core/rfb.js, an ES module)
GEOMETRY = "1024x768x24"


def novnc_dir() -> Path | None:
    for candidate in (os.environ.get("CONTROLPLANE_LAB_NOVNC_DIR"), *NOVNC_DIRS):
        if candidate and (Path(candidate) / "core" / "rfb.js").is_file():
            return Path(candidate)
    return None


def missing() -> list[str]:
    """What the lab's screens need and this machine lacks (empty: they can run)."""
    lacks = [p for p in PROGRAMS if shutil.which(p) is None]
    if novnc_dir() is None:
        lacks.append("novnc")
    return lacks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Screen:
    vmid: int
    display: int
    port: int
    procs: list[subprocess.Popen] = field(default_factory=list)
    address: str | None = None  # the VM's address, as its guest agent reports it

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)


class LabScreens:
    def __init__(self, log_dir: Path, password: str):
        if not password:
            raise ValueError("the lab's VNC servers need a password")
        self.log_dir = Path(log_dir)
        self.password = password
        self.screens: dict[int, Screen] = {}

    def port_for(self, address: str) -> int | None:
        """The loopback VNC port of the running VM with this address."""
        for screen in self.screens.values():
            if screen.address == address and screen.alive():
                return screen.port
        return None

    def tick(self, vms) -> None:
        """Give each running VM a screen and take it from the others (called by the lab's loop)."""
        running = {}
        for vm in vms:
            if vm.template or vm.status != "running":
                continue
            running[vm.vmid] = _agent_address(vm)
        for vmid in [v for v in self.screens if v not in running or not self.screens[v].alive()]:
            self._stop(self.screens.pop(vmid))
        for vmid, address in running.items():
            screen = self.screens.get(vmid)
            if screen is None:
                screen = self.screens[vmid] = self._start(vmid)
            screen.address = address

    def _xvfb(self, spawn: dict) -> tuple[subprocess.Popen, int]:
        """A new Xvfb on a display it picks itself (-displayfd: the first free one, taken atomically by
        its lock file, so labs and test workers started at once never collide), and that display's
        number once it is ready."""
        read_end, write_end = os.pipe()
        try:
            proc = subprocess.Popen(["Xvfb", "-displayfd", str(write_end), "-screen", "0", GEOMETRY, "-nolisten", "tcp"],
                                    pass_fds=(write_end,), **spawn)
            os.close(write_end)
            write_end = -1
            answer = b""
            deadline = time.monotonic() + 10
            while not answer.endswith(b"\n") and time.monotonic() < deadline:
                ready, _, _ = select.select([read_end], [], [], max(0.0, deadline - time.monotonic()))
                chunk = os.read(read_end, 16) if ready else b""
                if not chunk:
                    break
                answer += chunk
        finally:
            os.close(read_end)
            if write_end >= 0:
                os.close(write_end)
        if not answer.strip().isdigit():
            proc.kill()
            raise RuntimeError("Xvfb did not start (see the screen's log)")
        return proc, int(answer)

    def _start(self, vmid: int) -> Screen:
        port = _free_port()
        self.log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.log_dir, 0o700)
        password_file = self.log_dir / "vnc-password"
        write_password_file(password_file, self.password)
        out = open(self.log_dir / f"screen-{vmid}.log", "ab")
        spawn = dict(stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        xvfb, display = self._xvfb(spawn)
        screen = Screen(vmid=vmid, display=display, port=port)
        screen.procs.append(xvfb)
        env = {**os.environ, "DISPLAY": f":{display}"}
        screen.procs.append(subprocess.Popen(
            ["xterm", "-geometry", "120x40+0+0", "-fa", "Monospace", "-fs", "12", "-T", f"VM {vmid}",
             # cat, not a shell: the screens run as the lab's user, and a screen must not be a way in
             "-e", "sh", "-c", f"echo 'Lab desktop of VM {vmid}: a real X display (Xvfb), here over VNC.'; "
                               "echo 'What you type is echoed back (no shell).'; exec cat"], env=env, **spawn))
        screen.procs.append(subprocess.Popen(
            ["x11vnc", "-display", f":{display}", "-rfbport", str(port), "-localhost", "-rfbauth", str(password_file),
             "-forever", "-shared", "-quiet", "-noxdamage"], env=env, **spawn))
        log.info("lab: VM %s has a screen on display :%s, VNC on 127.0.0.1:%s", vmid, display, port)
        return screen

    def _stop(self, screen: Screen) -> None:
        for proc in reversed(screen.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in screen.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        log.info("lab: VM %s's screen stopped", screen.vmid)

    def stop(self) -> None:
        for vmid in list(self.screens):
            self._stop(self.screens.pop(vmid))


def _agent_address(vm) -> str | None:
    for iface in (vm.agent or {}).get("interfaces", []):
        if iface.get("name") == "lo":
            continue
        for address in iface.get("ip-addresses", []):
            if address.get("ip-address-type") == "ipv4":
                return address.get("ip-address")
    return None


def _wait_for(check, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False
