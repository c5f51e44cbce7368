"""Contract tests of the Desktop API (desktop-api.md): every endpoint, field, status code, error code
and message, through the real app on a real database and a real Redis (no worker: jobs stay queued,
and states a worker would reach are set on the record directly)."""
from __future__ import annotations

import base64
import json
import re

import pytest
from rq import Queue

from controlplane.extensions import db
from controlplane.models import Desktop, DesktopEvent, VmidLease
from controlplane.services.queue import QUEUE_NAME

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?[+-]\d\d:\d\d$")
DESKTOP_FIELDS = ["id", "userId", "name", "status", "statusMessage", "plan", "cpuCores", "memoryMb", "ipAddress",
                  "connectionUrl", "createdAt", "updatedAt", "lastAccessedAt",
                  "expiresAt"]  # the contract's fields, then expiresAt (lifecycle policies)
BASE = "/api/v1/desktops"


def assert_error(response, status: int, code: str, path: str, message: str | None = None) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["success"] is False
    assert body["error"] == code
    assert body["path"] == path
    assert ISO.match(body["timestamp"])
    assert isinstance(body["message"], str) and body["message"]
    if message is not None:
        assert body["message"] == message
    assert set(body) <= {"success", "error", "message", "details", "path", "timestamp"}
    return body


def create(client, auth, user="user_12345", **body):
    return client.post(BASE, json={"userId": user, **body}, headers=auth(user))


def set_state(desktop_id: int, status: str, **fields) -> None:
    with db.connection_context():
        Desktop.update(status=status, **fields).where(Desktop.id == desktop_id).execute()


def running(client, auth, user="user_12345", **body) -> int:
    desktop_id = create(client, auth, user, **body).get_json()["data"]["id"]
    set_state(desktop_id, "RUNNING", status_message="Desktop is ready", ip_address="10.66.0.7",
              guacamole_connection_id="42", protocol="vnc", node="pve1")
    return desktop_id


# ---- create ----------------------------------------------------------------------------------------

def test_create_answers_201_with_the_desktop_object(client, auth, redis_conn):
    response = create(client, auth, name="Development Workspace", plan="STANDARD")
    assert response.status_code == 201
    body = response.get_json()
    assert list(body) == ["success", "message", "data", "timestamp"]
    assert body["success"] is True and body["message"] == "Desktop creation initiated successfully."
    data = body["data"]
    assert list(data) == DESKTOP_FIELDS
    assert data["userId"] == "user_12345" and data["name"] == "Development Workspace"
    assert data["status"] in ("PENDING", "PROVISIONING")
    assert (data["plan"], data["cpuCores"], data["memoryMb"]) == ("STANDARD", 4, 4096)
    assert data["ipAddress"] is None and data["connectionUrl"] is None and data["lastAccessedAt"] is None
    assert ISO.match(data["createdAt"]) and ISO.match(data["updatedAt"]) and ISO.match(body["timestamp"])

    # One job queued for it, its id on the record, a VM id leased, the first event recorded.
    with db.connection_context():
        row = Desktop.get_by_id(data["id"])
        assert row.job_id and row.operation == "create"
        assert VmidLease.get(VmidLease.vmid == row.vmid).desktop_id == row.id
        assert [e.status for e in DesktopEvent.select().where(DesktopEvent.desktop == row.id)] == ["PENDING"]
    queue = Queue(QUEUE_NAME, connection=redis_conn)
    assert queue.job_ids == [row.job_id]
    job = queue.fetch_job(row.job_id)
    assert job.args[0] == row.id and "create" in job.args


@pytest.mark.parametrize("plan,cores,memory", [("BASIC", 2, 2048), ("STANDARD", 4, 4096), ("PREMIUM", 8, 8192)])
def test_plans_size_the_desktop(client, auth, plan, cores, memory):
    data = create(client, auth, plan=plan).get_json()["data"]
    assert (data["cpuCores"], data["memoryMb"]) == (cores, memory)


def test_create_defaults(client, auth):
    data = create(client, auth).get_json()["data"]
    assert data["name"] == "Desktop-user_12345"
    assert data["plan"] == "BASIC"


