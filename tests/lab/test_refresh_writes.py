"""`GET /desktops/{id}/status?refresh=true` against a real fakepve cluster of two nodes over HTTPS:
the VM is found wherever the cluster has it (a VM migrated to another node is not marked FAILED),
and what the refresh concludes is written only if the desktop's status and job are still those it
read before asking Proxmox (a delete, or another operation, accepted meanwhile is left alone)."""
from __future__ import annotations

import time

import pytest

from controlplane.extensions import db
from controlplane.models import Desktop, DesktopEvent

from .cluster import fakepve_cluster

pytestmark = pytest.mark.filterwarnings("ignore:Unverified HTTPS request")
BASE = "/api/v1/desktops"
USER = "user_refresh"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with fakepve_cluster(tmp_path_factory.mktemp("refresh"), ("pve2",)) as running:
        yield running


@pytest.fixture
def settings(base_settings, cluster):
    _, proxmox = cluster
    return base_settings.replace(proxmox_host="127.0.0.1", proxmox_port=proxmox.pve.port, proxmox_user="root@pam",
                                 proxmox_password="secret", proxmox_api_timeout=5.0)


@pytest.fixture
def api(settings, client):
    """A test client of an app that asks the cluster (client: on an empty database)."""
    from controlplane import create_app
    return create_app(settings).test_client()


def on_cluster(cluster, fn):
    loop, proxmox = cluster

    async def call():
        return fn(proxmox.pve)
    return loop.run(call())


def vm_on(cluster, vmid: int, node: str, status: str = "running") -> None:
    def add(pve):
        if pve.vm(vmid) is not None:
            pve.vms.remove(pve.vm(vmid))
        pve.add_vm(vmid, f"cds-desktop-{vmid}", node=node, status=status)
    on_cluster(cluster, add)


def migrate(cluster, vmid: int, target: str) -> None:
    """fakepve's migration task (qmigrate), to its end."""
    loop, proxmox = cluster
    loop.run(proxmox.pve.migrate(vmid, target, secs=1))
    deadline = time.monotonic() + 10
    while on_cluster(cluster, lambda pve: pve.vm(vmid).node) != target:
        assert time.monotonic() < deadline, "the migration did not finish"
        time.sleep(0.05)


def desktop(vmid: int, status: str = "RUNNING", node: str = "pve1", job_id: str | None = "job-create-1") -> int:
    with db.connection_context():
        return Desktop.create(user_id=USER, name="d", plan="BASIC", cpu_cores=2, memory_mb=2048, status=status,
                              status_message="Desktop is ready", vmid=vmid, node=node, job_id=job_id,
                              operation="create", ip_address="10.66.0.9", protocol="vnc").id


def row(desktop_id: int) -> Desktop:
    with db.connection_context():
        return Desktop.get_by_id(desktop_id)


def statuses_recorded(desktop_id: int) -> list[str]:
    with db.connection_context():
        return [e.status for e in DesktopEvent.select().where(DesktopEvent.desktop == desktop_id)]


def refresh(api, auth, desktop_id: int):
    response = api.get(f"{BASE}/{desktop_id}/status?refresh=true", headers=auth(USER))
    assert response.status_code == 200, response.get_json()
    return response.get_json()["data"]


def test_a_refresh_finds_a_vm_migrated_to_another_node_and_does_not_fail_the_desktop(cluster, api, auth):
    vm_on(cluster, 7101, "pve1")
    desktop_id = desktop(7101)
    migrate(cluster, 7101, "pve2")
    assert refresh(api, auth, desktop_id)["status"] == "RUNNING"
    assert row(desktop_id).status == "RUNNING" and row(desktop_id).node == "pve2"  # where it is now
    assert "FAILED" not in statuses_recorded(desktop_id)
    # Its live state is read where it is: stopped there, the desktop is STOPPED.
    on_cluster(cluster, lambda pve: setattr(pve.vm(7101), "status", "stopped"))
    assert refresh(api, auth, desktop_id)["status"] == "STOPPED"


def test_a_refresh_still_fails_a_desktop_whose_vm_the_cluster_does_not_have(cluster, api, auth):
    vm_on(cluster, 7102, "pve2")
    on_cluster(cluster, lambda pve: pve.vms.remove(pve.vm(7102)))
    desktop_id = desktop(7102)
    assert refresh(api, auth, desktop_id)["status"] == "FAILED"
    assert row(desktop_id).status_message == "VM 7102 no longer exists in Proxmox VE"


@pytest.mark.parametrize("meanwhile", [
    {"status": "DELETING", "operation": "delete", "job_id": "job-delete-2", "status_message": "Deleting"},
    {"job_id": "job-start-3", "operation": "start", "status_message": "Started again"},  # same status, new job
], ids=["a delete accepted", "another operation ran"])
def test_a_refresh_racing_another_change_leaves_the_newer_state(cluster, api, auth, monkeypatch, meanwhile):
    """The VM is gone (a refresh alone would mark the desktop FAILED), but while Proxmox is asked the
    record changes: the refresh writes nothing and answers the record as it is now."""
    from controlplane.services import proxmox
    desktop_id = desktop(7103)  # no VM 7103 anywhere in the cluster
    real = proxmox.vm_power_state

    def changing_meanwhile(*args, **kwargs):
        with db.connection_context():
            Desktop.update(**meanwhile).where(Desktop.id == desktop_id).execute()
        return real(*args, **kwargs)
    monkeypatch.setattr(proxmox, "vm_power_state", changing_meanwhile)
    answered = refresh(api, auth, desktop_id)
    after = row(desktop_id)
    assert (after.status, after.job_id, after.status_message) == (
        meanwhile.get("status", "RUNNING"), meanwhile["job_id"], meanwhile["status_message"])
    assert answered["status"] == after.status
    assert "FAILED" not in statuses_recorded(desktop_id)


def test_a_failed_stop_finds_the_vm_still_running_on_the_node_it_migrated_to(cluster, settings, client):
    """After a failed stop, the worker asks whether the VM still runs (then the desktop is RUNNING
    again, not FAILED): it asks wherever the cluster has it."""
    from controlplane.tasks.engine import _still_running
    vm_on(cluster, 7104, "pve1")
    migrate(cluster, 7104, "pve2")
    with db.connection_context():
        assert _still_running(settings, Desktop.get_by_id(desktop(7104)))
