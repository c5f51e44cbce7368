"""The projects API's chat, user settings and usage, through the real provider path: litellm
calling the lab's OpenAI-compatible echo model over HTTP (as `make lab` wires it)."""
from __future__ import annotations

import json

import pytest

from controlplane.extensions import db
from controlplane.models import ChatMessage, Project, UsageRecord, utcnow
from tests.loop import LoopThread

LAB_KEY = "lab-key-for-api-tests-0123456789"
USER_KEYS_SECRET = "u" * 40


@pytest.fixture(scope="module")
def llm():
    from controlplane.lab.llm import LabLlm
    loop = LoopThread()
    server = LabLlm(port=0, api_key=LAB_KEY)
    loop.run(server.start())
    yield server
    loop.run(server.stop())
    loop.close()


@pytest.fixture
def chat_client(base_settings, database, llm, redis_conn, client):
    """An app whose openai/* models go to the lab's echo model."""
    from controlplane import create_app
    llm.clear_faults()
    app = create_app(base_settings.replace(llm_openai_api_key=LAB_KEY, llm_openai_base_url=llm.url,
                                           llm_timeout=3.0, llm_user_keys_secret=USER_KEYS_SECRET))
    return app.test_client()


@pytest.fixture
def people(token):
    def headers(user, admin=False):
        return {"Authorization": "Bearer " + token(user, admin, email=f"{user}@example.com", name=user)}
    return {who: headers(f"user_{who}") for who in ("owner", "editor", "viewer", "outsider")}


@pytest.fixture
def project(chat_client, people):
    c = chat_client
    project_id = c.post("/api/projects", json={"name": "Chatty"}, headers=people["owner"]).get_json()["project_id"]
    for who in ("editor", "viewer"):
        inv = c.post(f"/api/projects/{project_id}/collaborators", headers=people["owner"],
                     json={"email": f"user_{who}@example.com", "role": who}).get_json()["invitation_id"]
        assert c.post(f"/api/invitations/{inv}/accept", headers=people[who]).status_code == 200
    with db.connection_context():
        Project.update(status="running").where(Project.public_id == project_id).execute()
    return project_id


def send(c, headers, project_id, message="Hello, can you help me?", **extra):
    return c.post("/api/chat", headers=headers, json={"project_id": project_id, "message": message, **extra})


def test_send_message_and_read_history(chat_client, people, project, llm):
    response = send(chat_client, people["owner"], project, model="openai/gpt-4",
                    parameters={"temperature": 0.7, "max_tokens": 2000})
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert list(body) == ["message_id", "response", "model", "tokens_used", "cost"]
    assert body["message_id"].startswith("msg_") and body["model"] == "openai/gpt-4"
    assert "Hello, can you help me?" in body["response"]  # the echo model quotes it
    assert body["tokens_used"] > 0 and body["cost"] > 0  # gpt-4 is in litellm's price table
    assert llm.calls and llm.requests[-1]["temperature"] == 0.7

    # A viewer reads the history; the editor's message joins it with the earlier context sent along.
    assert send(chat_client, people["editor"], project, "And a second question").status_code == 200
    assert [m["content"] for m in llm.requests[-1]["messages"]][:2] == [
        "Hello, can you help me?", body["response"]]
    history = chat_client.get(f"/api/chat/{project}/history", headers=people["viewer"]).get_json()["messages"]
    assert [(m["role"], m.get("user_id")) for m in history] == [
        ("user", "user_owner"), ("assistant", None), ("user", "user_editor"), ("assistant", None)]
    assert history[1]["id"] == body["message_id"] and history[1]["model"] == "openai/gpt-4"
    assert history[1]["tokens"] == body["tokens_used"] and history[0]["timestamp"].endswith("Z")

    # Usage is recorded per model.
    usage = chat_client.get("/api/user/usage", headers=people["owner"]).get_json()
    assert usage["period"] == "last_30_days" and usage["by_model"]["gpt-4"]["requests"] == 1
    assert usage["total_tokens"] == body["tokens_used"] and usage["total_cost"] == pytest.approx(body["cost"])


def test_viewers_and_outsiders_cannot_chat(chat_client, people, project):
    assert send(chat_client, people["viewer"], project).get_json()["error"]["code"] == "FORBIDDEN"
    assert send(chat_client, people["outsider"], project).get_json()["error"]["code"] == "NOT_FOUND"
    assert chat_client.get(f"/api/chat/{project}/history", headers=people["outsider"]).status_code == 404


@pytest.mark.parametrize("extra,field", [({"model": "gpt-4"}, "model"), ({"model": "nobody/x"}, "model"),
                                         ({"parameters": {"temperature": 5}}, "parameters.temperature"),
                                         ({"parameters": {"max_tokens": 0}}, "parameters.max_tokens"),
                                         ({"message": "   "}, "message")])
def test_bad_chat_requests(chat_client, people, project, extra, field):
    response = send(chat_client, people["owner"], project, **extra)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "INVALID_REQUEST" and field in error["details"]
    with db.connection_context():
        assert not ChatMessage.select().exists()  # nothing sent, nothing stored


def test_provider_down_keeps_the_users_message(chat_client, people, project, llm):
    llm.down = True
    response = send(chat_client, people["owner"], project, "Are you there?")
    assert response.status_code == 503
    error = response.get_json()["error"]
    assert error["code"] == "SERVICE_UNAVAILABLE" and error["details"]["message_id"].startswith("msg_")
    assert LAB_KEY not in response.get_data(as_text=True)
    history = chat_client.get(f"/api/chat/{project}/history", headers=people["owner"]).get_json()["messages"]
    assert [(m["role"], m["content"]) for m in history] == [("user", "Are you there?")]
    assert history[0]["error"]
    with db.connection_context():
        assert not UsageRecord.select().exists()


