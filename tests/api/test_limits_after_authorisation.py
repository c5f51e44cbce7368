"""Every rate limit is counted only for requests that are authenticated and allowed to do what they
ask: someone who may not chat in a project cannot use up that project's chat budget, and a per-user
budget is keyed by the verified identity. Redis keys of the limits hold no user text."""
from __future__ import annotations

import pytest

from controlplane.extensions import db
from controlplane.models import Project
from tests.api.test_chat_api import LAB_KEY, llm  # noqa: F401  (the lab's echo model, a module fixture)


@pytest.fixture
def chatty(base_settings, database, llm, redis_conn, client):  # noqa: F811
    """An app with the contract's chat limit (20/minute per project) whose openai/* models answer."""
    from controlplane import create_app
    llm.clear_faults()
    app = create_app(base_settings.replace(llm_openai_api_key=LAB_KEY, llm_openai_base_url=llm.url, llm_timeout=3.0,
                                           rate_limit_chat="20/minute", rate_limit_api="1000/minute"))
    return app.test_client()


@pytest.fixture
def people(token):
    def headers(user):
        return {"Authorization": "Bearer " + token(user, email=f"{user}@example.com", name=user)}
    return {who: headers(f"user_{who}") for who in ("owner", "viewer", "outsider")}


def send(c, headers, project_id, message="hello"):
    return c.post("/api/chat", headers=headers, json={"project_id": project_id, "message": message,
                                                      "model": "openai/gpt-4"})


def test_an_outsider_cannot_use_up_a_projects_chat_limit(chatty, people):
    c = chatty
    project_id = c.post("/api/projects", json={"name": "p"}, headers=people["owner"]).get_json()["project_id"]
    inv = c.post(f"/api/projects/{project_id}/collaborators", headers=people["owner"],
                 json={"email": "user_viewer@example.com", "role": "viewer"}).get_json()["invitation_id"]
    assert c.post(f"/api/invitations/{inv}/accept", headers=people["viewer"]).status_code == 200
    with db.connection_context():
        Project.update(status="running").where(Project.public_id == project_id).execute()

    # 25 messages from someone who is not a member: each is a 404, never a 429 (that would also tell
    # them the project exists), and none counts against the project's 20 a minute.
    for _ in range(25):
        refused = send(c, people["outsider"], project_id)
        assert refused.status_code == 404, refused.get_data(as_text=True)
        assert refused.get_json()["error"]["code"] == "NOT_FOUND"
    # Nor do a viewer's (a member whose role may not chat: 403 each).
    for _ in range(25):
        assert send(c, people["viewer"], project_id).status_code == 403

    answered = send(c, people["owner"], project_id)
    assert answered.status_code == 200, answered.get_data(as_text=True)
    assert answered.headers["X-RateLimit-Limit"] == "20"
    assert answered.headers["X-RateLimit-Remaining"] == "19"  # only the owner's own message counted

    # The owner's 20 a minute are still the contract's limit.
    for _ in range(19):
        assert send(c, people["owner"], project_id).status_code == 200
    limited = send(c, people["owner"], project_id)
    assert limited.status_code == 429 and limited.get_json()["error"]["code"] == "RATE_LIMIT_EXCEEDED"
    # ... and an outsider still gets their 404, not the project's 429.
    assert send(c, people["outsider"], project_id).status_code == 404


def test_rate_limit_keys_hold_no_user_text(chatty, people, token, redis_conn):
    c = chatty
    odd = {"Authorization": "Bearer " + token("user_keyed", email="keyed@example.com")}
    project_id = c.post("/api/projects", json={"name": "p"}, headers=odd).get_json()["project_id"]
    with db.connection_context():
        Project.update(status="running").where(Project.public_id == project_id).execute()
    assert send(c, odd, project_id).status_code == 200
    assert send(c, people["outsider"], "proj_made/up:text").status_code == 404
    keys = [k.decode(errors="replace") for k in redis_conn.keys("*ratelimit*")]
    assert keys, "the limits were counted in Redis"
    for key in keys:
        for text in ("user_keyed", "user_outsider", project_id, "made/up"):
            assert text not in key, key


def test_unauthenticated_requests_are_refused_not_counted(base_settings, database, client):
    from controlplane import create_app
    c = create_app(base_settings.replace(rate_limit_api="2/minute")).test_client()
    for _ in range(5):
        for path in ("/api/v1/desktops", "/api/projects", "/api/invitations"):
            refused = c.get(path, headers={"Authorization": "Bearer not-a-token"})
            assert refused.status_code == 401
