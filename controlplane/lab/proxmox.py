"""The lab's Proxmox VE: fakepve (installed from PyPI, never copied) with the lab's templates, a
stateful SDN (zones, vnets, subnets, the global lock, apply and rollback), a guest agent that comes
up some seconds after a VM starts and reports its cloud-init static IPv4 or a DHCP-like one, and
persistence of the VMs and the SDN across lab restarts.

Everything here runs in the lab's asyncio loop (see services.py).
"""
from __future__ import annotations

import asyncio
import copy
import ipaddress
import json
import logging
import os
import re
import time
import uuid
from pathlib import Path

from fakepve import FakePve, PveError, TaskError
from fakepve.certs import make_cert
from fakepve.routing import check_digest, die, param_error, sha1

log = logging.getLogger(__name__)

# Templates the lab offers; config/plans.yml and config/projects.yml name them. Each has a cloud-init
# drive (ide2), so that an ipconfig0 set on a clone reaches the guest (cloudbase-init on Windows).
TEMPLATES = (
    {"vmid": 9000, "name": "tmpl-debian12-desktop",
     "config": {"ostype": "l26", "cores": 2, "memory": 2048, "agent": "1", "scsihw": "virtio-scsi-single",
                "scsi0": "local-lvm:base-9000-disk-0,size=32G", "ide2": "local-lvm:vm-9000-cloudinit,media=cdrom",
                "net0": "virtio=BC:24:11:90:00:00,bridge=vmbr0",
                "vga": "std", "description": "Debian 12 with Xfce and the QEMU guest agent"}},
    {"vmid": 9001, "name": "tmpl-windows11",
     "config": {"ostype": "win11", "cores": 4, "memory": 4096, "agent": "1", "bios": "ovmf", "machine": "q35",
                "scsihw": "virtio-scsi-single", "scsi0": "local-lvm:base-9001-disk-0,size=64G",
                "efidisk0": "local-lvm:base-9001-disk-1,size=4M", "tpmstate0": "local-lvm:base-9001-disk-2,size=4M",
                "ide2": "local-lvm:vm-9001-cloudinit,media=cdrom",
                "net0": "virtio=BC:24:11:90:01:00,bridge=vmbr0", "description": "Windows 11 with RDP and the guest agent"}},
)

SUBNET = ipaddress.ip_network("10.66.0.0/16")

DRIVE_KEY = re.compile(r"(ide|sata|scsi|virtio)\d+")
NET_KEY = re.compile(r"net\d+")


def _props(value) -> dict[str, str]:
    """key=value pairs of a PVE property string ('virtio=BC:..,bridge=vmbr0' → {'virtio': 'BC:..', ...})."""
    return dict(part.split("=", 1) for part in str(value).split(",") if "=" in part)


def static_address(config: dict) -> tuple[str, int] | None:
    """(address, prefix) a guest configures from cloud-init: ipconfig0's `ip=A.B.C.D/NN`, when the VM
    has a cloud-init drive to carry it; None otherwise (DHCP, no ipconfig0, no drive)."""
    if not any(DRIVE_KEY.fullmatch(key) and "cloudinit" in str(value) for key, value in config.items()):
        return None
    try:
        iface = ipaddress.IPv4Interface(_props(config.get("ipconfig0", "")).get("ip", ""))
    except ValueError:  # 'dhcp', missing, IPv6
        return None
    return str(iface.ip), iface.network.prefixlen


# ---- SDN ------------------------------------------------------------------------------------------

SDN_KINDS = ("zones", "vnets", "subnets")
# Bridges every lab node has besides the applied vnets.
NODE_BRIDGES = ("vmbr0",)
# Parameters that steer a request and are never stored with the object.
SDN_CONTROL = ("lock-token", "digest", "delete", "pending", "running")


