"""Rate limits on Redis (api/limits.py): the contracts' limits, their headers, and 429 in each API's
own envelope. Limits are made small by configuration here."""
from __future__ import annotations

import pytest

from controlplane.extensions import db
from controlplane.models import Desktop


@pytest.fixture
def limited(base_settings, database, client):
    from controlplane import create_app

    def make(**limits):
        return create_app(base_settings.replace(**limits)).test_client()
    return make


def test_api_limit_per_user_with_headers(limited, auth):
    c = limited(rate_limit_api="5/minute")
    for n in range(5):
        response = c.get("/api/v1/desktops", headers=auth())
        assert response.status_code == 200
        assert response.headers["X-RateLimit-Limit"] == "5"
        assert response.headers["X-RateLimit-Remaining"] == str(4 - n)
        assert int(response.headers["X-RateLimit-Reset"]) > 0
        assert "Retry-After" not in response.headers  # only a refusal says when to retry
    refused = c.get("/api/v1/desktops", headers=auth())
    assert refused.status_code == 429
    body = refused.get_json()
    assert body["success"] is False and body["error"] == "RATE_LIMIT_EXCEEDED" and body["path"] == "/api/v1/desktops"
    assert int(refused.headers["Retry-After"]) > 0
    # Per user: someone else is not affected; the projects API shares the same per-user budget.
    assert c.get("/api/v1/desktops", headers=auth("user_other")).status_code == 200
    projects = c.get("/api/projects", headers=auth())
    assert projects.status_code == 429 and projects.get_json()["error"]["code"] == "RATE_LIMIT_EXCEEDED"
    # Health and the API documents are not limited.
    assert c.get("/api/v1/openapi.json").status_code == 200


def test_desktop_creations_per_hour_count_only_created_desktops(limited, auth):
    c = limited(rate_limit_desktop_create="2/hour")
    for attempt in range(2):
        created = c.post("/api/v1/desktops", json={"userId": "user_12345"}, headers=auth())
        assert created.status_code == 201
        if attempt == 0:  # a refused create (409) does not use up the budget
            assert c.post("/api/v1/desktops", json={"userId": "user_12345"}, headers=auth()).status_code == 409
        with db.connection_context():
            Desktop.update(status="DELETED").where(Desktop.id == created.get_json()["data"]["id"]).execute()
    third = c.post("/api/v1/desktops", json={"userId": "user_12345"}, headers=auth())
    assert third.status_code == 429 and third.get_json()["error"] == "RATE_LIMIT_EXCEEDED"
    with db.connection_context():
        assert Desktop.select().where(Desktop.status != "DELETED").count() == 0
    # Reading is not creation.
    assert c.get("/api/v1/desktops", headers=auth()).status_code == 200


def test_project_creations_per_hour(limited, token):
    c = limited(rate_limit_project_create="1/hour")
    headers = {"Authorization": "Bearer " + token("user_p")}
    assert c.post("/api/projects", json={"name": "one"}, headers=headers).status_code == 201
    refused = c.post("/api/projects", json={"name": "two"}, headers=headers)
    assert refused.status_code == 429
    assert refused.get_json() == {"error": {"code": "RATE_LIMIT_EXCEEDED",
                                            "message": "Rate limit exceeded: 1 per 1 hour",
                                            "details": {"limit": "1 per 1 hour"}}}


def test_chat_messages_per_project(limited, token):
    c = limited(rate_limit_chat="2/minute")
    owner = {"Authorization": "Bearer " + token("user_chat")}
    project_id = c.post("/api/projects", json={"name": "p"}, headers=owner).get_json()["project_id"]
    other = c.post("/api/projects", json={"name": "q"}, headers=owner).get_json()["project_id"]
    for _ in range(2):  # no model is configured in these tests: 400, but the message still counts
        assert c.post("/api/chat", json={"project_id": project_id, "message": "hi"}, headers=owner).status_code == 400
    assert c.post("/api/chat", json={"project_id": project_id, "message": "hi"}, headers=owner).status_code == 429
    assert c.post("/api/chat", json={"project_id": other, "message": "hi"}, headers=owner).status_code == 400


def test_limits_can_be_switched_off(limited, auth):
    c = limited(rate_limits=False, rate_limit_api="1/minute")
    for _ in range(3):
        assert c.get("/api/v1/desktops", headers=auth()).status_code == 200


def test_bad_limit_setting_is_refused():
    from controlplane.config import ConfigError, Settings
    with pytest.raises(ConfigError, match="CONTROLPLANE_RATE_LIMIT_CHAT"):
        Settings.from_env({"CONTROLPLANE_RATE_LIMIT_CHAT": "lots"})


