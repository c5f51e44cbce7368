"""Request ids (X-Request-ID echoed or generated), the audit log of change requests, and
idempotent desktop creates keyed by the caller's X-Request-ID."""
from __future__ import annotations

import re
import threading

from controlplane.extensions import db
from controlplane.models import AuditEntry, Desktop

BASE = "/api/v1/desktops"


def entries(client, auth, **query) -> list[dict]:
    response = client.get("/api/v1/admin/audit", query_string=query, headers=auth("auditor", admin=True))
    assert response.status_code == 200, response.get_json()
    return response.get_json()["data"]["entries"]


def test_request_ids_are_echoed_or_made(client, auth):
    given = client.get(BASE, headers={**auth(), "X-Request-ID": "retry-42.a:b@c"})
    assert given.headers["X-Request-ID"] == "retry-42.a:b@c"
    made = client.get(BASE, headers=auth())
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["X-Request-ID"])
    assert client.get(BASE, headers=auth()).headers["X-Request-ID"] != made.headers["X-Request-ID"]
    for unusable in ("", "x" * 129, "has space", "tab\there", "<script>", "ü"):
        echoed = client.get(BASE, headers={**auth(), "X-Request-ID": unusable}).headers["X-Request-ID"]
        assert echoed != unusable and re.fullmatch(r"[0-9a-f]{32}", echoed)
    # Errors carry it too, in both APIs.
    assert client.get(f"{BASE}/999", headers={**auth(), "X-Request-ID": "r-404"}).headers["X-Request-ID"] == "r-404"
    assert client.get("/api/projects/proj_0", headers={"X-Request-ID": "r-401"}).headers["X-Request-ID"] == "r-401"


def test_every_change_request_is_audited_with_its_outcome(client, auth):
    created = client.post(BASE, json={"userId": "user_aud"}, headers={**auth("user_aud"), "X-Request-ID": "c-1"})
    desktop_id = created.get_json()["data"]["id"]
    client.post(f"{BASE}/{desktop_id}/stop", headers={**auth("user_aud"), "X-Request-ID": "s-1"})  # PENDING: refused
    client.post(BASE, json={"userId": "someone_else"}, headers={**auth("user_aud"), "X-Request-ID": "c-2"})
    client.delete(f"{BASE}/{desktop_id}", headers={"X-Request-ID": "d-1"})  # no token
    client.post("/api/projects", json={"name": "Team"}, headers={**auth("user_aud"), "X-Request-ID": "p-1"})
    client.get(BASE, headers=auth("user_aud"))  # reads are not audited

    log = {e["requestId"]: e for e in entries(client, auth)}
    assert set(log) >= {"c-1", "s-1", "c-2", "d-1", "p-1"} and len(log) == 5
    assert {k: (e["userId"], e["method"], e["action"], e["target"], e["status"], e["result"])
            for k, e in log.items()} == {
        "c-1": ("user_aud", "POST", "desktops.Desktops", f"desktop {desktop_id}", 201, "ok"),
        "s-1": ("user_aud", "POST", "desktops.DesktopStop", f"desktop {desktop_id}", 400, "INVALID_OPERATION"),
        "c-2": ("user_aud", "POST", "desktops.Desktops", "", 403, "FORBIDDEN"),
        "d-1": (None, "DELETE", "desktops.DesktopItem", f"desktop {desktop_id}", 401, "UNAUTHORIZED"),
        "p-1": ("user_aud", "POST", "projects.Projects", log["p-1"]["target"], 201, "ok"),
    }
    assert log["p-1"]["target"].startswith("project proj_")
    assert log["c-1"]["path"] == BASE and log["c-1"]["admin"] is False
    assert [e["requestId"] for e in entries(client, auth, userId="user_aud", limit=2)] == ["p-1", "c-2"]
    assert [e["requestId"] for e in entries(client, auth, requestId="s-1")] == ["s-1"]
    assert client.get("/api/v1/admin/audit", headers=auth("user_aud")).status_code == 403


def test_the_audit_never_breaks_an_answer(client, auth, monkeypatch):
    def broken(**_):
        raise RuntimeError("audit storage is down")
    monkeypatch.setattr(AuditEntry, "create", broken)
    response = client.post(BASE, json={"userId": "user_aud2"}, headers=auth("user_aud2"))
    assert response.status_code == 201 and response.headers["X-Request-ID"]


def test_a_retried_create_returns_the_same_desktop(client, auth, redis_conn):
    headers = {**auth("user_idem"), "X-Request-ID": "create-once-1"}
    first = client.post(BASE, json={"userId": "user_idem", "plan": "BASIC"}, headers=headers)
    assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
    again = client.post(BASE, json={"userId": "user_idem", "plan": "BASIC"}, headers=headers)
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json()["data"]["id"] == first.get_json()["data"]["id"]
    with db.connection_context():
        assert Desktop.select().where(Desktop.user_id == "user_idem").count() == 1
    # Only one job: the replay enqueued nothing.
    from rq import Queue

    from controlplane.services.queue import QUEUE_NAME
    assert [j.meta["resource_id"] for j in Queue(QUEUE_NAME, connection=redis_conn).jobs] == [
        first.get_json()["data"]["id"]]
    # Another id is another request: the one-desktop rule answers it.
    other = client.post(BASE, json={"userId": "user_idem"}, headers={**auth("user_idem"), "X-Request-ID": "create-2"})
    assert other.status_code == 409 and other.get_json()["error"] == "DESKTOP_ALREADY_EXISTS"
    # Keys are per caller: another user's same id is their own create.
    theirs = client.post(BASE, json={"userId": "user_idem_b"}, headers={**auth("user_idem_b"),
                                                                        "X-Request-ID": "create-once-1"})
    assert theirs.status_code == 201 and theirs.get_json()["data"]["id"] != first.get_json()["data"]["id"]


def test_concurrent_retries_make_one_desktop(app, client, auth):
    results = []

    def post():
        with app.test_client() as c:
            results.append(c.post(BASE, json={"userId": "user_race"},
                                  headers={**auth("user_race"), "X-Request-ID": "same-key"}))

    threads = [threading.Thread(target=post) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [r.status_code for r in results] == [201] * 6, [r.get_json() for r in results]
    assert len({r.get_json()["data"]["id"] for r in results}) == 1
    with db.connection_context():
        assert Desktop.select().where(Desktop.user_id == "user_race").count() == 1


def test_a_replay_does_not_use_up_the_create_limit(app, client, auth, base_settings):
    headers = {**auth("user_lim"), "X-Request-ID": "lim-1"}
    for _ in range(7):  # the limit is 5 creates per hour; replays are not creates
        response = client.post(BASE, json={"userId": "user_lim"}, headers=headers)
        assert response.status_code == 201, response.get_json()


def test_a_request_with_a_nul_in_its_path_is_audited(client, auth):
    refused = client.delete(f"{BASE}/1%00", headers={**auth("user_nul"), "X-Request-ID": "nul-1"})
    assert refused.status_code == 400
    [entry] = entries(client, auth, requestId="nul-1")
    assert entry["path"] == f"{BASE}/1\\x00" and entry["result"] == "VALIDATION_ERROR"