class LabPve(FakePve):
    """fakepve with a stateful Proxmox SDN, the part the community.proxmox SDN modules use.

    fakepve answers /cluster/sdn/* from the schema alone and stores nothing; these routes come
    first (fakepve registers every `_routes_*` table in front of its catch-all) and follow
    pve-network: `sdn` is the configuration the API edits (zones.cfg, vnets.cfg, subnets.cfg), which
    stays pending until `PUT /cluster/sdn` copies it to `sdn_running` (.running-config);
    `POST /cluster/sdn/rollback` copies it back. Writes take the global lock's token when a lock is
    held (`POST /cluster/sdn/lock`, refused while changes are pending unless allow-pending). GET
    shows the configuration, `?running=1` the applied one, `?pending=1` both with each object's
    state (new, changed, deleted). Errors are PVE's: a 500 whose message names the failed
    operation ("create sdn vnet object failed: ..."), 400 with per-parameter errors. The wording
    of the lock errors is the lab's own; PVE's may differ.

    Beyond PVE: deleting a vnet that a guest's netX still uses is refused, so a teardown in the
    wrong order shows up in the lab. Starting a VM whose netX names a bridge that is neither a node
    bridge (vmbr0) nor an applied vnet fails like PVE ("bridge 'x' does not exist").
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sdn: dict[str, dict[str, dict]] = {kind: {} for kind in SDN_KINDS}
        self.sdn_running: dict | None = None  # {"version": n, "zones": {...}, "vnets": {...}, "subnets": {...}}
        self.sdn_lock: str | None = None

    # ---- state --------------------------------------------------------------------------------
    def sdn_state(self) -> dict:
        return {"config": copy.deepcopy(self.sdn), "running": copy.deepcopy(self.sdn_running), "lock": self.sdn_lock}

    def load_sdn(self, state: dict | None) -> None:
        state = state or {}
        config = state.get("config") or {}
        self.sdn = {kind: dict(config.get(kind) or {}) for kind in SDN_KINDS}
        self.sdn_running = state.get("running")
        self.sdn_lock = state.get("lock")

    def applied_vnets(self) -> set[str]:
        return set(((self.sdn_running or {}).get("vnets") or {}))

    def _digest(self, kind: str) -> str:
        return sha1(json.dumps(self.sdn[kind], sort_keys=True))

    def _has_pending(self) -> bool:
        running = self.sdn_running or {}
        return any(self.sdn[kind] != (running.get(kind) or {}) for kind in SDN_KINDS)

    def _check_token(self, values: dict, fail: str) -> None:
        """PVE::Network::SDN::lock_sdn_config: while the global lock is held, only its token may write."""
        if self.sdn_lock is not None and values.get("lock-token") != self.sdn_lock:
            raise die(f"{fail}: invalid lock token provided!")

    def _guests_on(self, bridge: str) -> list[str]:
        """'VM 1001 (net0)' for every guest interface on this bridge (its next-boot configuration)."""
        users = []
        for guest in list(self.vms) + list(self.cts):
            config = dict(guest.config)
            config.update({k: v for k, v in guest.pending.items() if v is not None})
            for key in sorted(k for k in config if NET_KEY.fullmatch(k)):
                if _props(config[key]).get("bridge") == bridge:
                    users.append(f"{'VM' if guest in self.vms else 'CT'} {guest.vmid} ({key})")
        return users

    # ---- views --------------------------------------------------------------------------------
    @staticmethod
    def _subnet_parts(sid: str) -> dict:
        zone, rest = sid.split("-", 1)
        network, mask = rest.rsplit("-", 1)
        return {"zone": zone, "network": network, "mask": mask, "cidr": f"{network}/{mask}"}

    def _render(self, kind: str, oid: str, obj: dict, digest: str) -> dict:
        if kind == "zones":
            return {"zone": oid, "digest": digest, **obj}
        if kind == "vnets":
            return {"vnet": oid, "digest": digest, **obj}
        out = {"subnet": oid, "id": oid, "digest": digest, **self._subnet_parts(oid), **obj}
        out["dhcp-range"] = [{"start-address": _props(r).get("start-address"),
                              "end-address": _props(r).get("end-address")} for r in obj.get("dhcp-range") or []]
        return out

    def _pending_view(self, kind: str) -> dict[str, dict]:
        """PVE::Network::SDN::pending_config: applied values at the top, what differs in `pending`."""
        running = (self.sdn_running or {}).get(kind) or {}
        config = self.sdn[kind]
        out: dict[str, dict] = {}
        for oid, robj in running.items():
            entry = out.setdefault(oid, dict(robj))
            cobj = config.get(oid)
            if cobj is None:
                entry["state"] = "deleted"
                continue
            for key, value in robj.items():
                if key not in cobj:
                    entry.setdefault("pending", {})[key] = "deleted"
                    entry["state"] = "changed"
                elif cobj[key] != value:
                    entry["state"] = "changed"
        for oid, cobj in config.items():
            robj = running.get(oid)
            entry = out.setdefault(oid, {})
            for key, value in cobj.items():
                if key in ("type", "vnet"):
                    entry[key] = value
                elif robj is None or robj.get(key) != value:
                    entry.setdefault("pending", {})[key] = value
            if robj is None:
                entry["state"] = "new"
            elif any(key not in robj for key in cobj):
                entry["state"] = "changed"
        for entry in out.values():
            if entry.get("state"):
                entry.setdefault("pending", {})
        return out

    def _objects(self, kind: str, values: dict) -> dict[str, dict]:
        if values.get("pending"):
            return self._pending_view(kind)
        if values.get("running"):
            return dict(((self.sdn_running or {}).get(kind) or {}))
        return self.sdn[kind]

    def _one(self, kind: str, oid: str, values: dict) -> dict:
        objects = self._objects(kind, values)
        if oid not in objects:
            raise die(f"sdn {kind[:-1]} '{oid}' does not exist")
        return self._render(kind, oid, objects[oid], self._digest(kind))

    @staticmethod
    def _stored(values: dict, *drop: str) -> dict:
        return {k: v for k, v in values.items() if k not in SDN_CONTROL and k not in drop and k != "node"}

    def _update(self, kind: str, oid: str, values: dict, fail: str, *drop: str) -> None:
        obj = self.sdn[kind].get(oid)
        if obj is None:
            raise die(f"{fail}: sdn {kind[:-1]} '{oid}' does not exist")
        try:
            check_digest(self._digest(kind), values.get("digest"))
        except PveError as exc:
            raise die(f"{fail}: {exc.message}") from exc
        for key in re.split(r"[\s,;]+", str(values.get("delete") or "")):
            if key:
                obj.pop(key, None)
        obj.update(self._stored(values, *drop))

    # ---- routes -------------------------------------------------------------------------------
    def _routes_sdn(self):
        zones, zone = "/cluster/sdn/zones", "/cluster/sdn/zones/{zone}"
        vnets, vnet = "/cluster/sdn/vnets", "/cluster/sdn/vnets/{vnet}"
        subnets, subnet = "/cluster/sdn/vnets/{vnet}/subnets", "/cluster/sdn/vnets/{vnet}/subnets/{subnet}"
        return [
            ("PUT", "/cluster/sdn", self._sdn_apply),
            ("POST", "/cluster/sdn/lock", self._sdn_lock_take),
            ("DELETE", "/cluster/sdn/lock", self._sdn_lock_release),
            ("POST", "/cluster/sdn/rollback", self._sdn_rollback),
            ("GET", zones, self._zone_index), ("POST", zones, self._zone_create),
            ("GET", zone, self._zone_read), ("PUT", zone, self._zone_update), ("DELETE", zone, self._zone_delete),
            ("GET", vnets, self._vnet_index), ("POST", vnets, self._vnet_create),
            ("GET", vnet, self._vnet_read), ("PUT", vnet, self._vnet_update), ("DELETE", vnet, self._vnet_delete),
            ("GET", subnets, self._subnet_index), ("POST", subnets, self._subnet_create),
            ("GET", subnet, self._subnet_read), ("PUT", subnet, self._subnet_update),
            ("DELETE", subnet, self._subnet_delete),
        ]

    # ---- apply, lock, rollback ----------------------------------------------------------------
    async def _sdn_apply(self, v, user):
        """PUT /cluster/sdn: commit the configuration (it becomes the running one) and reload the
        nodes' networks in a task; releases the global lock unless release-lock=0."""
        self.need_quorum()
        self._check_token(v, "could not apply SDN configuration")
        version = (self.sdn_running or {}).get("version", 0) + 1
        self.sdn_running = {"version": version, **copy.deepcopy(self.sdn)}
        if self.sdn_lock is not None and v.get("release-lock", 1):
            self.sdn_lock = None

        async def body():
            await self.pause(1)
        return await self.task(sorted(self.nodes)[0], "reloadnetworkall", "", user or "root@pam", body, lock=False,
                               log=[f"{node}: reloading network config" for node in sorted(self.nodes)])

    async def _sdn_lock_take(self, v, user):
        if self.sdn_lock is not None:
            raise die("could not acquire lock for SDN config: the global SDN lock is already held")
        if not v.get("allow-pending") and self._has_pending():
            raise die("could not acquire lock for SDN config: there are pending changes (apply or roll back them, "
                      "or use allow-pending)")
        self.sdn_lock = str(uuid.uuid4())
        return self.sdn_lock

    async def _sdn_lock_release(self, v, user):
        if self.sdn_lock is not None and not v.get("force") and v.get("lock-token") != self.sdn_lock:
            raise die("could not release lock for SDN config: invalid lock token provided!")
        self.sdn_lock = None

    async def _sdn_rollback(self, v, user):
        """POST /cluster/sdn/rollback: back to the running configuration (none if never applied)."""
        self._check_token(v, "could not roll back SDN configuration")
        running = self.sdn_running or {}
        self.sdn = {kind: copy.deepcopy(running.get(kind) or {}) for kind in SDN_KINDS}
        if self.sdn_lock is not None and v.get("release-lock", 1):
            self.sdn_lock = None

    # ---- zones --------------------------------------------------------------------------------
    async def _zone_index(self, v, user):
        digest = self._digest("zones")
        return [self._render("zones", zid, obj, digest) for zid, obj in sorted(self._objects("zones", v).items())
                if not v.get("type") or obj.get("type") == v["type"]]

    async def _zone_read(self, v, user):
        return self._one("zones", v["zone"], v)

    async def _zone_create(self, v, user):
        fail = "create sdn zone object failed"
        self.need_quorum()
        self._check_token(v, fail)
        zid = v["zone"]
        if zid in self.sdn["zones"]:
            raise die(f"{fail}: sdn zone object ID '{zid}' already defined")
        if v.get("type") in ("vlan", "qinq") and not v.get("bridge"):
            raise param_error(bridge="property is missing and it is not optional")
        self.sdn["zones"][zid] = self._stored(v, "zone")

    async def _zone_update(self, v, user):
        fail = "update sdn zone object failed"
        self._check_token(v, fail)
        self._update("zones", v["zone"], v, fail, "zone")

    async def _zone_delete(self, v, user):
        fail = "delete sdn zone object failed"
        self._check_token(v, fail)
        zid = v["zone"]
        if zid not in self.sdn["zones"]:
            raise die(f"{fail}: sdn zone '{zid}' does not exist")
        for vid, vnet in sorted(self.sdn["vnets"].items()):
            if vnet.get("zone") == zid:
                raise die(f"{fail}: zone {zid} is used by vnet {vid}")
        del self.sdn["zones"][zid]

    # ---- vnets --------------------------------------------------------------------------------
    async def _vnet_index(self, v, user):
        digest = self._digest("vnets")
        return [self._render("vnets", vid, obj, digest) for vid, obj in sorted(self._objects("vnets", v).items())
                if self.allowed(user, f"/sdn/zones/{obj.get('zone')}/{vid}", "SDN.Audit")
                or self.allowed(user, f"/sdn/zones/{obj.get('zone')}/{vid}", "SDN.Allocate")]

    async def _vnet_read(self, v, user):
        return self._one("vnets", v["vnet"], v)

    async def _vnet_create(self, v, user):
        fail = "create sdn vnet object failed"
        self.need_quorum()
        self._check_token(v, fail)
        vid, zid = v["vnet"], v["zone"]
        if vid in self.sdn["vnets"]:
            raise die(f"{fail}: sdn vnet object ID '{vid}' already defined")
        if zid not in self.sdn["zones"]:
            raise die(f"{fail}: zone '{zid}' does not exist")
        self.sdn["vnets"][vid] = {"type": "vnet", **self._stored(v, "vnet")}

    async def _vnet_update(self, v, user):
        fail = "update sdn vnet object failed"
        self._check_token(v, fail)
        if v.get("zone") and v["zone"] not in self.sdn["zones"]:
            raise die(f"{fail}: zone '{v['zone']}' does not exist")
        self._update("vnets", v["vnet"], v, fail, "vnet")

    async def _vnet_delete(self, v, user):
        fail = "delete sdn vnet object failed"
        self._check_token(v, fail)
        vid = v["vnet"]
        if vid not in self.sdn["vnets"]:
            raise die(f"{fail}: sdn vnet '{vid}' does not exist")
        if any(s.get("vnet") == vid for s in self.sdn["subnets"].values()):
            # VnetPlugin::on_delete_hook raises a parameter error, which the lock wrapper turns into text.
            raise die(f"{fail}: Parameter verification failed.\nvnet: Can't delete vnet if subnets exists")
        users = self._guests_on(vid)
        if users:
            raise die(f"{fail}: vnet '{vid}' is still used by {', '.join(users)}")
        del self.sdn["vnets"][vid]

    # ---- subnets ------------------------------------------------------------------------------
    def _need_vnet(self, vid: str) -> dict:
        vnet = self.sdn["vnets"].get(vid)
        if vnet is None:
            raise die(f"sdn vnet '{vid}' does not exist")
        return vnet

    async def _subnet_index(self, v, user):
        self._need_vnet(v["vnet"])
        digest = self._digest("subnets")
        return [self._render("subnets", sid, obj, digest) for sid, obj in sorted(self._objects("subnets", v).items())
                if obj.get("vnet") == v["vnet"]]

    async def _subnet_read(self, v, user):
        self._need_vnet(v["vnet"])
        subnet = self._one("subnets", v["subnet"], v)
        if subnet.get("vnet") != v["vnet"]:
            raise param_error(vnet="wrong vnet")
        return subnet

    async def _subnet_create(self, v, user):
        fail = "create sdn subnet object failed"
        vnet = self._need_vnet(v["vnet"])
        self.need_quorum()
        self._check_token(v, fail)
        try:
            network = ipaddress.ip_network(str(v["subnet"]), strict=True)
        except ValueError:
            raise param_error(subnet="invalid format - value does not look like a valid CIDR network") from None
        sid = f"{vnet.get('zone')}-{network.network_address}-{network.prefixlen}"
        if sid in self.sdn["subnets"]:
            raise die(f"{fail}: sdn subnet object ID '{sid}' already defined")
        gateway = v.get("gateway")
        if gateway and ipaddress.ip_address(gateway) not in network:
            raise die(f"{fail}: gateway {gateway} is not in subnet {network}")
        obj = self._stored(v, "subnet")
        if isinstance(obj.get("dhcp-range"), str):
            obj["dhcp-range"] = [obj["dhcp-range"]]
        self.sdn["subnets"][sid] = obj

    async def _subnet_update(self, v, user):
        fail = "update sdn subnet object failed"
        self._check_token(v, fail)
        self._need_vnet(v["vnet"])
        obj = self.sdn["subnets"].get(v["subnet"])
        if obj is not None and obj.get("vnet") != v["vnet"]:
            raise param_error(vnet="wrong vnet")
        self._update("subnets", v["subnet"], v, fail, "subnet", "vnet")

    async def _subnet_delete(self, v, user):
        fail = "delete sdn subnet object failed"
        self._need_vnet(v["vnet"])
        self._check_token(v, fail)
        sid = v["subnet"]
        if sid not in self.sdn["subnets"]:
            raise die(f"{fail}: sdn subnet '{sid}' does not exist")
        del self.sdn["subnets"][sid]

    # ---- guests -------------------------------------------------------------------------------
    async def _do_start(self, vm, user, p):
        """A VM on a bridge its node does not have fails to start, as on PVE (the tap device cannot
        be plugged): an SDN vnet exists on the nodes only once applied."""
        if not vm.template and vm.status != "running":
            config = dict(vm.config)
            config.update({k: val for k, val in vm.pending.items() if val is not None})
            bridges = [_props(config[k]).get("bridge") for k in sorted(config) if NET_KEY.fullmatch(k)]
            missing = [b for b in bridges if b and b not in NODE_BRIDGES and b not in self.applied_vnets()]
            if missing:
                async def body():
                    raise TaskError(f"bridge '{missing[0]}' does not exist")
                return await self.task(vm.node, "qmstart", vm.vmid, user, body, vm=vm)
        return await super()._do_start(vm, user, p)


