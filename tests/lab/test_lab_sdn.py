"""The lab's Proxmox SDN (LabPve in controlplane/lab/proxmox.py) over HTTPS with proxmoxer, the client
the community.proxmox modules use: zones, vnets and subnets, the global lock, apply and rollback,
PVE's errors, the guest agent's static address, and persistence across a restart."""
from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest
from proxmoxer import ProxmoxAPI
from proxmoxer.core import ResourceException

from controlplane.lab.proxmox import LabProxmox

pytestmark = pytest.mark.filterwarnings("ignore:Unverified HTTPS request")

TIMEOUT = 10
ZONE, VNET, CIDR = "cdsproj", "p7", "172.30.7.0/24"
SUBNET_ID = "cdsproj-172.30.7.0-24"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabPveThread:
    """A LabProxmox in its own asyncio loop on a thread, as the lab runs it; restartable on one state dir."""

    def __init__(self, state_dir):
        self.state_dir = state_dir
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.proxmox = None

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(TIMEOUT)

    def call(self, fn):
        async def wrapped():
            return fn()
        return self.run(wrapped())

    def start(self) -> "LabPveThread":
        self.proxmox = LabProxmox(self.state_dir / "proxmox.json", self.state_dir / "certs", host="127.0.0.1",
                                  port=self.port, time_scale=0.01, agent_delay=0.1)
        self.run(self.proxmox.start())
        return self

    def stop(self) -> None:
        if self.proxmox is not None:
            self.run(self.proxmox.stop())
            self.proxmox = None

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT)
        self.loop.close()

    @property
    def pve(self):
        return self.proxmox.pve

    def api(self) -> ProxmoxAPI:
        return ProxmoxAPI("127.0.0.1", port=self.port, user="root@pam", password="secret", verify_ssl=False,
                          timeout=TIMEOUT)


@pytest.fixture
def lab_pve(tmp_path):
    lab = LabPveThread(tmp_path).start()
    yield lab
    lab.close()


@pytest.fixture
def api(lab_pve):
    return lab_pve.api()


def locked(api, change):
    """What every community.proxmox SDN module does: take the global lock, change, apply and release."""
    token = api.cluster.sdn.lock.post()
    change(token)
    return api.cluster.sdn.put(**{"lock-token": token, "release-lock": 1})


def make_network(api, zone=ZONE, vnet=VNET, cidr=CIDR, gateway="172.30.7.1"):
    if zone not in [z["zone"] for z in api.cluster.sdn.zones.get()]:
        locked(api, lambda t: api.cluster.sdn.zones.post(zone=zone, type="simple", **{"lock-token": t}))
    locked(api, lambda t: api.cluster.sdn.vnets.post(vnet=vnet, zone=zone, type="vnet", **{"isolate-ports": 0,
                                                                                             "lock-token": t}))
    locked(api, lambda t: api.cluster.sdn.vnets(vnet).subnets.post(subnet=cidr, type="subnet", gateway=gateway, snat=0,
                                                                   **{"lock-token": t}))


def pve_error(call) -> ResourceException:
    with pytest.raises(ResourceException) as info:
        call()
    return info.value


def test_zone_vnet_and_subnet_have_pve_shapes_and_go_away(api):
    make_network(api)

    zone = next(z for z in api.cluster.sdn.zones.get() if z["zone"] == ZONE)
    assert zone["type"] == "simple" and len(zone["digest"]) == 40
    assert api.cluster.sdn.zones(ZONE).get()["type"] == "simple"
    assert api.cluster.sdn.zones.get(type="vlan") == []

    [vnet] = api.cluster.sdn.vnets.get()
    assert {k: vnet[k] for k in ("vnet", "zone", "type", "isolate-ports")} == \
        {"vnet": VNET, "zone": ZONE, "type": "vnet", "isolate-ports": 0}

    # The shape proxmox_subnet compares against (its unit tests' PVE sample): id, cidr, mask as text ...
    [subnet] = api.cluster.sdn.vnets(VNET).subnets.get()
    assert subnet == {"subnet": SUBNET_ID, "id": SUBNET_ID, "type": "subnet", "vnet": VNET, "zone": ZONE,
                      "cidr": CIDR, "network": "172.30.7.0", "mask": "24", "gateway": "172.30.7.1", "snat": 0,
                      "dhcp-range": [], "digest": subnet["digest"]}
    assert api.cluster.sdn.vnets(VNET).subnets(SUBNET_ID).get()["gateway"] == "172.30.7.1"

    # Applied: the running configuration has all three, nothing is pending.
    assert [v["vnet"] for v in api.cluster.sdn.vnets.get(running=1)] == [VNET]
    assert all("state" not in v for v in api.cluster.sdn.vnets.get(pending=1))

    locked(api, lambda t: api.cluster.sdn.vnets(VNET).subnets(SUBNET_ID).delete(**{"lock-token": t}))
    locked(api, lambda t: api.cluster.sdn.vnets(VNET).delete(**{"lock-token": t}))
    assert api.cluster.sdn.vnets.get() == [] and api.cluster.sdn.vnets.get(running=1) == []
    assert [z["zone"] for z in api.cluster.sdn.zones.get()] == [ZONE]
    locked(api, lambda t: api.cluster.sdn.zones(ZONE).delete(**{"lock-token": t}))
    assert api.cluster.sdn.zones.get() == []


