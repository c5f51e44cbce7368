"""The lab's in-process services (fakepve + guest agents, the Guacamole stand-in, the echo model) in
one asyncio loop on a background thread. Used by `controlplane lab` and by the end-to-end tests, which reach
the objects directly to cause faults (`call(lambda: ...)` runs code on the loop's thread).
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from .guacamole import GuacamoleStandIn
from .llm import LabLlm
from .proxmox import LabProxmox

log = logging.getLogger(__name__)


@dataclass
class LabConfig:
    state_dir: Path
    proxmox_host: str = "127.0.0.2"
    proxmox_port: int = 8006
    proxmox_user: str = "root@pam"
    proxmox_password: str = "secret"
    # An API token of proxmox_user (its bare name, as CONTROLPLANE_PROXMOX_TOKEN_ID takes it); empty: none.
    proxmox_token_name: str = ""
    proxmox_token_secret: str = ""
    time_scale: float = 0.05
    agent_delay: float = 3.0
    guacamole_host: str = "127.0.0.1"
    guacamole_port: int = 8090
    guacamole_username: str = "guacadmin"
    guacamole_password: str = "guacadmin"
    guacamole_data_source: str = "postgresql"
    guacamole_json_secret: str = ""  # the stand-in takes auth-json logins signed with it (32 hex digits)
    screens: bool = False  # a real screen (Xvfb + x11vnc) per running VM, shown by noVNC (lab/screens.py)
    # The password of the screens' VNC servers, as a guest image's: the control plane's
    # CONTROLPLANE_GUACAMOLE_VNC_PASSWORD must be it (the connection carries it; the relay logs in with it).
    vnc_password: str = field(default_factory=lambda: secrets.token_urlsafe(6), repr=False)
    llm_host: str = "127.0.0.1"
    llm_port: int = 8091
    llm_api_key: str = "lab-llm-key"


class LabServices:
    def __init__(self, config: LabConfig):
        self.config = config
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.proxmox = LabProxmox(config.state_dir / "proxmox.json", config.state_dir / "certs",
                                  host=config.proxmox_host, port=config.proxmox_port, user=config.proxmox_user,
                                  password=config.proxmox_password, time_scale=config.time_scale,
                                  agent_delay=config.agent_delay, token_name=config.proxmox_token_name,
                                  token_secret=config.proxmox_token_secret)
        self.guacamole = GuacamoleStandIn(host=config.guacamole_host, port=config.guacamole_port,
                                          username=config.guacamole_username, password=config.guacamole_password,
                                          data_source=config.guacamole_data_source,
                                          state_file=str(config.state_dir / "guacamole.json"),
                                          json_secret=config.guacamole_json_secret)
        self.llm = LabLlm(host=config.llm_host, port=config.llm_port, api_key=config.llm_api_key)
        self.screens = None
        if config.screens:
            from .screens import LabScreens, missing
            lacks = missing()
            if lacks:
                log.warning("lab: no real screens for the VMs (this machine lacks %s); the Guacamole stand-in "
                            "shows its plain page", ", ".join(lacks))
            else:
                self.screens = LabScreens(config.state_dir / "screens", config.vnc_password)
                self.proxmox.screens = self.guacamole.screens = self.screens
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="lab-services", daemon=True)

    @property
    def pve(self):
        return self.proxmox.pve

    def start(self) -> "LabServices":
        self._thread.start()
        try:
            self._run(self.proxmox.start())
            self._run(self.guacamole.start())
            self._run(self.llm.start())
        except Exception:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        for stopper in (self.llm.stop, self.guacamole.stop, self.proxmox.stop):
            try:
                self._run(stopper(), timeout=10)
            except Exception:
                log.exception("stopping a lab service")
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)

    def _run(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn, timeout: float = 10):
        """Run fn() on the loop's thread (where fakepve's state lives) and return its result."""
        future: Future = Future()

        def run():
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)
        self.loop.call_soon_threadsafe(run)
        return future.result(timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
