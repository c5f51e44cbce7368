"""Contract tests of the projects API (projects-api.md): projects, collaborators, invitations, the
error envelope, and the permission table for every role × action. Real app, database and Redis;
no worker (provisioning is end-to-end tested in tests/e2e)."""
from __future__ import annotations

import re

import pytest
from rq import Queue

from controlplane.extensions import db
from controlplane.models import NetworkLease, Project, ProjectEvent, ProjectMember, VmidLease
from controlplane.services.queue import QUEUE_NAME

Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@pytest.fixture
def people(token):
    """Bearer headers for: the owner, an editor, a viewer, an outsider, an admin."""
    def headers(user, admin=False):
        return {"Authorization": "Bearer " + token(user, admin, email=f"{user}@example.com",
                                                   name=user.replace("_", " ").title())}
    return {"owner": headers("user_owner"), "editor": headers("user_editor"), "viewer": headers("user_viewer"),
            "outsider": headers("user_outsider"), "admin": headers("user_admin", admin=True)}


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert list(body) == ["error"]
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert set(body["error"]) <= {"code", "message", "details"}
    return body["error"]


def create_project(client, headers, **body):
    body = {"name": "My Project", **body}
    response = client.post("/api/projects", json=body, headers=headers)
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()["project_id"]


def set_status(project_id: str, status: str, **fields):
    with db.connection_context():
        Project.update(status=status, **fields).where(Project.public_id == project_id).execute()


def team(client, people) -> str:
    """A project of user_owner with user_editor and user_viewer as collaborators (invited, accepted)."""
    project_id = create_project(client, people["owner"])
    for who in ("editor", "viewer"):
        invited = client.post(f"/api/projects/{project_id}/collaborators", headers=people["owner"],
                              json={"email": f"user_{who}@example.com", "role": who}).get_json()
        accepted = client.post(f"/api/invitations/{invited['invitation_id']}/accept", headers=people[who])
        assert accepted.status_code == 200, accepted.get_data(as_text=True)
    return project_id


# ---- projects ------------------------------------------------------------------------------------------

def test_create_project(client, people, redis_conn):
    response = client.post("/api/projects", headers=people["owner"],
                           json={"name": "My New Project", "description": "Project description", "os": "windows11"})
    assert response.status_code == 201
    body = response.get_json()
    assert list(body) == ["project_id", "status", "estimated_time"]
    assert body["project_id"].startswith("proj_") and body["status"] == "provisioning"
    assert re.match(r"^\d+(-\d+)? (minutes?|seconds)$", body["estimated_time"])
    assert response.headers["Location"].endswith(f"/api/projects/{body['project_id']}")
    with db.connection_context():
        project = Project.get(Project.public_id == body["project_id"])
        assert project.os == "windows11" and project.owner_id == "user_owner"
        assert VmidLease.get(VmidLease.vmid == project.vmid).project_id == project.id
        assert NetworkLease.get(NetworkLease.project == project.id).cidr == project.network_cidr
        assert project.network_cidr.startswith("172.30.") and project.network_cidr.endswith(".0/24")
        owner = ProjectMember.get(ProjectMember.project == project.id)
        assert (owner.user_id, owner.role, owner.email) == ("user_owner", "owner", "user_owner@example.com")
        assert [e.status for e in ProjectEvent.select().where(ProjectEvent.project == project.id)] == ["provisioning"]
    job = Queue(QUEUE_NAME, connection=redis_conn).fetch_job(project.job_id)
    assert job.args == (project.id, "create", False) and job.meta["kind"] == "project"


def test_projects_get_distinct_networks_and_vm_ids(client, people):
    ids = [create_project(client, people["owner"]) for _ in range(3)]
    with db.connection_context():
        rows = [Project.get(Project.public_id == i) for i in ids]
    assert len({r.network_cidr for r in rows}) == 3 and len({r.vmid for r in rows}) == 3