class GuestAgents:
    """Brings each running VM's agent up `delay` seconds after it starts, down again on stop. The
    address it reports is the VM's cloud-init static one (ipconfig0 `ip=A.B.C.D/NN` with a
    cloud-init drive), else one from a DHCP-like pool (round robin, so a restart usually gets a new
    address)."""

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
                    static = static_address(vm.config)
                    address, prefix = static if static else (self._lease(vm.vmid), SUBNET.prefixlen)
                    mac = vm.config.get("net0", "").split(",")[0].split("=")[-1] or "bc:24:11:00:00:01"
                    vm.agent = {"interfaces": [
                        {"name": "lo", "hardware-address": "00:00:00:00:00:00",
                         "ip-addresses": [{"ip-address": "127.0.0.1", "ip-address-type": "ipv4", "prefix": 8}]},
                        {"name": "eth0", "hardware-address": mac.lower(),
                         "ip-addresses": [{"ip-address": address, "ip-address-type": "ipv4", "prefix": prefix},
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
                 agent_delay: float = 3.0, token_name: str = "", token_secret: str = ""):
        self.state_file = Path(state_file)
        self.cert_dir = Path(cert_dir)
        self.pve = LabPve(user=user, password=password, host=host, port=port)
        if token_name and token_secret:  # an API token of that user (PVE: user@realm!name), as production uses
            self.pve.apitokens[f"{user}!{token_name}"] = token_secret
        self.pve.time_scale = time_scale
        self.agents = GuestAgents(self.pve, agent_delay)
        self.screens = None  # lab/screens.py: a real screen per running VM, when the machine has them
        self._tasks: list[asyncio.Task] = []
        self._saved = None

    @property
    def url(self) -> str:
        return self.pve.url

    # ---- state ------------------------------------------------------------------------------
    def snapshot(self) -> dict:
        return {"vms": [{"vmid": vm.vmid, "name": vm.name, "node": vm.node, "status": vm.status,
                         "template": bool(vm.template), "config": vm.config} for vm in self.pve.vms],
                "sdn": self.pve.sdn_state()}

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
            self.pve.load_sdn(data.get("sdn"))
            log.info("lab: restored %d VMs and %d vnets from %s", len(data.get("vms", [])),
                     len(self.pve.sdn["vnets"]), self.state_file)
        for tmpl in TEMPLATES:
            vm = self.pve.vm(tmpl["vmid"])
            if vm is None:
                self.pve.add_vm(tmpl["vmid"], tmpl["name"], template=True, config=dict(tmpl["config"]))
            elif vm.template and "ide2" not in vm.config:
                # Lab states saved before the templates had a cloud-init drive.
                vm.config["ide2"] = tmpl["config"]["ide2"]

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
                if self.screens is not None:
                    self.screens.tick(self.pve.vms)
                if time.monotonic() - last_save > 1.0:
                    self.save()
                    last_save = time.monotonic()
            except Exception:
                log.exception("lab proxmox loop")
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.screens is not None:
            self.screens.stop()
        self.save()
        await self.pve.stop()