def test_create_validation_reports_every_field(client, auth):
    response = client.post(BASE, json={"userId": "", "plan": "GOLD", "name": "x" * 101}, headers=auth())
    body = assert_error(response, 400, "VALIDATION_ERROR", BASE, "Invalid request parameters")
    assert body["details"] == {"userId": "User ID is required",
                               "plan": "Plan must be one of BASIC, STANDARD, or PREMIUM",
                               "name": "Name must be at most 100 characters"}


@pytest.mark.parametrize("payload,field", [
    ({}, "userId"),
    ({"userId": "   "}, "userId"),
    ({"userId": None}, "userId"),
    ({"userId": 12345}, "userId"),
    ({"userId": "user_12345", "plan": 3}, "plan"),
    ({"userId": "user_12345", "plan": "basic"}, "plan"),
    ({"userId": "user_12345", "name": ["a"]}, "name"),
    ({"userId": "user_12345", "name": "x" * 101}, "name"),
])
def test_create_validation(client, auth, payload, field):
    body = assert_error(client.post(BASE, json=payload, headers=auth()), 400, "VALIDATION_ERROR", BASE)
    assert field in body["details"] and isinstance(body["details"][field], str)


def test_name_of_exactly_100_characters_and_unicode(client, auth):
    name = "Ω" * 100
    response = create(client, auth, name=name)
    assert response.status_code == 201 and response.get_json()["data"]["name"] == name


@pytest.mark.parametrize("raw", ['{"userId": "user_12345"', "[]", '"text"', "null", "{'userId': 1}"])
def test_create_with_malformed_json(client, auth, raw):
    response = client.post(BASE, data=raw, headers={**auth(), "Content-Type": "application/json"})
    assert_error(response, 400, "VALIDATION_ERROR", BASE)


def test_create_without_json_content_type(client, auth):
    response = client.post(BASE, data="userId=user_12345", headers={**auth(), "Content-Type": "text/plain"})
    assert response.status_code in (400, 415)
    assert response.get_json()["success"] is False and response.get_json()["path"] == BASE


def test_oversize_body_is_refused(client, auth):
    response = client.post(BASE, data=json.dumps({"userId": "user_12345", "name": "x" * 100_000}),
                           headers={**auth(), "Content-Type": "application/json"})
    assert_error(response, 413, response.get_json()["error"], BASE)


def test_second_active_desktop_is_a_conflict(client, auth):
    assert create(client, auth).status_code == 201
    assert_error(create(client, auth, plan="PREMIUM"), 409, "DESKTOP_ALREADY_EXISTS", BASE,
                 "User already has an active desktop")
    with db.connection_context():
        assert Desktop.select().where(Desktop.user_id == "user_12345").count() == 1


def test_the_database_enforces_one_active_desktop_per_user(client, auth):
    """Even bypassing the API's pre-check, the partial unique index refuses a second active row."""
    import peewee
    create(client, auth)
    with db.connection_context():
        with pytest.raises(peewee.IntegrityError):
            with db.atomic():
                Desktop.create(user_id="user_12345", name="x", plan="BASIC", cpu_cores=2, memory_mb=2048)
        # A DELETED one does not count.
        Desktop.update(status="DELETED").execute()
        Desktop.create(user_id="user_12345", name="x", plan="BASIC", cpu_cores=2, memory_mb=2048)


def test_a_deleted_desktop_frees_the_user_for_a_new_one(client, auth):
    first = create(client, auth).get_json()["data"]["id"]
    set_state(first, "DELETED")
    response = create(client, auth)
    assert response.status_code == 201 and response.get_json()["data"]["id"] != first


def test_users_create_only_for_themselves_admins_for_anyone(client, auth):
    response = client.post(BASE, json={"userId": "someone_else"}, headers=auth("user_12345"))
    assert_error(response, 403, "FORBIDDEN", BASE)
    response = client.post(BASE, json={"userId": "someone_else"}, headers=auth("root", admin=True))
    assert response.status_code == 201 and response.get_json()["data"]["userId"] == "someone_else"