def test_os_defaults_to_windows11(client, people):
    project_id = create_project(client, people["owner"])
    assert client.get(f"/api/projects/{project_id}", headers=people["owner"]).get_json()["os"] == "windows11"


def test_estimated_time_comes_from_measured_provisioning(client, people):
    import datetime as dt
    first = create_project(client, people["owner"])
    with db.connection_context():
        project = Project.get(Project.public_id == first)
        Project.update(provisioning_finished_at=project.provisioning_started_at + dt.timedelta(seconds=42)) \
            .where(Project.id == project.id).execute()
    body = client.post("/api/projects", json={"name": "again"}, headers=people["owner"]).get_json()
    assert body["estimated_time"] == "42 seconds"


@pytest.mark.parametrize("payload,field", [({}, "name"), ({"name": "  "}, "name"), ({"name": "x" * 101}, "name"),
                                           ({"name": 5}, "name"), ({"name": "p", "os": "beos"}, "os"),
                                           ({"name": "p", "description": ["x"]}, "description")])
def test_create_validation(client, people, payload, field):
    error = assert_error(client.post("/api/projects", json=payload, headers=people["owner"]), 400, "INVALID_REQUEST")
    assert field in error["details"]


def test_create_with_bad_json(client, people):
    response = client.post("/api/projects", data="{nope", headers={**people["owner"], "Content-Type": "application/json"})
    assert_error(response, 400, "INVALID_REQUEST")


def test_list_projects_shows_only_mine(client, people):
    mine = create_project(client, people["owner"])
    create_project(client, people["outsider"])
    body = client.get("/api/projects", headers=people["owner"]).get_json()
    assert [p["id"] for p in body["projects"]] == [mine]
    project = body["projects"][0]
    assert list(project) == ["id", "name", "status", "created_at", "vm_ip", "shared_folder_url"]
    assert Z.match(project["created_at"]) and project["vm_ip"] is None


def test_list_answers_say_success_beside_their_list(client, people):
    """As the projects API's other answers do, and as clients written for the contract's origin read
    a list only when the answer says `success: true`."""
    project_id = create_project(client, people["owner"])
    for path, key in (("/api/projects", "projects"), (f"/api/projects/{project_id}/collaborators", "collaborators"),
                      ("/api/invitations", "invitations"), (f"/api/chat/{project_id}/history", "messages")):
        response = client.get(path, headers=people["owner"])
        assert response.status_code == 200, (path, response.get_json())
        body = response.get_json()
        assert body["success"] is True and isinstance(body[key], list), (path, body)


def test_project_details(client, people):
    project_id = team(client, people)
    set_status(project_id, "running", vm_ip="172.30.0.2", network="p1")
    body = client.get(f"/api/projects/{project_id}", headers=people["viewer"]).get_json()
    assert body["id"] == project_id and body["status"] == "running" and body["vm_ip"] == "172.30.0.2"
    assert body["network"] == "p1" and Z.match(body["created_at"]) and body["role"] == "viewer"
    assert [(c["user_id"], c["role"], c["email"]) for c in body["collaborators"]] == [
        ("user_owner", "owner", "user_owner@example.com"), ("user_editor", "editor", "user_editor@example.com"),
        ("user_viewer", "viewer", "user_viewer@example.com")]


def test_unknown_project(client, people):
    error = assert_error(client.get("/api/projects/proj_999", headers=people["owner"]), 404, "NOT_FOUND")
    assert error["details"] == {"project_id": "proj_999"}


def test_delete_project(client, people):
    project_id = create_project(client, people["owner"])
    set_status(project_id, "running")
    response = client.delete(f"/api/projects/{project_id}", headers=people["owner"])
    assert response.status_code == 200
    assert response.get_json() == {"success": True, "message": "Project deleted successfully"}
    assert client.get(f"/api/projects/{project_id}", headers=people["owner"]).get_json()["status"] == "deleting"