def test_changes_are_pending_until_applied_and_rollback_drops_them(api):
    api.cluster.sdn.zones.post(zone=ZONE, type="simple")
    api.cluster.sdn.vnets.post(vnet=VNET, zone=ZONE)
    assert [v["vnet"] for v in api.cluster.sdn.vnets.get()] == [VNET]  # the configuration shows it at once
    assert api.cluster.sdn.vnets.get(running=1) == []
    [pending] = api.cluster.sdn.vnets.get(pending=1)
    assert pending["state"] == "new" and pending["pending"]["zone"] == ZONE

    upid = api.cluster.sdn.put()
    assert upid.startswith("UPID:") and ":reloadnetworkall:" in upid
    assert [v["vnet"] for v in api.cluster.sdn.vnets.get(running=1)] == [VNET]

    api.cluster.sdn.vnets(VNET).put(alias="project seven")
    [changed] = api.cluster.sdn.vnets.get(pending=1)
    assert changed["state"] == "changed" and changed["pending"] == {"alias": "project seven"}
    api.cluster.sdn.rollback.post()
    assert "alias" not in api.cluster.sdn.vnets(VNET).get()


def test_errors_are_pves(lab_pve, api):
    make_network(api)

    err = pve_error(lambda: api.cluster.sdn.zones.post(zone=ZONE, type="simple"))
    assert err.status_code == 500 and "create sdn zone object failed: sdn zone object ID 'cdsproj' already defined" \
        in err.content
    err = pve_error(lambda: api.cluster.sdn.vnets.post(vnet=VNET, zone=ZONE))
    assert err.status_code == 500 and "sdn vnet object ID 'p7' already defined" in err.content
    err = pve_error(lambda: api.cluster.sdn.vnets(VNET).subnets.post(subnet=CIDR, type="subnet"))
    assert err.status_code == 500 and f"sdn subnet object ID '{SUBNET_ID}' already defined" in err.content
    err = pve_error(lambda: api.cluster.sdn.vnets.post(vnet="p8", zone="nozone"))
    assert err.status_code == 500 and "zone 'nozone' does not exist" in err.content
    err = pve_error(lambda: api.cluster.sdn.vnets.post(vnet="project123", zone=ZONE))  # PVE: at most 8 characters
    assert err.status_code == 400 and "vnet" in err.errors
    err = pve_error(lambda: api.cluster.sdn.vnets("nonet").subnets.get())
    assert err.status_code == 500 and "sdn vnet 'nonet' does not exist" in err.content
    err = pve_error(lambda: api.cluster.sdn.vnets(VNET).subnets.post(subnet="172.30.8.0/24", type="subnet",
                                                                     gateway="172.30.9.1"))
    assert err.status_code == 500 and "is not in subnet" in err.content

    # Deleting in the wrong order: a vnet with subnets, a zone with vnets, a vnet a VM is plugged into.
    err = pve_error(lambda: api.cluster.sdn.vnets(VNET).delete())
    assert err.status_code == 500 and "delete sdn vnet object failed" in err.content
    err = pve_error(lambda: api.cluster.sdn.zones(ZONE).delete())
    assert err.status_code == 500 and "zone cdsproj is used by vnet p7" in err.content
    net0 = f"virtio=BC:24:11:00:00:07,bridge={VNET}"
    lab_pve.call(lambda: lab_pve.pve.add_vm(5007, "cds-project-7", config={"net0": net0}))
    api.cluster.sdn.vnets(VNET).subnets(SUBNET_ID).delete()
    err = pve_error(lambda: api.cluster.sdn.vnets(VNET).delete())
    assert err.status_code == 500 and "VM 5007 (net0)" in err.content
    assert [v["vnet"] for v in api.cluster.sdn.vnets.get()] == [VNET]
    api.cluster.sdn.put()


