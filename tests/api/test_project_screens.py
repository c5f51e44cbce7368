"""POST /api/projects/{id}/connect: a project VM's screen (issue 21), an auth-json link as a desktop's
/connect makes: in control for the owner and editors, view only for viewers (the connection's
`read-only` parameter, which guacd enforces: the lab's relay too, tests/unit/test_rfb_read_only.py);
the project's room hears who opened it."""
from __future__ import annotations

import datetime as dt
import json

import pytest

from controlplane.services.queue import project_channel
from tests.api.test_connect_links import _payload, json_client  # noqa: F401 (json_client: a fixture)
from tests.api.test_projects_api import assert_error, people, set_status, team  # noqa: F401 (people: a fixture)

payload = _payload  # the auth-json link's decrypted document, as the desktops' tests read it


def running_team(client, people) -> tuple[str, int]:
    from controlplane.models import Project
    project_id = team(client, people)
    set_status(project_id, "running", vm_ip="172.30.9.2", guacamole_connection_id="17")
    return project_id, Project.get(Project.public_id == project_id).id


@pytest.mark.parametrize("who,read_only", [("owner", False), ("editor", False), ("viewer", True)])
def test_members_get_a_fresh_expiring_link_viewers_a_view_only_one(json_client, people, base_settings, who,
                                                                   read_only):
    project_id, number = running_team(json_client, people)
    before = dt.datetime.now(dt.timezone.utc)
    response = json_client.post(f"/api/projects/{project_id}/connect", headers=people[who])
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["success"] is True and body["project_id"] == project_id
    assert body["protocol"] == "vnc" and body["read_only"] is read_only
    expires_at = dt.datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
    assert dt.timedelta(seconds=118) <= expires_at - before <= dt.timedelta(seconds=122)
    url = body["connection_url"]
    assert url.startswith(base_settings.guacamole_url + "/?data=") and "vncpw" not in url
    data = payload(url)
    assert data["username"] == f"cds-u-user_{who}" and data["singleUse"] is True
    connection = data["connections"][f"cds-project-{number}"]
    expected = {"hostname": "172.30.9.2", "port": "5900", "password": "vncpw"}
    if read_only:
        expected["read-only"] = "true"
    assert connection["protocol"] == "vnc" and connection["parameters"] == expected
    again = json_client.post(f"/api/projects/{project_id}/connect", headers=people[who]).get_json()
    assert again["connection_url"] != url  # new on every call
    assert "Retry-After" not in response.headers


def test_the_project_room_hears_who_opened_the_screen(json_client, people, redis_conn):
    project_id, _ = running_team(json_client, people)
    listener = redis_conn.pubsub()
    listener.subscribe(project_channel(project_id))
    try:
        assert listener.get_message(timeout=5)["type"] == "subscribe"
        assert json_client.post(f"/api/projects/{project_id}/connect", headers=people["viewer"]).status_code == 200
        message = listener.get_message(timeout=5)
    finally:
        listener.close()
    event = json.loads(message["data"])
    assert event["type"] == "collaborator_activity" and event["project_id"] == project_id
    assert event["activity"] == "opened_screen" and event["read_only"] is True
    assert event["user"]["id"] == "user_viewer"


def test_outsiders_do_not_see_it_and_a_stopped_project_has_no_screen(json_client, people):
    project_id, _ = running_team(json_client, people)
    assert_error(json_client.post(f"/api/projects/{project_id}/connect", headers=people["outsider"]), 404, "NOT_FOUND")
    set_status(project_id, "stopped")
    error = assert_error(json_client.post(f"/api/projects/{project_id}/connect", headers=people["owner"]),
                         400, "INVALID_REQUEST")
    assert "is not running" in error["message"] and error["details"] == {"status": "stopped"}
    set_status(project_id, "running", guacamole_connection_id=None)  # made by a version without screens
    error = assert_error(json_client.post(f"/api/projects/{project_id}/connect", headers=people["owner"]),
                         400, "INVALID_REQUEST")
    assert "stop and start it once" in error["message"]


def test_without_auth_json_links_there_is_no_screen(client, people):
    """A plain connection URL could not be made view only: the service says what to configure."""
    project_id, _ = running_team(client, people)
    error = assert_error(client.post(f"/api/projects/{project_id}/connect", headers=people["owner"]),
                         503, "SERVICE_UNAVAILABLE")
    assert "CONTROLPLANE_GUACAMOLE_JSON_SECRET" in error["message"]