def test_create_with_redis_down_leaves_nothing_behind(base_settings, database, auth):
    from controlplane import create_app
    broken = create_app(base_settings.replace(redis_url="redis://127.0.0.1:1/0")).test_client()
    with db.connection_context():
        before = Desktop.select().count()
    response = broken.post(BASE, json={"userId": "user_redis_down"}, headers=auth("user_redis_down"))
    assert_error(response, 500, "INFRASTRUCTURE_ERROR", BASE)
    with db.connection_context():
        assert Desktop.select().count() == before
        assert not Desktop.select().where(Desktop.user_id == "user_redis_down").exists()
    # ... and the user can try again once Redis is back.


# ---- list ------------------------------------------------------------------------------------------

def test_list_own_desktops_with_filters(client, auth):
    mine = create(client, auth).get_json()["data"]["id"]
    create(client, auth, "user_other")
    body = client.get(BASE, headers=auth()).get_json()
    assert list(body) == ["success", "data", "timestamp"]
    assert body["data"]["total"] == 1 and [d["id"] for d in body["data"]["desktops"]] == [mine]
    assert list(body["data"]["desktops"][0]) == DESKTOP_FIELDS

    assert client.get(f"{BASE}?userId=user_12345&status=PENDING", headers=auth()).get_json()["data"]["total"] == 1
    assert client.get(f"{BASE}?userId=user_12345&status=RUNNING", headers=auth()).get_json()["data"] == {
        "desktops": [], "total": 0}
    set_state(mine, "RUNNING", ip_address="10.66.0.9", guacamole_connection_id="7")
    listed = client.get(f"{BASE}?status=RUNNING", headers=auth()).get_json()["data"]["desktops"]
    assert [d["id"] for d in listed] == [mine] and listed[0]["connectionUrl"]


def test_list_another_users_desktops_is_forbidden_but_admins_see_all(client, auth):
    create(client, auth)
    create(client, auth, "user_other")
    assert_error(client.get(f"{BASE}?userId=user_other", headers=auth()), 403, "FORBIDDEN", BASE)
    everything = client.get(BASE, headers=auth("admin", admin=True)).get_json()["data"]
    assert everything["total"] == 2
    one = client.get(f"{BASE}?userId=user_other", headers=auth("admin", admin=True)).get_json()["data"]
    assert [d["userId"] for d in one["desktops"]] == ["user_other"]


def test_list_with_an_unknown_status(client, auth):
    body = assert_error(client.get(f"{BASE}?status=SLEEPING", headers=auth()), 400, "VALIDATION_ERROR", BASE)
    assert "status" in body["details"]


def test_deleted_desktops_are_listed_only_when_asked(client, auth):
    gone = create(client, auth).get_json()["data"]["id"]
    set_state(gone, "DELETED")
    assert client.get(BASE, headers=auth()).get_json()["data"]["total"] == 0
    assert [d["id"] for d in client.get(f"{BASE}?status=DELETED", headers=auth()).get_json()["data"]["desktops"]] \
        == [gone]


# ---- get ---------------------------------------------------------------------------------------------

def test_get_desktop(client, auth):
    desktop_id = create(client, auth, name="Dev", plan="STANDARD").get_json()["data"]["id"]
    body = client.get(f"{BASE}/{desktop_id}", headers=auth()).get_json()
    assert body["success"] is True and list(body) == ["success", "data", "timestamp"]
    assert body["data"]["id"] == desktop_id and list(body["data"]) == DESKTOP_FIELDS


def test_get_unknown_desktop(client, auth):
    assert_error(client.get(f"{BASE}/999", headers=auth()), 404, "DESKTOP_NOT_FOUND", f"{BASE}/999",
                 "Desktop with ID 999 not found")


def test_another_users_desktop_is_not_found_for_users_but_visible_to_admins(client, auth):
    theirs = create(client, auth, "user_other").get_json()["data"]["id"]
    for path in ("", "/status", "/connect"):
        assert_error(client.get(f"{BASE}/{theirs}{path}", headers=auth()), 404, "DESKTOP_NOT_FOUND",
                     f"{BASE}/{theirs}{path}")
    for path in ("/start", "/stop"):
        assert_error(client.post(f"{BASE}/{theirs}{path}", headers=auth()), 404, "DESKTOP_NOT_FOUND",
                     f"{BASE}/{theirs}{path}")
    assert_error(client.delete(f"{BASE}/{theirs}", headers=auth()), 404, "DESKTOP_NOT_FOUND", f"{BASE}/{theirs}")
    assert client.get(f"{BASE}/{theirs}", headers=auth("admin", admin=True)).status_code == 200