def test_the_global_lock_guards_writes(api):
    token = api.cluster.sdn.lock.post()
    err = pve_error(lambda: api.cluster.sdn.lock.post())
    assert err.status_code == 500 and "already held" in err.content
    err = pve_error(lambda: api.cluster.sdn.zones.post(zone=ZONE, type="simple"))
    assert "invalid lock token provided!" in err.content
    err = pve_error(lambda: api.cluster.sdn.zones.post(zone=ZONE, type="simple", **{"lock-token": "wrong"}))
    assert "invalid lock token provided!" in err.content
    api.cluster.sdn.zones.post(zone=ZONE, type="simple", **{"lock-token": token})
    # A failed module rolls back and releases the lock with its token.
    api.cluster.sdn.rollback.post(**{"lock-token": token, "release-lock": 1})
    assert api.cluster.sdn.zones.get() == []

    # Pending changes (made without the lock) block the lock unless allowed.
    api.cluster.sdn.zones.post(zone=ZONE, type="simple")
    err = pve_error(lambda: api.cluster.sdn.lock.post())
    assert "pending changes" in err.content
    token = api.cluster.sdn.lock.post(**{"allow-pending": 1})
    api.cluster.sdn.lock.delete(**{"lock-token": token})
    api.cluster.sdn.put()
    api.cluster.sdn.lock.delete(force=1)  # no lock: nothing to do


def wait_task(api, upid: str) -> dict:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        status = api.nodes("pve1").tasks(upid).status.get()
        if status["status"] == "stopped":
            return status
        time.sleep(0.05)
    raise AssertionError(f"task {upid} did not finish")


def wait_agent(api, vmid: int) -> list[dict]:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            return api.nodes("pve1").qemu(vmid).agent("network-get-interfaces").get()["result"]
        except ResourceException:
            time.sleep(0.05)
    raise AssertionError(f"the guest agent of VM {vmid} did not come up")


def addresses(interfaces: list[dict]) -> list[tuple[str, int]]:
    return [(a["ip-address"], a["prefix"]) for i in interfaces if i["name"] != "lo"
            for a in i.get("ip-addresses", []) if a["ip-address-type"] == "ipv4"]


def test_a_vm_starts_on_an_applied_vnet_and_reports_its_cloud_init_address(api):
    api.cluster.sdn.zones.post(zone=ZONE, type="simple")
    api.cluster.sdn.vnets.post(vnet=VNET, zone=ZONE)
    api.nodes("pve1").qemu(9001).clone.post(newid=5007, name="cds-project-7", full=0)
    wait_task(api, api.nodes("pve1").qemu(5007).config.post(
        net0=f"virtio,bridge={VNET}", ipconfig0="ip=172.30.7.2/24,gw=172.30.7.1"))

    # Not applied yet: the bridge is not on the node.
    status = wait_task(api, api.nodes("pve1").qemu(5007).status.start.post())
    assert status["exitstatus"] == f"bridge '{VNET}' does not exist"

    api.cluster.sdn.put()
    assert wait_task(api, api.nodes("pve1").qemu(5007).status.start.post())["exitstatus"] == "OK"
    assert addresses(wait_agent(api, 5007)) == [("172.30.7.2", 24)]

    # A clone without ipconfig0 (a desktop) still gets a DHCP-like address.
    api.nodes("pve1").qemu(9000).clone.post(newid=5008, name="cds-desktop-8", full=0)
    assert wait_task(api, api.nodes("pve1").qemu(5008).status.start.post())["exitstatus"] == "OK"
    [(address, prefix)] = addresses(wait_agent(api, 5008))
    assert address.startswith("10.66.") and prefix == 16


def test_sdn_survives_a_lab_restart(lab_pve, api):
    make_network(api)
    api.cluster.sdn.vnets(VNET).put(alias="pending alias")  # a change not applied yet
    lab_pve.stop()

    lab_pve.start()
    api = lab_pve.api()
    assert [v["vnet"] for v in api.cluster.sdn.vnets.get(running=1)] == [VNET]
    [vnet] = api.cluster.sdn.vnets.get(pending=1)
    assert vnet["state"] == "changed" and vnet["pending"] == {"alias": "pending alias"}
    assert api.cluster.sdn.vnets(VNET).subnets(SUBNET_ID).get()["gateway"] == "172.30.7.1"
    assert [z["zone"] for z in api.cluster.sdn.zones.get()] == [ZONE]
    # The templates came back with their cloud-init drive.
    assert "cloudinit" in api.nodes("pve1").qemu(9001).config.get()["ide2"]