@pytest.mark.parametrize("status", ["provisioning", "starting"])
def test_delete_while_it_is_being_created_or_started_cancels_it(client, people, redis_conn, status):
    """As the contract's own frontend does (it cancels a project while it is being created)."""
    project_id = create_project(client, people["owner"])
    create_job = Project.get(Project.public_id == project_id).job_id
    set_status(project_id, status)
    response = client.delete(f"/api/projects/{project_id}", headers=people["owner"])
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json() == {"success": True, "message": "Project deleted successfully"}
    project = client.get(f"/api/projects/{project_id}", headers=people["owner"]).get_json()
    assert project["status"] == "deleting"
    assert project["status_message"] == "Create cancelled; removing the project"
    queue = Queue(QUEUE_NAME, connection=redis_conn)
    delete_job = queue.fetch_job(Project.get(Project.public_id == project_id).job_id)
    assert delete_job.meta["after"] == create_job and queue.fetch_job(create_job).get_status() == "canceled"


@pytest.mark.parametrize("status", ["stopping", "deleting"])
def test_delete_while_busy_is_refused(client, people, status):
    project_id = create_project(client, people["owner"])
    set_status(project_id, status)
    assert_error(client.delete(f"/api/projects/{project_id}", headers=people["owner"]), 400, "INVALID_REQUEST")


def test_start_and_stop(client, people):
    project_id = create_project(client, people["owner"])
    set_status(project_id, "running")
    stopped = client.post(f"/api/projects/{project_id}/stop", headers=people["owner"], json={"force": True})
    assert stopped.status_code == 200 and stopped.get_json()["status"] == "stopping"
    assert_error(client.post(f"/api/projects/{project_id}/stop", headers=people["owner"]), 400, "INVALID_REQUEST")
    set_status(project_id, "stopped")
    started = client.post(f"/api/projects/{project_id}/start", headers=people["owner"])
    assert started.status_code == 200 and started.get_json()["status"] == "starting"


def test_deleted_project_is_gone_for_everyone(client, people):
    project_id = create_project(client, people["owner"])
    set_status(project_id, "deleted")
    assert_error(client.get(f"/api/projects/{project_id}", headers=people["owner"]), 404, "NOT_FOUND")
    assert client.get("/api/projects", headers=people["owner"]).get_json() == {"success": True, "projects": []}


# ---- collaboration -----------------------------------------------------------------------------------------

def test_invite_accept_list_remove(client, people):
    project_id = create_project(client, people["owner"])
    invited = client.post(f"/api/projects/{project_id}/collaborators", headers=people["owner"],
                          json={"email": "User_Editor@Example.com", "role": "editor"})
    assert invited.status_code == 201
    body = invited.get_json()
    assert body["success"] is True and body["invitation_id"].startswith("inv_") and body["status"] == "sent"

    # Not a member until accepted: the project is invisible to the invitee.
    assert_error(client.get(f"/api/projects/{project_id}", headers=people["editor"]), 404, "NOT_FOUND")
    mine = client.get("/api/invitations", headers=people["editor"]).get_json()["invitations"]
    assert [(i["id"], i["project_id"], i["role"], i["status"]) for i in mine] == [
        (body["invitation_id"], project_id, "editor", "sent")]
    assert client.get("/api/invitations", headers=people["viewer"]).get_json() == {"success": True, "invitations": []}
    # Someone else cannot accept it.
    assert_error(client.post(f"/api/invitations/{body['invitation_id']}/accept", headers=people["viewer"]), 404,
                 "NOT_FOUND")
    accepted = client.post(f"/api/invitations/{body['invitation_id']}/accept", headers=people["editor"]).get_json()
    assert accepted == {"success": True, "invitation_id": body["invitation_id"], "status": "accepted",
                        "project_id": project_id}
    assert_error(client.post(f"/api/invitations/{body['invitation_id']}/accept", headers=people["editor"]), 400,
                 "INVALID_REQUEST")

    collaborators = client.get(f"/api/projects/{project_id}/collaborators", headers=people["editor"]).get_json()
    assert [(c["user_id"], c["role"], c["name"]) for c in collaborators["collaborators"]] == [
        ("user_owner", "owner", "User Owner"), ("user_editor", "editor", "User Editor")]
    assert all(Z.match(c["joined_at"]) for c in collaborators["collaborators"])

    removed = client.delete(f"/api/projects/{project_id}/collaborators/user_editor", headers=people["owner"])
    assert removed.get_json() == {"success": True, "message": "Collaborator removed"}
    assert_error(client.get(f"/api/projects/{project_id}", headers=people["editor"]), 404, "NOT_FOUND")