def test_the_first_half_of_a_budget_is_counted_here_and_sent_in_one_call(limited, auth):
    """A plain request in the first half of its user's budget makes no round trip: the counts of every
    user reach Redis together, one script call per sync; the second half is counted request by
    request, and the refusal comes exactly at the limit. A create is counted in Redis (with what is
    pending of its user's budget), and once more after its answer when it made something."""
    c = limited(rate_limit_api="10/minute", rate_limit_sync=10)  # no sync in the background here
    limits = c.application.extensions["controlplane_limits"]
    calls = []
    script = limits.script
    limits.script = lambda **kw: calls.append((kw["keys"], kw["args"])) or script(**kw)
    for n in range(5):
        response = c.get("/api/v1/desktops", headers=auth())
        assert response.status_code == 200 and response.headers["X-RateLimit-Remaining"] == str(9 - n)
    assert c.get("/api/v1/desktops", headers=auth("user_other")).status_code == 200
    assert calls == []
    assert limits.sync() == 2
    assert len(calls) == 1 and sorted(calls[0][1][1::2]) == [1, 5]  # both users' counts in one call
    assert limits.sync() == 0 and len(calls) == 1  # nothing new: nothing sent
    calls.clear()
    for n in range(5, 10):  # the second half: each one counted in Redis
        response = c.get("/api/v1/desktops", headers=auth())
        assert response.status_code == 200 and response.headers["X-RateLimit-Remaining"] == str(9 - n)
    assert len(calls) == 5
    refused = c.get("/api/v1/desktops", headers=auth())
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    calls.clear()
    # Past the limit, this process refuses without asking Redis until the window ends.
    assert c.get("/api/v1/desktops", headers=auth()).status_code == 429 and calls == []

    c = limited(rate_limit_api="50/minute", rate_limit_sync=10)
    limits = c.application.extensions["controlplane_limits"]
    calls.clear()
    script = limits.script
    limits.script = lambda **kw: calls.append((kw["keys"], kw["args"])) or script(**kw)
    assert c.get("/api/v1/desktops", headers=auth("user_creates")).status_code == 200 and calls == []
    created = c.post("/api/v1/desktops", json={"userId": "user_creates"}, headers=auth("user_creates"))
    assert created.status_code == 201 and created.headers["X-RateLimit-Remaining"] == "4"  # 5/hour, this one
    # budget (the read pending here and this request) and create limit read, then the create counted
    assert [(len(keys), args[1::2]) for keys, args in calls] == [(2, [2, 0]), (1, [1])]


def test_a_budget_counted_in_two_api_processes(limited, auth):
    """Two API processes (two apps) share a user's budget through Redis: the first half is counted in
    each and synced; from the second half on, every request is counted in Redis, so the refusal
    comes at the limit when the requests were more than a sync interval apart."""
    one, two = limited(rate_limit_api="8/minute", rate_limit_sync=10), limited(rate_limit_api="8/minute",
                                                                                rate_limit_sync=10)
    statuses = []
    for n in range(10):
        client = (one, two)[n % 2]
        statuses.append(client.get("/api/v1/desktops", headers=auth("user_shared")).status_code)
        for c in (one, two):  # the background syncs, made here at once
            c.application.extensions["controlplane_limits"].sync()
    assert statuses == [200] * 8 + [429, 429]


def test_limits_are_skipped_when_redis_does_not_answer(base_settings, database, auth):
    from controlplane import create_app
    c = create_app(base_settings.replace(rate_limit_api="1/minute")).test_client()
    import redis as redis_lib

    def down(**_):
        raise redis_lib.ConnectionError("Redis is down")
    c.application.extensions["controlplane_limits"].script = down
    for _ in range(3):  # over the limit, but nothing can count: served, without limit headers
        response = c.get("/api/v1/desktops", headers=auth())
        assert response.status_code == 200 and "X-RateLimit-Limit" not in response.headers


def test_the_counts_reach_redis_in_the_background(limited, auth, redis_conn, monkeypatch):
    """The syncer sends what was counted; with nothing to send it ends, and the next request starts it again."""
    import hashlib

    from controlplane.api import limits as limits_module
    monkeypatch.setattr(limits_module, "SYNCER_IDLE_SECONDS", 0.3)
    c = limited(rate_limit_api="100/minute", rate_limit_sync=0.05)
    limits = c.application.extensions["controlplane_limits"]
    key = "controlplane:ratelimit:api:100-60:user:" + hashlib.sha256(b"user_synced").hexdigest()[:32]

    def requests_then_syncers_end(count: int) -> None:
        """`count` requests; then every syncer they started ends, which it does only once all it
        counted is in Redis and nothing more came for a while."""
        syncers = []
        for _ in range(count):
            assert c.get("/api/v1/desktops", headers=auth("user_synced")).status_code == 200
            syncers.append(limits._syncer)  # the one that sends this request's count, unless done already
        for syncer in filter(None, syncers):
            syncer.join(10)
            assert not syncer.is_alive(), "the syncer never ended with nothing to send"

    requests_then_syncers_end(3)
    assert redis_conn.get(key) == b"3" and 55 <= redis_conn.ttl(key) <= 60
    assert limits._syncer is None
    requests_then_syncers_end(1)  # a new syncer sends it
    assert redis_conn.get(key) == b"4"