@pytest.mark.parametrize("raw,status", [("abc", 400), ("-1", 400), ("1.5", 400), ("0", 404),
                                        ("99999999999999999999999", 404), ("9223372036854775807", 404)])
def test_desktop_ids_out_of_shape(client, auth, raw, status):
    response = client.get(f"{BASE}/{raw}", headers=auth())
    assert_error(response, status, "VALIDATION_ERROR" if status == 400 else "DESKTOP_NOT_FOUND", f"{BASE}/{raw}")


# ---- by user -------------------------------------------------------------------------------------------

def test_get_active_desktop_of_user(client, auth):
    old = create(client, auth).get_json()["data"]["id"]
    set_state(old, "DELETED")
    current = create(client, auth).get_json()["data"]["id"]
    body = client.get(f"{BASE}/user/user_12345", headers=auth()).get_json()
    assert body["success"] is True and body["data"]["id"] == current and list(body["data"]) == DESKTOP_FIELDS


def test_user_without_active_desktop(client, auth):
    assert_error(client.get(f"{BASE}/user/user_12345", headers=auth()), 404, "DESKTOP_NOT_FOUND",
                 f"{BASE}/user/user_12345")


def test_another_users_active_desktop(client, auth):
    create(client, auth, "user_other")
    assert_error(client.get(f"{BASE}/user/user_other", headers=auth()), 403, "FORBIDDEN", f"{BASE}/user/user_other")
    assert client.get(f"{BASE}/user/user_other", headers=auth("admin", admin=True)).status_code == 200


# ---- status ----------------------------------------------------------------------------------------------

def test_status(client, auth):
    desktop_id = create(client, auth).get_json()["data"]["id"]
    body = client.get(f"{BASE}/{desktop_id}/status", headers=auth()).get_json()
    assert list(body) == ["success", "data", "timestamp"]
    assert body["data"] == {"desktopId": desktop_id, "status": "PENDING", "statusMessage": "Desktop creation queued",
                            "ready": False}
    set_state(desktop_id, "RUNNING", status_message="Desktop is ready")
    assert client.get(f"{BASE}/{desktop_id}/status", headers=auth()).get_json()["data"]["ready"] is True


def test_status_refresh_of_a_transitional_desktop_needs_no_proxmox(client, auth):
    """A desktop in a transition belongs to its job: refresh leaves it alone (and does not call Proxmox,
    which these tests point at a closed port)."""
    desktop_id = create(client, auth).get_json()["data"]["id"]
    response = client.get(f"{BASE}/{desktop_id}/status?refresh=true", headers=auth())
    assert response.status_code == 200 and response.get_json()["data"]["status"] == "PENDING"


def test_status_refresh_with_proxmox_unreachable(client, auth):
    desktop_id = running(client, auth)
    response = client.get(f"{BASE}/{desktop_id}/status?refresh=true", headers=auth())
    assert_error(response, 500, "INFRASTRUCTURE_ERROR", f"{BASE}/{desktop_id}/status")
    # The record is not touched by a failed refresh.
    assert client.get(f"{BASE}/{desktop_id}/status", headers=auth()).get_json()["data"]["status"] == "RUNNING"


def test_status_with_a_bad_refresh_value(client, auth):
    desktop_id = create(client, auth).get_json()["data"]["id"]
    body = assert_error(client.get(f"{BASE}/{desktop_id}/status?refresh=maybe", headers=auth()), 400,
                        "VALIDATION_ERROR", f"{BASE}/{desktop_id}/status")
    assert "refresh" in body["details"]


# ---- connect -----------------------------------------------------------------------------------------------