def test_decline(client, people):
    project_id = create_project(client, people["owner"])
    invitation = client.post(f"/api/projects/{project_id}/collaborators", headers=people["owner"],
                             json={"email": "user_viewer@example.com", "role": "viewer"}).get_json()["invitation_id"]
    declined = client.post(f"/api/invitations/{invitation}/decline", headers=people["viewer"]).get_json()
    assert declined["status"] == "declined"
    assert client.get("/api/invitations", headers=people["viewer"]).get_json() == {"success": True, "invitations": []}
    assert_error(client.get(f"/api/projects/{project_id}", headers=people["viewer"]), 404, "NOT_FOUND")


def test_inviting_again_updates_the_open_invitation(client, people):
    project_id = create_project(client, people["owner"])
    url = f"/api/projects/{project_id}/collaborators"
    first = client.post(url, headers=people["owner"], json={"email": "a@example.com", "role": "viewer"}).get_json()
    second = client.post(url, headers=people["owner"], json={"email": "A@example.com", "role": "editor"}).get_json()
    assert first["invitation_id"] == second["invitation_id"]


@pytest.mark.parametrize("payload,field", [({"email": "not-an-email", "role": "editor"}, "email"),
                                           ({"email": "a@example.com", "role": "owner"}, "role"),
                                           ({"role": "viewer"}, "email"), ({"email": "a@example.com"}, "role")])
def test_invite_validation(client, people, payload, field):
    project_id = create_project(client, people["owner"])
    error = assert_error(client.post(f"/api/projects/{project_id}/collaborators", json=payload,
                                     headers=people["owner"]), 400, "INVALID_REQUEST")
    assert field in error["details"]


def test_inviting_a_member_is_refused(client, people):
    project_id = team(client, people)
    assert_error(client.post(f"/api/projects/{project_id}/collaborators", headers=people["owner"],
                             json={"email": "user_editor@example.com", "role": "viewer"}), 400, "INVALID_REQUEST")


def test_owner_cannot_be_removed_and_members_can_leave(client, people):
    project_id = team(client, people)
    assert_error(client.delete(f"/api/projects/{project_id}/collaborators/user_owner", headers=people["owner"]), 400,
                 "INVALID_REQUEST")
    left = client.delete(f"/api/projects/{project_id}/collaborators/user_viewer", headers=people["viewer"])
    assert left.status_code == 200
    assert_error(client.delete(f"/api/projects/{project_id}/collaborators/nobody", headers=people["owner"]), 404,
                 "NOT_FOUND")


# ---- the permission table: every role × action ------------------------------------------------------------

