"""Projects end to end on the lab: the projects API → Redis → real worker processes → the
project playbooks (SDN network + VM) → fakepve's SDN model; teardown leaves nothing behind."""
from __future__ import annotations

import time

import pytest
import requests

from controlplane.extensions import db
from controlplane.models import (ChatMessage, Invitation, NetworkLease, Project, ProjectEvent, ProjectMember,
                                 VmidLease)

pytestmark = [pytest.mark.playbooks, pytest.mark.timeout(300)]  # the API side: tests/api, both databases


class Client:
    def __init__(self, lab, user):
        from controlplane.auth import mint_lab_token
        self.base = lab.url
        self.session = requests.Session()
        token = mint_lab_token(lab.settings, user, email=f"{user}@example.com", name=user)
        self.session.headers["Authorization"] = f"Bearer {token}"

    def call(self, method, path, **kwargs):
        return self.session.request(method, self.base + path, timeout=10, **kwargs)

    def wait(self, project_id, statuses, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = self.call("GET", f"/api/projects/{project_id}")
            if response.status_code == 404 and "gone" in statuses:
                return None
            body = response.json()
            if response.status_code == 200 and body["status"] in statuses:
                return body
            time.sleep(0.3)
        raise AssertionError(f"project {project_id} not {statuses} after {timeout}s: {body}")


def sdn_vnets(lab) -> set[str]:
    from controlplane.services.proxmox import with_login  # a fresh login if another test revoked the tickets
    return {v["vnet"] for v in with_login(lab.settings, lambda pve: pve.cluster.sdn.vnets.get())}


def test_project_lifecycle(lab, fresh_user):
    owner = Client(lab, fresh_user)
    created = owner.call("POST", "/api/projects", json={"name": "Team space", "os": "debian12"})
    assert created.status_code == 201, created.text
    project_id = created.json()["project_id"]

    running = owner.wait(project_id, {"running", "failed"})
    assert running["status"] == "running", running
    with db.connection_context():
        row = Project.get(Project.public_id == project_id)
        messages = [e.message for e in ProjectEvent.select().where(ProjectEvent.project == row.id)
                    .order_by(ProjectEvent.id)]
    assert "Creating the project's network" in messages and "Cloning VM from template" in messages
    assert messages[-1] == "Project is ready"
    network = row.network_cidr.rsplit(".", 1)[0]
    assert running["vm_ip"] == f"{network}.2" and running["network"] == f"p{row.id}"
    assert running["status_message"] == "Project is ready"

    vm = lab.vm(row.vmid)
    assert vm.name == f"cds-project-{row.id}" and vm.status == "running"
    assert f"bridge=p{row.id}" in vm.config["net0"]
    assert vm.config["ipconfig0"] == f"ip={network}.2/24,gw={network}.1"
    assert f"p{row.id}" in sdn_vnets(lab)

    # Its screen is registered in Guacamole (no Guacamole user is granted it: /connect's links carry it).
    screens = {ident: c for ident, c in lab.connections().items() if c["name"] == f"cds-project-{row.id}"}
    assert list(screens) == [row.guacamole_connection_id], screens
    assert screens[row.guacamole_connection_id]["parameters"]["hostname"] == f"{network}.2"

    # Measured provisioning time feeds the next estimate.
    assert row.provisioning_finished_at is not None

    # Its shared folder (WebDAV at /shares): made on create, the owner's credentials write to it.
    folder = running["shared_folder"]
    assert running["shared_folder_url"] == folder["url"] and folder["username"] == project_id
    share = f"{lab.url}/shares/{project_id}/"
    put = requests.put(share + "hello.txt", data=b"hi", auth=(folder["username"], folder["password"]), timeout=10)
    assert put.status_code == 201, put.text
    share_dir = lab.settings.effective_shares_dir / project_id
    assert (share_dir / "hello.txt").read_bytes() == b"hi"

    # An editor can stop and start it; a viewer cannot.
    editor_user, viewer_user = fresh_user + "_ed", fresh_user + "_vw"
    for user, role in ((editor_user, "editor"), (viewer_user, "viewer")):
        invitation = owner.call("POST", f"/api/projects/{project_id}/collaborators",
                                json={"email": f"{user}@example.com", "role": role}).json()["invitation_id"]
        assert Client(lab, user).call("POST", f"/api/invitations/{invitation}/accept").status_code == 200
    editor, viewer = Client(lab, editor_user), Client(lab, viewer_user)
    assert viewer.call("POST", f"/api/projects/{project_id}/stop").status_code == 403
    assert editor.call("POST", f"/api/projects/{project_id}/stop").status_code == 200
    assert owner.wait(project_id, {"stopped", "failed"})["status"] == "stopped"
    assert lab.vm(row.vmid).status == "stopped"
    assert editor.call("POST", f"/api/projects/{project_id}/start").status_code == 200
    again = owner.wait(project_id, {"running", "failed"})
    assert again["status"] == "running" and again["vm_ip"] == f"{network}.2"

    # Delete (owner only): VM, network, share, chat history and members all go.
    with db.connection_context():
        ChatMessage.create(project=row.id, user_id=fresh_user, role="user", content="remember me")
    assert editor.call("DELETE", f"/api/projects/{project_id}").status_code == 403
    deleted = owner.call("DELETE", f"/api/projects/{project_id}")
    assert deleted.json() == {"success": True, "message": "Project deleted successfully"}
    assert owner.wait(project_id, {"gone", "failed"}) is None
    with db.connection_context():
        row = Project.get_by_id(row.id)
        assert row.status == "deleted" and row.deleted_at is not None
        for model, field in ((ChatMessage, ChatMessage.project), (ProjectMember, ProjectMember.project),
                             (Invitation, Invitation.project), (NetworkLease, NetworkLease.project)):
            assert not model.select().where(field == row.id).exists(), model
        assert not VmidLease.select().where(VmidLease.project_id == row.id).exists()
    assert row.vmid not in lab.vms()
    assert f"p{row.id}" not in sdn_vnets(lab)
    assert f"cds-project-{row.id}" not in {c["name"] for c in lab.connections().values()}
    # The worker removed the shared folder when it marked the project deleted; the share refuses.
    assert not share_dir.exists()
    assert requests.get(share + "hello.txt", auth=(folder["username"], folder["password"]),
                        timeout=10).status_code == 401
    assert owner.call("GET", "/api/projects").json() == {"success": True, "projects": []}


def test_failed_project_create_cleans_up(lab, fresh_user):
    # A clone refused for good (Proxmox's "Parameter verification failed" is never retried): the
    # subject is what a failed create leaves behind, not the retries (the next test has those).
    owner = Client(lab, fresh_user)
    lab.services.call(lambda: lab.pve.fail("POST", "/nodes/pve1/qemu/9001/clone", 400,
                                           "Parameter verification failed. (lab fault: no space)"))
    try:
        project_id = owner.call("POST", "/api/projects", json={"name": "Doomed"}).json()["project_id"]
        failed = owner.wait(project_id, {"failed", "running"})
    finally:
        lab.services.call(lambda: lab.pve.failures.clear())
    assert failed["status"] == "failed"
    assert failed["status_message"].startswith("Create failed at 'Clone the VM from its template'"), failed
    assert "lab fault: no space" in failed["status_message"]
    with db.connection_context():
        row = Project.get(Project.public_id == project_id)
        messages = [e.message for e in ProjectEvent.select().where(ProjectEvent.project == row.id)]
    assert not any(" of 3 in " in m for m in messages), messages  # one attempt
    assert row.vmid not in lab.vms() and f"p{row.id}" not in sdn_vnets(lab)
    assert f"cds-project-{row.id}" not in {c["name"] for c in lab.connections().values()}
    # A failed project can be deleted, which finishes cleanly.
    assert owner.call("DELETE", f"/api/projects/{project_id}").status_code == 200
    assert owner.wait(project_id, {"gone", "failed"}) is None


def test_a_project_create_whose_clone_fails_once_is_run_again_and_runs(lab, fresh_user):
    owner = Client(lab, fresh_user)
    lab.services.call(lambda: lab.pve.fail("POST", "/nodes/pve1/qemu/9001/clone", 500, "lab fault: no space",
                                           times=1))
    try:
        project_id = owner.call("POST", "/api/projects", json={"name": "Lucky"}).json()["project_id"]
        running = owner.wait(project_id, {"failed", "running"})
    finally:
        lab.services.call(lambda: lab.pve.failures.clear())
    assert running["status"] == "running", running
    with db.connection_context():
        row = Project.get(Project.public_id == project_id)
        messages = [e.message for e in ProjectEvent.select().where(ProjectEvent.project == row.id)
                    .order_by(ProjectEvent.id)]
    retried = [m for m in messages if "lab fault: no space" in m]
    assert len(retried) == 1 and retried[0].startswith("Create failed at 'Clone the VM from its template'"), messages
    assert "attempt 2 of 3" in retried[0], retried
    assert messages[-1] == "Project is ready"
    # The first attempt's network was removed and made again; the project has exactly one.
    assert lab.vm(row.vmid).status == "running" and f"p{row.id}" in sdn_vnets(lab)


@pytest.mark.parametrize("step", ["Creating the project's network", "Cloning VM from template"])
def test_a_project_deleted_while_it_is_being_created_is_cancelled_and_leaves_nothing(lab, fresh_user, step):
    """As the contract's own frontend does: the create stops where it is, the delete removes the
    network and VM it had made, and the project is gone with its leases."""
    owner = Client(lab, fresh_user)
    from controlplane.services.queue import get_redis, project_channel

    from .helpers import wait_for_status_event
    lab.services.call(lambda: lab.pve.slow_network(0.1 / lab.services.config.time_scale))
    listener = get_redis(lab.settings.redis_url).pubsub()
    try:
        project_id = owner.call("POST", "/api/projects", json={"name": "Changed my mind"}).json()["project_id"]
        listener.subscribe(project_channel(project_id))  # then the project as it is: no event is missed

        def now():
            body = owner.call("GET", f"/api/projects/{project_id}").json()
            return body["status"], body["status_message"]
        wait_for_status_event(listener, now, ("provisioning", step))
        cancelled = owner.call("DELETE", f"/api/projects/{project_id}")
    finally:
        lab.services.call(lambda: lab.pve.slow_network(0))
        listener.close()
    assert cancelled.json() == {"success": True, "message": "Project deleted successfully"}, cancelled.text
    assert owner.wait(project_id, {"gone", "failed"}) is None
    with db.connection_context():
        row = Project.get(Project.public_id == project_id)
        messages = [(e.status, e.message) for e in ProjectEvent.select().where(ProjectEvent.project == row.id)
                    .order_by(ProjectEvent.id)]
        assert not NetworkLease.select().where(NetworkLease.project == row.id).exists()
        assert not VmidLease.select().where(VmidLease.project_id == row.id).exists()
    at = messages.index(("deleting", "Create cancelled; removing the project"))
    assert messages[at - 1] == ("provisioning", step) and messages[-1][0] == "deleted", messages
    assert "running" not in {status for status, _ in messages}, messages
    assert row.vmid not in lab.vms() and f"p{row.id}" not in sdn_vnets(lab)
    assert f"cds-project-{row.id}" not in {c["name"] for c in lab.connections().values()}
