"""The lab's Proxmox VE: fakepve (installed from PyPI, never copied) with the lab's templates,
a guest agent that comes up some seconds after a VM starts and reports a DHCP-like IPv4, and
persistence of the VMs across lab restarts.

Everything here runs in the lab's asyncio loop (see services.py).
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import time
from pathlib import Path

from fakepve import FakePve
from fakepve.certs import make_cert

log = logging.getLogger(__name__)

# Templates the lab offers; the plans file names them.
TEMPLATES = (
    {"vmid": 9000, "name": "tmpl-debian12-desktop",
     "config": {"ostype": "l26", "cores": 2, "memory": 2048, "agent": "1", "scsihw": "virtio-scsi-single",
                "scsi0": "local-lvm:base-9000-disk-0,size=32G", "net0": "virtio=BC:24:11:90:00:00,bridge=vmbr0",
                "vga": "std", "description": "Debian 12 with Xfce and the QEMU guest agent"}},
    {"vmid": 9001, "name": "tmpl-windows11",
     "config": {"ostype": "win11", "cores": 4, "memory": 4096, "agent": "1", "bios": "ovmf", "machine": "q35",
                "scsihw": "virtio-scsi-single", "scsi0": "local-lvm:base-9001-disk-0,size=64G",
                "efidisk0": "local-lvm:base-9001-disk-1,size=4M", "tpmstate0": "local-lvm:base-9001-disk-2,size=4M",
                "net0": "virtio=BC:24:11:90:01:00,bridge=vmbr0", "description": "Windows 11 with RDP and the guest agent"}},
)

SUBNET = ipaddress.ip_network("10.66.0.0/16")


class GuestAgents:
    """Brings each running VM's agent up `delay` seconds after it starts, with an address from a
    DHCP-like pool (round robin, so a restart usually gets a new address); down again on stop."""

    def __init__(self, pve: FakePve, delay: float):
        self.pve = pve
        self.delay = delay
        self.enabled = True  # False: agents never come up (a fault for tests)
        self.broken: set[int] = set()  # VM ids whose agent never comes up
        self.leases: dict[int, str] = {}
        self._hosts = [str(h) for h in SUBNET.hosts()][9:]  # .10 onwards
        self._next = 0

    def _lease(self, vmid: int) -> str:
        taken = set(self.leases.values())
        for _ in range(len(self._hosts)):
            address = self._hosts[self._next % len(self._hosts)]
            self._next += 1
            if address not in taken:
                self.leases[vmid] = address
                return address
        raise RuntimeError("lab address pool exhausted")

    def tick(self) -> None:
        now = time.time()
        for vm in list(self.pve.vms):
            if vm.template:
                continue
            if vm.status == "running":
                if vm.agent is None and self.enabled and vm.vmid not in self.broken \
                        and vm.started_at and now - vm.started_at >= self.delay:
                    address = self._lease(vm.vmid)
                    mac = vm.config.get("net0", "").split(",")[0].split("=")[-1] or "bc:24:11:00:00:01"
                    vm.agent = {"interfaces": [
                        {"name": "lo", "hardware-address": "00:00:00:00:00:00",
                         "ip-addresses": [{"ip-address": "127.0.0.1", "ip-address-type": "ipv4", "prefix": 8}]},
                        {"name": "eth0", "hardware-address": mac.lower(),
                         "ip-addresses": [{"ip-address": address, "ip-address-type": "ipv4", "prefix": 16},
                                          {"ip-address": "fe80::be24:11ff:fe00:1", "ip-address-type": "ipv6",
                                           "prefix": 64}]}]}
                    log.info("lab: guest agent of VM %s up with %s", vm.vmid, address)
            else:
                if vm.agent is not None:
                    vm.agent = None
                self.leases.pop(vm.vmid, None)
        for vmid in [v for v in self.leases if self.pve.vm(v) is None]:
            self.leases.pop(vmid, None)


class LabProxmox:
    def __init__(self, state_file: Path, cert_dir: Path, host: str = "127.0.0.2", port: int = 8006,
                 user: str = "root@pam", password: str = "secret", time_scale: float = 0.05,
                 agent_delay: float = 3.0):
        self.state_file = Path(state_file)
        self.cert_dir = Path(cert_dir)
        self.pve = FakePve(user=user, password=password, host=host, port=port)
        self.pve.time_scale = time_scale
        self.agents = GuestAgents(self.pve, agent_delay)
        self._tasks: list[asyncio.Task] = []
        self._saved = None

    @property
    def url(self) -> str:
        return self.pve.url

    # ---- state ------------------------------------------------------------------------------
    def snapshot(self) -> dict:
        return {"vms": [{"vmid": vm.vmid, "name": vm.name, "node": vm.node, "status": vm.status,
                         "template": bool(vm.template), "config": vm.config} for vm in self.pve.vms]}

    def save(self) -> None:
        data = self.snapshot()
        text = json.dumps(data, sort_keys=True, indent=1)
        if text == self._saved:
            return
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.state_file)
        self._saved = text

    def load(self) -> None:
        if self.state_file.exists():
            data = json.loads(self.state_file.read_text())
            for vm in data.get("vms", []):
                self.pve.add_vm(vm["vmid"], vm["name"], node=vm.get("node", "pve1"), status=vm.get("status", "stopped"),
                                template=vm.get("template", False), config=vm.get("config", {}))
            log.info("lab: restored %d VMs from %s", len(data.get("vms", [])), self.state_file)
        present = {vm.vmid for vm in self.pve.vms}
        for tmpl in TEMPLATES:
            if tmpl["vmid"] not in present:
                self.pve.add_vm(tmpl["vmid"], tmpl["name"], template=True, config=dict(tmpl["config"]))

    # ---- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        self.cert_dir.mkdir(parents=True, exist_ok=True)
        certfile, keyfile, _ = make_cert(str(self.cert_dir), hosts=(self.pve.host,))
        self.load()
        await self.pve.start(certfile, keyfile)
        self._tasks = [asyncio.ensure_future(self._loop())]

    async def _loop(self) -> None:
        last_save = 0.0
        while True:
            try:
                self.agents.tick()
                if time.monotonic() - last_save > 1.0:
                    self.save()
                    last_save = time.monotonic()
            except Exception:
                log.exception("lab proxmox loop")
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self.save()
        await self.pve.stop()