def test_the_providers_rate_limit_is_a_429_with_its_wait(chat_client, people, project, llm):
    llm.fail(429, times=1)  # the stand-in says Retry-After: 1, as OpenAI does
    response = send(chat_client, people["owner"], project)
    assert response.status_code == 429, response.get_data(as_text=True)
    assert response.get_json()["error"]["code"] == "RATE_LIMIT_EXCEEDED"
    # Retry-After: the provider's wait, not the end of the user's own rate-limit window (their budget
    # is not spent: Flask-Limiter would put the later of the two there).
    assert response.headers["Retry-After"] == "1"
    assert response.headers["X-RateLimit-Limit"]  # the limits were on


def test_provider_timeout(chat_client, people, project, llm):
    llm.delay_seconds = 5  # longer than llm_timeout (3 s)
    response = send(chat_client, people["owner"], project)
    assert response.status_code in (503, 504) and response.get_json()["error"]["code"] == "SERVICE_UNAVAILABLE"


def test_user_settings_defaults_update_and_use(chat_client, people, project, llm):
    got = chat_client.get("/api/user/settings", headers=people["owner"]).get_json()
    assert got == {"user_id": "user_owner", "preferred_model": "openai/gpt-4",
                   "model_parameters": {"temperature": 0.7, "max_tokens": 2000}, "custom_models": [], "api_keys": []}
    put = chat_client.put("/api/user/settings", headers=people["owner"], json={
        "preferred_model": "openai/gpt-4o-mini", "model_parameters": {"temperature": 0.5, "max_tokens": 400}})
    assert put.status_code == 200
    body = put.get_json()
    assert body["success"] is True and body["settings"]["preferred_model"] == "openai/gpt-4o-mini"
    assert body["settings"]["model_parameters"] == {"temperature": 0.5, "max_tokens": 400}
    # A message without model or parameters uses the settings.
    answer = send(chat_client, people["owner"], project).get_json()
    assert answer["model"] == "openai/gpt-4o-mini"
    assert llm.requests[-1]["temperature"] == 0.5 and llm.requests[-1]["max_tokens"] == 400


def test_settings_validation(chat_client, people):
    response = chat_client.put("/api/user/settings", headers=people["owner"], json={
        "preferred_model": "no-provider", "model_parameters": {"temperature": -1}, "custom_models": ["ok/x", "bad"]})
    assert response.status_code == 400
    details = response.get_json()["error"]["details"]
    assert {"preferred_model", "model_parameters.temperature", "custom_models.1"} <= set(details)


def test_users_own_key_is_stored_encrypted_and_never_shown(chat_client, people):
    secret_key = "sk-user-own-key-abcdef0123456789"
    response = chat_client.put("/api/user/settings", headers=people["owner"], json={"api_keys": {"openai": secret_key}})
    assert response.status_code == 200 and secret_key not in response.get_data(as_text=True)
    assert response.get_json()["settings"]["api_keys"] == ["openai"]
    from controlplane.models import UserSettings
    with db.connection_context():
        stored = UserSettings.get_by_id("user_owner").api_keys
    assert secret_key not in stored and json.loads(stored)["openai"]


def test_usage_periods(chat_client, people, project):
    import datetime as dt
    with db.connection_context():
        UsageRecord.create(user_id="user_owner", model="anthropic/claude-3-opus", tokens=100, cost=1.5,
                           created_at=utcnow() - dt.timedelta(days=45))
        UsageRecord.create(user_id="user_owner", model="openai/gpt-4", tokens=10, cost=0.25,
                           created_at=utcnow() - dt.timedelta(days=2))
    recent = chat_client.get("/api/user/usage", headers=people["owner"]).get_json()
    day = (utcnow() - dt.timedelta(days=2)).date().isoformat()
    assert recent == {"total_tokens": 10, "total_cost": 0.25,
                      "by_model": {"gpt-4": {"tokens": 10, "cost": 0.25, "requests": 1}}, "period": "last_30_days",
                      "by_day": [{"date": day, "tokens": 10, "cost": 0.25, "requests": 1,
                                  "by_model": {"gpt-4": {"tokens": 10, "cost": 0.25, "requests": 1}}}]}
    everything = chat_client.get("/api/user/usage?period=all_time", headers=people["owner"]).get_json()
    assert everything["total_tokens"] == 110 and set(everything["by_model"]) == {"gpt-4", "claude-3-opus"}
    # by_day: oldest first, each day's models (the portal's chart per day)
    assert [(d["date"], d["tokens"], list(d["by_model"])) for d in everything["by_day"]] == [
        ((utcnow() - dt.timedelta(days=45)).date().isoformat(), 100, ["claude-3-opus"]), (day, 10, ["gpt-4"])]
    bad = chat_client.get("/api/user/usage?period=forever", headers=people["owner"])
    assert bad.status_code == 400 and "period" in bad.get_json()["error"]["details"]


def test_usage_has_one_key_per_model_whichever_way_it_was_called(chat_client, people, project):
    with db.connection_context():
        for model in ("openai/gpt-4", "openrouter/openai/gpt-4", "gpt-4"):
            UsageRecord.create(user_id="user_owner", model=model, tokens=10, cost=0.5, created_at=utcnow())
        UsageRecord.create(user_id="user_owner", model="openrouter/anthropic/claude-3-opus", tokens=1, cost=0.0,
                           created_at=utcnow())
    usage = chat_client.get("/api/user/usage", headers=people["owner"]).get_json()
    assert usage["by_model"] == {"gpt-4": {"tokens": 30, "cost": 1.5, "requests": 3},
                                 "claude-3-opus": {"tokens": 1, "cost": 0.0, "requests": 1}}
