"""The one create path (services/lifecycle.py enqueue_create) when Redis refuses the job: nothing was
made yet, so nothing is kept (no record, no VM-id or network lease, no shared folder, a taken warm
pool VM given back) and each API answers in its own envelope; the user can simply try again."""
from __future__ import annotations

import pytest
import redis

from controlplane.extensions import db
from controlplane.models import Desktop, NetworkLease, PoolVm, PoolVmState, Project, VmidLease
from controlplane.services import jobs


@pytest.fixture
def refusing_queue(monkeypatch):
    """Redis refuses every job (the API's other Redis uses, rate limits among them, still work)."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise redis.ConnectionError("Connection refused")
    monkeypatch.setattr(jobs.queue, "enqueue", refuse)
    return calls


def test_a_desktop_create_the_queue_refuses_leaves_nothing_and_can_be_retried(client, auth, refusing_queue,
                                                                              monkeypatch):
    answer = client.post("/api/v1/desktops", json={"userId": "user_noqueue"}, headers=auth("user_noqueue"))
    assert answer.status_code == 500, answer.get_data(as_text=True)
    body = answer.get_json()
    assert (body["success"], body["error"]) == (False, "INFRASTRUCTURE_ERROR")
    assert body["message"] == "Failed to create desktop: the job queue is unavailable"
    assert refusing_queue, "the create never reached the queue"
    with db.connection_context():
        assert not Desktop.select().where(Desktop.user_id == "user_noqueue").exists()
        assert not VmidLease.select().where(VmidLease.desktop.is_null(False)).exists()
    monkeypatch.undo()  # Redis takes jobs again: the same create goes through
    again = client.post("/api/v1/desktops", json={"userId": "user_noqueue"}, headers=auth("user_noqueue"))
    assert again.status_code == 201, again.get_data(as_text=True)


def test_a_warm_pool_vm_taken_by_a_create_the_queue_refuses_is_given_back(client, auth, base_settings,
                                                                          refusing_queue):
    with db.connection_context():
        vm = PoolVm.create(plan="BASIC", template="tmpl-debian12-desktop", vmid=10500, node="pve1", power="running",
                           state=PoolVmState.READY.value, message="Ready", ip_address="10.66.0.50")
        VmidLease.create(vmid=10500, pool_vm_id=vm.id)
    answer = client.post("/api/v1/desktops", json={"userId": "user_poolnoqueue"}, headers=auth("user_poolnoqueue"))
    assert answer.status_code == 500 and answer.get_json()["error"] == "INFRASTRUCTURE_ERROR"
    with db.connection_context():
        back = PoolVm.get_by_id(vm.id)
        assert (back.state, back.desktop_id) == (PoolVmState.READY.value, None), back.message
        lease = VmidLease.get(VmidLease.vmid == 10500)
        assert (lease.pool_vm_id, lease.desktop_id) == (vm.id, None)


def test_a_project_create_the_queue_refuses_leaves_nothing(client, token, base_settings, refusing_queue):
    headers = {"Authorization": "Bearer " + token("user_pnoqueue", email="user_pnoqueue@example.com")}
    folders = base_settings.effective_shares_dir

    def shared_folders() -> set[str]:
        return {p.name for p in folders.iterdir()} if folders.exists() else set()
    before = shared_folders()
    answer = client.post("/api/projects", json={"name": "No queue"}, headers=headers)
    assert answer.status_code == 503, answer.get_data(as_text=True)
    assert answer.get_json() == {"error": {"code": "SERVICE_UNAVAILABLE",
                                           "message": "Failed to create project: the job queue is unavailable"}}
    with db.connection_context():
        assert not Project.select().where(Project.owner_id == "user_pnoqueue").exists()
        assert not NetworkLease.select().exists()
        assert not VmidLease.select().where(VmidLease.project_id.is_null(False)).exists()
    assert shared_folders() == before  # its folder, made before the enqueue, went with it