ACTIONS = {
    "read": lambda c, p, h: c.get(f"/api/projects/{p}", headers=h),
    "list_collaborators": lambda c, p, h: c.get(f"/api/projects/{p}/collaborators", headers=h),
    "invite": lambda c, p, h: c.post(f"/api/projects/{p}/collaborators", headers=h,
                                     json={"email": "new@example.com", "role": "viewer"}),
    "remove_collaborator": lambda c, p, h: c.delete(f"/api/projects/{p}/collaborators/user_viewer", headers=h),
    "stop": lambda c, p, h: c.post(f"/api/projects/{p}/stop", headers=h),
    "delete": lambda c, p, h: c.delete(f"/api/projects/{p}", headers=h),
}
# Expected HTTP status per (role, action): 404 for outsiders (they cannot see the project).
EXPECTED = {
    "owner":    {"read": 200, "list_collaborators": 200, "invite": 201, "remove_collaborator": 200, "stop": 200, "delete": 200},
    "editor":   {"read": 200, "list_collaborators": 200, "invite": 403, "remove_collaborator": 403, "stop": 200, "delete": 403},
    "viewer":   {"read": 200, "list_collaborators": 200, "invite": 403, "remove_collaborator": 200, "stop": 403, "delete": 403},
    "outsider": {"read": 404, "list_collaborators": 404, "invite": 404, "remove_collaborator": 404, "stop": 404, "delete": 404},
    "admin":    {"read": 200, "list_collaborators": 200, "invite": 201, "remove_collaborator": 200, "stop": 200, "delete": 200},
}  # noqa: E241  (viewer's remove_collaborator is leaving: removing themselves)


@pytest.mark.parametrize("role", list(EXPECTED))
@pytest.mark.parametrize("action", list(ACTIONS))
def test_permission_table(client, people, role, action):
    project_id = team(client, people)
    set_status(project_id, "running")
    response = ACTIONS[action](client, project_id, people[role])
    expected = EXPECTED[role][action]
    assert response.status_code == expected, response.get_data(as_text=True)
    if expected >= 400:
        assert_error(response, expected, {403: "FORBIDDEN", 404: "NOT_FOUND"}[expected])


def test_permission_table_in_code_matches_the_documented_one():
    from controlplane.services.projects import PERMISSIONS, Action, Role
    assert {a: {r.value for r in roles} for a, roles in PERMISSIONS.items()} == {
        Action.READ: {"owner", "editor", "viewer"}, Action.READ_CHAT: {"owner", "editor", "viewer"},
        Action.CHAT: {"owner", "editor"}, Action.OPERATE: {"owner", "editor"}, Action.DELETE: {"owner"},
        Action.MANAGE_MEMBERS: {"owner"}, Action.WRITE_SHARE: {"owner", "editor"},
        Action.CONNECT: {"owner", "editor", "viewer"}}
    assert set(Role) == {Role.OWNER, Role.EDITOR, Role.VIEWER}


# ---- auth and envelope ------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,path", [("GET", "/api/projects"), ("POST", "/api/projects"),
                                         ("GET", "/api/projects/proj_1"), ("DELETE", "/api/projects/proj_1"),
                                         ("GET", "/api/projects/proj_1/collaborators"),
                                         ("POST", "/api/projects/proj_1/collaborators"),
                                         ("DELETE", "/api/projects/proj_1/collaborators/u"),
                                         ("POST", "/api/projects/proj_1/connect"),
                                         ("GET", "/api/invitations")])
def test_every_endpoint_needs_a_token(client, method, path):
    assert_error(client.open(path, method=method, json={}), 401, "UNAUTHORIZED")


def test_unknown_route_in_the_projects_envelope(client, people):
    assert_error(client.get("/api/nothing", headers=people["owner"]), 404, "NOT_FOUND")
    assert_error(client.put("/api/projects", headers=people["owner"]), 405, "INVALID_REQUEST")


def test_desktop_api_keeps_its_own_envelope(client):
    body = client.get("/api/v1/desktops").get_json()
    assert body["success"] is False and body["error"] == "UNAUTHORIZED"


def test_openapi_documents_the_projects_api(client):
    paths = client.get("/api/v1/openapi.json").get_json()["paths"]
    for path in ("/api/projects", "/api/projects/{project_id}", "/api/projects/{project_id}/collaborators",
                 "/api/projects/{project_id}/collaborators/{user_id}", "/api/invitations",
                 "/api/invitations/{invitation_id}/accept"):
        assert path in paths