def test_connect_to_a_running_desktop(client, auth, base_settings):
    desktop_id = running(client, auth)
    response = client.get(f"{BASE}/{desktop_id}/connect", headers=auth())
    assert response.status_code == 200 and "Retry-After" not in response.headers  # only a refusal says when
    body = response.get_json()
    assert list(body) == ["success", "data", "timestamp"]
    data = body["data"]
    assert list(data) == ["desktopId", "connectionUrl", "protocol", "expiresAt"]
    assert data["desktopId"] == desktop_id and data["protocol"] == "vnc" and data["expiresAt"] is None
    prefix = base_settings.guacamole_url + "/#/client/"
    assert data["connectionUrl"].startswith(prefix)
    encoded = data["connectionUrl"][len(prefix):]
    assert "=" not in encoded
    assert base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)) == b"42\0c\0postgresql"
    got = client.get(f"{BASE}/{desktop_id}", headers=auth()).get_json()["data"]
    assert got["connectionUrl"] == data["connectionUrl"] and ISO.match(got["lastAccessedAt"])


@pytest.mark.parametrize("status", ["PENDING", "PROVISIONING", "STARTING", "WAITING_FOR_IP", "CONFIGURING",
                                    "STOPPING", "STOPPED", "DELETING", "FAILED"])
def test_connect_when_not_running(client, auth, status):
    desktop_id = create(client, auth).get_json()["data"]["id"]
    set_state(desktop_id, status)
    assert_error(client.get(f"{BASE}/{desktop_id}/connect", headers=auth()), 400, "DESKTOP_NOT_READY",
                 f"{BASE}/{desktop_id}/connect", f"Desktop is not in RUNNING state. Current status: {status}")


# ---- start / stop / delete -----------------------------------------------------------------------------------

def test_start_a_stopped_desktop(client, auth, redis_conn):
    desktop_id = running(client, auth)
    set_state(desktop_id, "STOPPED", status_message="Desktop is stopped")
    for kwargs in ({}, {"json": {}}):
        set_state(desktop_id, "STOPPED")
        body = client.post(f"{BASE}/{desktop_id}/start", headers=auth(), **kwargs).get_json()
        assert body["success"] is True and body["message"] == "Desktop started successfully."
        assert list(body) == ["success", "message", "data", "timestamp"]
        assert body["data"]["status"] == "STARTING" and body["data"]["statusMessage"] == "VM is booting up"
        assert body["data"]["connectionUrl"] is None and body["data"]["ipAddress"] == "10.66.0.7"
    with db.connection_context():
        row = Desktop.get_by_id(desktop_id)
    assert row.operation == "start" and row.job_id in Queue(QUEUE_NAME, connection=redis_conn).job_ids


@pytest.mark.parametrize("status", ["PENDING", "PROVISIONING", "RUNNING", "STOPPING", "DELETING", "DELETED",
                                    "FAILED"])
def test_start_in_the_wrong_state(client, auth, status):
    desktop_id = create(client, auth).get_json()["data"]["id"]
    set_state(desktop_id, status)
    assert_error(client.post(f"{BASE}/{desktop_id}/start", headers=auth()), 400, "INVALID_OPERATION",
                 f"{BASE}/{desktop_id}/start", f"Cannot start desktop in {status} state")


@pytest.mark.parametrize("kwargs,force", [({}, False), ({"json": {}}, False), ({"json": {"force": False}}, False),
                                          ({"json": {"force": True}}, True)])
def test_stop_a_running_desktop(client, auth, redis_conn, kwargs, force):
    desktop_id = running(client, auth)
    body = client.post(f"{BASE}/{desktop_id}/stop", headers=auth(), **kwargs).get_json()
    assert body["success"] is True and body["message"] == "Desktop stopped successfully."
    assert body["data"]["status"] == "STOPPING"
    assert body["data"]["statusMessage"] == ("Forcing VM power-off" if force else "Shutting down VM")
    assert body["data"]["connectionUrl"] is None
    with db.connection_context():
        job = Queue(QUEUE_NAME, connection=redis_conn).fetch_job(Desktop.get_by_id(desktop_id).job_id)
    assert job.kwargs.get("force", job.args[-1] if isinstance(job.args[-1], bool) else None) is force


