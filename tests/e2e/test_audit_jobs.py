"""The audit log on the lab: each operation's request and the outcome of its job, under the
caller's X-Request-ID (on SQLite and on PostgreSQL)."""
from __future__ import annotations

import requests

from .helpers import Api, desktop_row
from .test_failures import delete_and_check, wait_failed


def test_every_operation_is_audited_under_the_request_that_asked_for_it(lab, fresh_user):
    """The audit log has the request (POST) and the outcome of its job (JOB, the final status),
    under the caller's X-Request-ID; a failed one says so."""
    api = Api(lab.url, lab.token(fresh_user))
    admin = {"Authorization": f"Bearer {lab.token('auditor', admin=True)}"}
    request_id = f"req-{fresh_user}"
    response = api.session.post(api.base, json={"userId": fresh_user, "plan": "BASIC"},
                                headers={"X-Request-ID": request_id}, timeout=10)
    assert response.status_code == 201, response.text
    desktop_id = response.json()["data"]["id"]
    assert api.wait_settled(desktop_id)["status"] == "RUNNING"

    def entries(rid: str) -> list[dict]:
        got = requests.get(f"{lab.url}/api/v1/admin/audit", params={"requestId": rid}, headers=admin, timeout=10)
        assert got.status_code == 200, got.text
        return got.json()["data"]["entries"]

    found = {(e["method"], e["action"], e["userId"], e["target"], e["status"], e["result"]) for e in entries(request_id)}
    assert ("JOB", "desktop.create", fresh_user, f"desktop {desktop_id}", 200, "RUNNING") in found, found
    assert [e for e in entries(request_id) if e["method"] == "POST" and e["status"] == 201]

    lab.services.call(lambda: setattr(lab.pve.vm(desktop_row(desktop_id).vmid), "start_error", "lab fault: no disk"))
    try:
        assert api.stop(desktop_id, force=True).status_code == 200
        assert api.wait_settled(desktop_id)["status"] == "STOPPED"
        start = api.session.post(f"{api.base}/{desktop_id}/start", headers={"X-Request-ID": request_id + "-start"},
                                 timeout=10)
        assert start.status_code == 200
        wait_failed(api, desktop_id)
    finally:
        lab.services.call(lambda: lab.pve.vm(desktop_row(desktop_id).vmid)
                          and setattr(lab.pve.vm(desktop_row(desktop_id).vmid), "start_error", None))
    failed = [e for e in entries(request_id + "-start") if e["method"] == "JOB"]
    assert [(e["action"], e["userId"], e["status"], e["result"]) for e in failed] == [
        ("desktop.start", fresh_user, 500, "FAILED")], failed
    delete_and_check(lab, api, desktop_id)
