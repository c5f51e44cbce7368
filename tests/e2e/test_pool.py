"""The warm pool end to end on the lab: real workers fill it through pool_vm_create.yml (the
proxmox_desktop role against fakepve), a create takes a running pool VM and desktop_create.yml
adopts it (renamed, re-tagged, registered in Guacamole) without cloning, the pool refills, a failed
fill is removed and retried, and shrinking the pool deletes its VMs and frees their VM ids."""
from __future__ import annotations

import time

import pytest
import requests

from controlplane.extensions import db
from controlplane.models import PoolVm, VmidLease

from .helpers import Api, desktop_row, events
from .test_failures import pve_fault, template_vmid

# What the playbooks do on the lab; the pool's database side (takes, leases, refill passes) is
# tests/api/test_pool_api.py, on both databases.
pytestmark = [pytest.mark.timeout(420), pytest.mark.playbooks]

PLAN = "PREMIUM"  # 8 cores, 8 GiB: the pool's VMs are sized to the plan
CREATE_PROGRESSION = ["PENDING", "PROVISIONING", "STARTING", "WAITING_FOR_IP", "CONFIGURING", "RUNNING"]


class Pools:
    def __init__(self, lab):
        self.lab = lab
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {lab.token('pool-admin', admin=True)}"

    def set(self, size: int, power: str = "running") -> dict:
        response = self.session.put(f"{self.lab.url}/api/v1/admin/pools/{PLAN}", json={"size": size, "power": power},
                                    timeout=10)
        assert response.status_code == 200, response.text
        return response.json()["data"]

    def get(self) -> dict:
        response = self.session.get(f"{self.lab.url}/api/v1/admin/pools", timeout=10)
        assert response.status_code == 200, response.text
        return next(p for p in response.json()["data"]["pools"] if p["plan"] == PLAN)

    def wait(self, predicate, what: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        current = None
        while time.monotonic() < deadline:
            current = self.get()
            if predicate(current):
                return current
            time.sleep(0.3)
        raise AssertionError(f"the {PLAN} pool never became {what}: {current}")

    def ready(self, count: int, timeout: float = 120) -> dict:
        return self.wait(lambda p: p["ready"] == count and p["filling"] == 0 and p["removing"] == 0,
                         f"{count} ready", timeout)


def pool_vms_in_proxmox(lab) -> dict[int, str]:
    return {vmid: name for vmid, name in lab.vms().items() if name.startswith("cds-pool-")}


@pytest.fixture
def pools(lab):
    """The PREMIUM pool, emptied and back to the plans file's (none) afterwards, its VMs gone."""
    pools = Pools(lab)
    try:
        yield pools
    finally:
        pools.set(0)
        pools.wait(lambda p: not p["vms"], "empty")
        pools.session.delete(f"{lab.url}/api/v1/admin/pools/{PLAN}", timeout=10)
        deadline = time.monotonic() + 30
        while pool_vms_in_proxmox(lab) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert pool_vms_in_proxmox(lab) == {}


def tags(vm) -> set[str]:
    return set(str(vm.config.get("tags") or "").replace(",", ";").split(";")) - {""}


def test_a_create_takes_a_running_pool_vm_and_the_pool_refills(lab, pools, fresh_user):
    pools.set(2)
    pool = pools.ready(2)
    waiting = {vm["vmid"]: vm for vm in pool["vms"]}
    assert set(waiting) == set(pool_vms_in_proxmox(lab))
    for vmid, entry in waiting.items():
        vm = lab.vm(vmid)
        assert vm.name == entry["name"] and vm.status == "running" and entry["ipAddress"]
        assert (int(vm.config["cores"]), int(vm.config["memory"])) == (8, 8192)
        assert {"cloud-desktop", "cds-pool"} <= tags(vm)

    api = Api(lab.url, lab.token(fresh_user))
    created = api.create(fresh_user, plan=PLAN)
    assert created.status_code == 201, created.text
    desktop_id = created.json()["data"]["id"]
    assert "ready in the warm pool" in created.json()["data"]["statusMessage"]
    started = time.monotonic()
    data = api.wait_settled(desktop_id, timeout=60)
    assert data["status"] == "RUNNING", data
    print(f"desktop {desktop_id} RUNNING from the warm pool in {time.monotonic() - started:.1f} s")  # figures: make bench

    row = desktop_row(desktop_id)
    assert row.vmid in waiting, "the desktop did not get a pool VM"
    vm = lab.vm(row.vmid)
    assert vm.name == f"cds-desktop-{desktop_id}" and vm.status == "running"
    assert "cds-pool" not in tags(vm) and f"cds-user-{fresh_user.lower()}" in tags(vm)
    assert row.ip_address == waiting[row.vmid]["ipAddress"]
    assert [c["name"] for c in lab.connections().values()].count(f"cds-desktop-{desktop_id}") == 1
    history = events(desktop_id)
    assert [s for s, _, _ in history] == CREATE_PROGRESSION
    assert not [m for _, m, _ in history if "Cloning" in m], "a pool VM is not cloned again"
    connect = api.connect(desktop_id)
    assert connect.status_code == 200 and connect.json()["data"]["connectionUrl"]

    # The pool makes up for it with a new VM; the taken one is no longer the pool's.
    refilled = pools.ready(2)
    assert row.vmid not in {vm["vmid"] for vm in refilled["vms"]}
    assert len(pool_vms_in_proxmox(lab)) == 2

    # A second user gets another pool VM, never the first one's.
    other = f"{fresh_user}_b"
    api_b = Api(lab.url, lab.token(other))
    second_id = api_b.create(other, plan=PLAN).json()["data"]["id"]
    assert api_b.wait_settled(second_id, timeout=60)["status"] == "RUNNING"
    assert desktop_row(second_id).vmid in {vm["vmid"] for vm in refilled["vms"]}
    assert desktop_row(second_id).vmid != row.vmid

    # Deleting them removes their VMs (named as desktops now) and the pool's record of them.
    for client, some_id in ((api, desktop_id), (api_b, second_id)):
        assert client.delete(some_id).status_code == 200
        assert client.wait_settled(some_id)["status"] == "DELETED"
    assert row.vmid not in lab.vms()
    with db.connection_context():
        assert not PoolVm.select().where(PoolVm.desktop.in_([desktop_id, second_id])).exists()
        assert not VmidLease.select().where(VmidLease.vmid == row.vmid).exists()


def test_a_stopped_pool_vm_is_started_by_the_create(lab, pools, fresh_user):
    pools.set(1, power="stopped")
    [entry] = pools.ready(1)["vms"]
    assert lab.vm(entry["vmid"]).status == "stopped" and entry["ipAddress"] is None
    api = Api(lab.url, lab.token(fresh_user))
    desktop_id = api.create(fresh_user, plan=PLAN).json()["data"]["id"]
    assert api.wait_settled(desktop_id, timeout=90)["status"] == "RUNNING"
    row = desktop_row(desktop_id)
    assert row.vmid == entry["vmid"] and lab.vm(row.vmid).status == "running"
    assert api.delete(desktop_id).status_code == 200
    assert api.wait_settled(desktop_id)["status"] == "DELETED"


def test_a_failed_fill_is_retried_by_its_job_leaves_nothing_and_the_pool_fills_again(lab, pools):
    """A fill job retries a failed step as a desktop's create does (the engine's PlaybookJob); one
    that fails every attempt marks the pool failed, and the pool fills again after pool_retry_after."""
    attempts = lab.settings.provisioning_attempts
    suffix = f"/nodes/pve1/qemu/{template_vmid(lab, PLAN)}/clone"
    with pve_fault(lab, "POST", suffix, status=500, message="clone failed: storage is full", times=attempts):
        pools.set(1)
        failed = pools.wait(lambda p: p["lastFailure"], "marked failed", timeout=60)
    assert "storage is full" in failed["lastFailure"], failed
    assert f"gave up after {attempts} attempts" in failed["lastFailure"], failed
    # The rescue removed the half-made VM; after pool_retry_after the pool fills again.
    ready = pools.ready(1, timeout=120)
    assert [vm["state"] for vm in ready["vms"]] == ["READY"]
    assert set(pool_vms_in_proxmox(lab)) == {ready["vms"][0]["vmid"]}


def test_shrinking_the_pool_deletes_its_vms_and_frees_their_ids(lab, pools):
    pools.set(2)
    vmids = {vm["vmid"] for vm in pools.ready(2)["vms"]}
    pools.set(0)
    pools.wait(lambda p: not p["vms"], "empty", timeout=60)
    deadline = time.monotonic() + 30
    while set(pool_vms_in_proxmox(lab)) & vmids and time.monotonic() < deadline:
        time.sleep(0.3)
    assert not set(lab.vms()) & vmids
    with db.connection_context():
        assert not VmidLease.select().where(VmidLease.vmid.in_(list(vmids))).exists()


def test_a_pool_vm_whose_vm_vanished_is_failed_by_reconcile_and_replaced(lab, pools):
    import datetime as dt

    from controlplane.models import utcnow
    pools.set(1)
    [entry] = pools.ready(1)["vms"]
    lab.services.call(lambda: lab.pve.vms.remove(lab.pve.vm(entry["vmid"])))  # deleted behind our back
    with db.connection_context():  # READY for a while (reconcile leaves fresh ones alone)
        PoolVm.update(ready_at=utcnow() - dt.timedelta(minutes=5)).where(PoolVm.id == entry["id"]).execute()
    response = pools.session.post(f"{lab.url}/api/v1/admin/policies/reconcile", json={}, timeout=30)
    assert response.status_code == 200, response.text
    [action] = [a for a in response.json()["data"]["actions"] if a["target"] == f"pool vm {entry['id']}"]
    assert action["action"] == "fail" and action["done"] is True
    # A new pool VM (SQLite may give it the removed one's id: compare when it was made too).
    replaced = pools.wait(lambda p: p["ready"] == 1 and len(p["vms"]) == 1
                          and (p["vms"][0]["id"], p["vms"][0]["createdAt"]) != (entry["id"], entry["createdAt"]),
                          "refilled with a new VM")
    assert replaced["vms"][0]["vmid"] in lab.vms()