def test_stop_with_a_bad_force(client, auth):
    desktop_id = running(client, auth)
    body = assert_error(client.post(f"{BASE}/{desktop_id}/stop", json={"force": "hard"}, headers=auth()), 400,
                        "VALIDATION_ERROR", f"{BASE}/{desktop_id}/stop")
    assert body["details"] == {"force": "Force must be true or false"}


@pytest.mark.parametrize("status", ["PENDING", "CONFIGURING", "STOPPED", "STOPPING", "DELETING", "FAILED"])
def test_stop_in_the_wrong_state(client, auth, status):
    desktop_id = create(client, auth).get_json()["data"]["id"]
    set_state(desktop_id, status)
    assert_error(client.post(f"{BASE}/{desktop_id}/stop", headers=auth()), 400, "INVALID_OPERATION",
                 f"{BASE}/{desktop_id}/stop", f"Cannot stop desktop in {status} state")


@pytest.mark.parametrize("status", ["RUNNING", "STOPPED", "FAILED"])
def test_delete(client, auth, status):
    desktop_id = running(client, auth)
    set_state(desktop_id, status)
    response = client.delete(f"{BASE}/{desktop_id}", headers=auth())
    body = response.get_json()
    assert response.status_code == 200 and list(body) == ["success", "message", "data", "timestamp"]
    assert body["message"] == "Desktop deleted successfully." and body["data"] is None
    status_body = client.get(f"{BASE}/{desktop_id}/status", headers=auth()).get_json()["data"]
    assert status_body["status"] == "DELETING"


@pytest.mark.parametrize("status", ["PENDING", "PROVISIONING", "STARTING", "WAITING_FOR_IP", "CONFIGURING"])
def test_delete_during_a_create_cancels_it(client, auth, redis_conn, status):
    """The create is cancelled: its job, not started here, is cancelled in RQ; the delete's job
    names it (meta `after`), so that it waits for a running one to stop before removing anything."""
    desktop_id = create(client, auth).get_json()["data"]["id"]
    create_job = Desktop.get_by_id(desktop_id).job_id
    set_state(desktop_id, status)
    response = client.delete(f"{BASE}/{desktop_id}", headers=auth())
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["message"] == "Desktop deleted successfully."
    data = client.get(f"{BASE}/{desktop_id}/status", headers=auth()).get_json()["data"]
    assert data["status"] == "DELETING" and data["statusMessage"] == "Create cancelled; removing desktop"
    row = Desktop.get_by_id(desktop_id)
    queue = Queue(QUEUE_NAME, connection=redis_conn)
    assert row.operation == "delete" and row.job_id != create_job and queue.job_ids == [row.job_id]
    assert queue.fetch_job(create_job).get_status() == "canceled"
    assert queue.fetch_job(row.job_id).meta["after"] == create_job


def test_a_delete_that_races_a_step_of_the_create_still_cancels_it(client, auth, redis_conn, monkeypatch):
    """The worker moves the desktop on (PENDING → PROVISIONING) between the API's read and its
    write: the write is conditional, so it is tried again on the fresh row, and still cancels."""
    desktop_id = create(client, auth).get_json()["data"]["id"]
    moved = []
    original_update = Desktop.update

    def update_racing(*args, **kwargs):
        if not moved and kwargs.get("status") == "DELETING":  # the step lands just before our write
            moved.append(True)
            original_update(status="PROVISIONING").where(Desktop.id == desktop_id).execute()
        return original_update(*args, **kwargs)

    monkeypatch.setattr(Desktop, "update", update_racing)
    response = client.delete(f"{BASE}/{desktop_id}", headers=auth())
    monkeypatch.setattr(Desktop, "update", original_update)
    assert moved and response.status_code == 200, response.get_json()
    events = [e.status for e in DesktopEvent.select().where(DesktopEvent.desktop == desktop_id)]
    assert events[-1] == "DELETING" and Desktop.get_by_id(desktop_id).status == "DELETING"


@pytest.mark.parametrize("status", ["STOPPING", "DELETING", "DELETED"])
def test_delete_in_the_wrong_state(client, auth, status):
    desktop_id = create(client, auth).get_json()["data"]["id"]
    set_state(desktop_id, status)
    assert_error(client.delete(f"{BASE}/{desktop_id}", headers=auth()), 400, "INVALID_OPERATION",
                 f"{BASE}/{desktop_id}", f"Cannot delete desktop in {status} state")


def test_delete_unknown(client, auth):
    assert_error(client.delete(f"{BASE}/1", headers=auth()), 404, "DESKTOP_NOT_FOUND", f"{BASE}/1",
                 "Desktop with ID 1 not found")


def test_operations_race_only_one_wins(client, auth):
    """Two stops of one RUNNING desktop: the state change is conditional, so the second is refused."""
    desktop_id = running(client, auth)
    assert client.post(f"{BASE}/{desktop_id}/stop", headers=auth()).status_code == 200
    assert client.post(f"{BASE}/{desktop_id}/stop", headers=auth()).get_json()["error"] == "INVALID_OPERATION"


# ---- auth, errors, docs, health ----------------------------------------------------------------------------------

ENDPOINTS = [("GET", BASE), ("POST", BASE), ("GET", f"{BASE}/1"), ("DELETE", f"{BASE}/1"),
             ("GET", f"{BASE}/user/user_12345"), ("GET", f"{BASE}/1/status"), ("GET", f"{BASE}/1/connect"),
             ("POST", f"{BASE}/1/start"), ("POST", f"{BASE}/1/stop")]


@pytest.mark.parametrize("method,path", ENDPOINTS)
@pytest.mark.parametrize("header", [None, "Bearer", "Bearer not-a-jwt", "Basic dXNlcjpwYXNz"])
def test_every_endpoint_needs_a_valid_token(client, method, path, header):
    headers = {} if header is None else {"Authorization": header}
    response = client.open(path, method=method, headers=headers, json={"userId": "user_12345"})
    body = assert_error(response, 401, "UNAUTHORIZED", path)
    assert "details" not in body or body["details"]


def test_unknown_route_and_method(client, auth):
    assert_error(client.get("/api/v1/nothing", headers=auth()), 404, client.get("/api/v1/nothing").get_json()["error"],
                 "/api/v1/nothing")
    assert_error(client.put(f"{BASE}/1", headers=auth()), 405, "METHOD_NOT_ALLOWED", f"{BASE}/1")


def test_openapi_document_and_docs(client):
    spec = client.get("/api/v1/openapi.json").get_json()
    paths = spec["paths"]
    for path, methods in {BASE: {"get", "post"}, BASE + "/{desktop_id}": {"get", "delete"},
                          BASE + "/user/{user_id}": {"get"}, BASE + "/{desktop_id}/status": {"get"},
                          BASE + "/{desktop_id}/connect": {"get"}, BASE + "/{desktop_id}/start": {"post"},
                          BASE + "/{desktop_id}/stop": {"post"}, "/api/v1/health": {"get"}}.items():
        assert methods <= set(paths[path]), path
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    docs = client.get("/api/v1/docs")
    assert docs.status_code == 200 and b"swagger" in docs.data.lower()


def test_health_without_a_worker_is_degraded(client):
    response = client.get("/api/v1/health")
    assert response.status_code == 503
    checks = response.get_json()["data"]["checks"]
    assert checks["api"]["status"] == "ok" and checks["database"]["status"] == "ok"
    assert checks["redis"]["status"] == "ok" and checks["worker"]["status"] == "error"
    assert checks["worker"]["count"] == 0


def test_health_with_a_live_worker(client, redis_conn):
    from rq import Worker
    worker = Worker([QUEUE_NAME], connection=redis_conn, name="health-probe")
    worker.register_birth()
    worker.heartbeat()
    try:
        response = client.get("/api/v1/health")
        assert response.status_code == 200
        body = response.get_json()["data"]
        assert body["status"] == "ok" and body["checks"]["worker"]["count"] == 1
    finally:
        worker.register_death()


def test_timestamps_use_the_configured_timezone(base_settings, database, auth):
    from controlplane import create_app
    app = create_app(base_settings.replace(timezone="Asia/Kolkata"))
    body = app.test_client().get(BASE, headers=auth()).get_json()
    assert body["timestamp"].endswith("+05:30")
