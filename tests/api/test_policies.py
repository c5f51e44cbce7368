"""Lifecycle policies (services/policies.py) and their admin API, on the real database and Redis
with a Guacamole stand-in: what each pass decides, that it acts through the state machine (status,
event with the policy as source, a job whose meta carries the reason), dry runs, the lock, and
expiresAt on create. The worker's side (the final "Desktop is stopped: <reason>") runs in
tests/e2e/test_policies.py."""
from __future__ import annotations

import datetime as dt
import threading
import uuid

import pytest
from rq import Queue

from controlplane.extensions import db
from controlplane.lab.guacamole import GuacamoleStandIn
from controlplane.models import Desktop, DesktopEvent, utcnow
from controlplane.services import policies, policy_runs
from controlplane.services.queue import MAINTENANCE_QUEUE_NAME, QUEUE_NAME
from tests.loop import LoopThread

BASE = "/api/v1/desktops"
PLANS = """
plans:
  BASIC: {cores: 2, memory_mb: 2048, template: tmpl-debian12-desktop, expires_after: 8h, idle_stop_after: 30m}
  STANDARD: {cores: 4, memory_mb: 4096, template: tmpl-debian12-desktop}
"""


@pytest.fixture
def guac():
    loop = LoopThread()
    standin = GuacamoleStandIn(port=0, password="guac-policy-test")
    loop.run(standin.start())
    yield standin
    loop.run(standin.stop())
    loop.close()


@pytest.fixture
def settings(base_settings, guac, tmp_path, client):
    plans = tmp_path / "plans.yml"
    plans.write_text(PLANS)
    return base_settings.replace(plans_file=plans, guacamole_url=guac.url, guacamole_password="guac-policy-test",
                                 expiry_grace=3600, failed_retention=86400, stuck_after=1800)


def desktop(status="RUNNING", plan="BASIC", user=None, ago=0, **fields) -> int:
    """A desktop record in `status` since `ago` seconds, with its RUNNING event then."""
    at = utcnow() - dt.timedelta(seconds=ago)
    with db.connection_context():
        d = Desktop.create(user_id=user or f"user_{uuid.uuid4().hex[:12]}",
                           name="d", plan=plan, cpu_cores=2, memory_mb=2048, status=status,
                           status_message="Desktop is ready", vmid=12000 + Desktop.select().count(),
                           node=fields.pop("node", "pve1"), guacamole_connection_id=fields.pop("connection", None),
                           updated_at=at, created_at=at, **fields)
        DesktopEvent.create(desktop=d.id, status=status, message="", source="worker", created_at=at)
    return d.id


def row(desktop_id) -> Desktop:
    with db.connection_context():
        return Desktop.get_by_id(desktop_id)


def policy_events(desktop_id):
    with db.connection_context():
        return [(e.status, e.source, e.message) for e in
                DesktopEvent.select().where(DesktopEvent.desktop == desktop_id).order_by(DesktopEvent.id)
                if e.source.startswith("policy:")]


def queued(redis_conn) -> dict[int, dict]:
    """desktop id → meta of the jobs waiting in the queue."""
    return {job.meta["resource_id"]: job.meta for job in Queue(QUEUE_NAME, connection=redis_conn).jobs}


def by_desktop(result) -> dict[int, dict]:
    return {a["desktopId"]: a for a in result["actions"]}


# ---- expiry -------------------------------------------------------------------------------------

def test_expired_desktops_are_stopped_then_deleted_after_the_grace(settings, redis_conn):
    now = utcnow()
    running_expired = desktop(expires_at=now - dt.timedelta(minutes=5))
    stopped_in_grace = desktop("STOPPED", expires_at=now - dt.timedelta(minutes=30))
    stopped_past_grace = desktop("STOPPED", expires_at=now - dt.timedelta(hours=2))
    failed_past_grace = desktop("FAILED", expires_at=now - dt.timedelta(hours=2))
    running_not_yet = desktop(expires_at=now + dt.timedelta(hours=1))
    running_never = desktop()
    busy_expired = desktop("STOPPING", expires_at=now - dt.timedelta(hours=2))

    planned = policies.run(settings, "expire", dry_run=True)
    assert planned["dryRun"] is True
    assert {d: (a["action"], a["done"]) for d, a in by_desktop(planned).items()} == {
        running_expired: ("stop", False), stopped_past_grace: ("delete", False), failed_past_grace: ("delete", False)}
    assert row(running_expired).status == "RUNNING" and queued(redis_conn) == {}  # a dry run changes nothing

    from prometheus_client import REGISTRY

    def counted(action):
        return REGISTRY.get_sample_value("cds_policy_actions_total",
                                         {"policy": "expire", "action": action, "done": "true"}) or 0
    stops, deletes = counted("stop"), counted("delete")
    done = by_desktop(policies.run(settings, "expire"))
    assert set(done) == {running_expired, stopped_past_grace, failed_past_grace}
    assert (counted("stop"), counted("delete")) == (stops + 1, deletes + 2)  # a dry run counted nothing
    assert all(a["done"] and a["error"] is None for a in done.values())
    stop_reason = done[running_expired]["reason"]
    assert stop_reason.startswith("expired at ") and "it will be deleted after" in stop_reason
    assert row(running_expired).status == "STOPPING"
    assert row(running_expired).status_message == f"Shutting down VM: {stop_reason}"
    assert policy_events(running_expired) == [("STOPPING", "policy:expire", f"Shutting down VM: {stop_reason}")]
    assert row(stopped_past_grace).status == "DELETING" and row(failed_past_grace).status == "DELETING"
    assert "deleted after the grace period of 1 hour" in done[stopped_past_grace]["reason"]
    jobs = queued(redis_conn)
    assert set(jobs) == set(done)
    assert jobs[running_expired]["operation"] == "stop" and jobs[running_expired]["reason"] == stop_reason
    assert jobs[stopped_past_grace]["operation"] == "delete"
    for untouched in (stopped_in_grace, running_not_yet, running_never, busy_expired):
        assert policy_events(untouched) == [] and untouched not in jobs
    # A second pass finds nothing new to do (the stopping one is in a transition now).
    assert policies.run(settings, "expire")["actions"] == []


def test_create_takes_expires_at_within_the_plans_lifetime(app, client, auth, base_settings, tmp_path):
    plans = tmp_path / "plans.yml"
    plans.write_text(PLANS)
    app.extensions["controlplane.settings"] = base_settings.replace(plans_file=plans)
    try:
        def create(user, **body):
            return client.post(BASE, json={"userId": user, **body}, headers=auth(user))

        soon = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=2)).replace(microsecond=0)
        made = create("user_exp1", expiresAt=soon.isoformat())
        assert made.status_code == 201, made.get_json()
        assert dt.datetime.fromisoformat(made.get_json()["data"]["expiresAt"]) == soon
        # Omitted or null: the plan's lifetime (8 hours); a plan without one: never.
        default = dt.datetime.fromisoformat(create("user_exp2").get_json()["data"]["expiresAt"])
        assert abs((default - dt.datetime.now(dt.timezone.utc)) - dt.timedelta(hours=8)) < dt.timedelta(minutes=1)
        assert create("user_exp3", expiresAt=None).get_json()["data"]["expiresAt"] is not None
        assert create("user_exp4", plan="STANDARD").get_json()["data"]["expiresAt"] is None
        for value, message in (
                ((dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)).isoformat(), "in the future"),
                ((dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=9)).isoformat(), "at most 8 hours"),
                ("2030-01-01T00:00:00", "time zone offset"), ("tomorrow", "ISO 8601"), (12, "ISO 8601")):
            refused = create("user_exp5", expiresAt=value)
            body = refused.get_json()
            assert refused.status_code == 400 and body["error"] == "VALIDATION_ERROR", body
            assert message in body["details"]["expiresAt"], body
    finally:
        app.extensions["controlplane.settings"] = base_settings


def test_an_expired_desktop_cannot_be_started(client, auth):
    stopped = desktop("STOPPED", user="user_expired", expires_at=utcnow() - dt.timedelta(minutes=1))
    response = client.post(f"{BASE}/{stopped}/start", headers=auth("user_expired"))
    body = response.get_json()
    assert response.status_code == 400 and body["error"] == "INVALID_OPERATION"
    assert body["message"].startswith("Cannot start desktop: it expired at ")
    later = desktop("STOPPED", user="user_later", expires_at=utcnow() + dt.timedelta(hours=1))
    assert client.post(f"{BASE}/{later}/start", headers=auth("user_later")).status_code == 200


# ---- idle ---------------------------------------------------------------------------------------

def test_idle_desktops_are_stopped_and_active_ones_kept(settings, guac, redis_conn):
    idle = desktop(ago=3600, connection="11")
    recently_connected = desktop(ago=3600, connection="12", last_accessed_at=utcnow() - dt.timedelta(minutes=5))
    just_started = desktop(ago=60, connection="13")
    in_guacamole = desktop(ago=3600, connection="14")
    no_idle_plan = desktop(ago=3600, plan="STANDARD", connection="15")
    for identifier in ("11", "12", "13", "14", "15"):
        guac.connections[identifier] = {"name": f"c{identifier}", "protocol": "vnc", "parameters": {}}
    guac.open_session("14")

    result = policies.run(settings, "idle")
    assert list(by_desktop(result)) == [idle]
    action = by_desktop(result)[idle]
    assert action["done"] and action["reason"].startswith("idle: no connection since ")
    assert "(plan BASIC stops desktops idle for 30 minutes)" in action["reason"]
    assert row(idle).status == "STOPPING" and queued(redis_conn)[idle]["reason"] == action["reason"]
    assert policy_events(idle) == [("STOPPING", "policy:idle", f"Shutting down VM: {action['reason']}")]
    # Someone connected through Guacamole: kept, and its lastAccessedAt moved to now.
    assert row(in_guacamole).status == "RUNNING"
    assert utcnow() - row(in_guacamole).last_accessed_at < dt.timedelta(minutes=1)
    for kept in (recently_connected, just_started, no_idle_plan):
        assert row(kept).status == "RUNNING" and policy_events(kept) == []


def test_idle_stops_nothing_when_guacamole_cannot_say_who_is_connected(settings, guac):
    idle = desktop(ago=3600, connection="21")
    guac.down = True
    result = policies.run(settings, "idle")
    assert result["actions"] == [] and row(idle).status == "RUNNING"
    assert result["notes"] and result["notes"][0].startswith("skipped: could not read Guacamole's active connections")
    assert "guac-policy-test" not in str(result)


def test_the_lab_client_page_counts_as_an_active_connection(guac):
    import requests

    from controlplane.lab.guacamole import client_identifier
    guac.connections["31"] = {"name": "c31", "protocol": "vnc", "parameters": {}}
    assert requests.get(f"{guac.url}/_lab/client/{client_identifier('31', guac.data_source)}", timeout=10).ok
    token = requests.post(f"{guac.url}/api/tokens", data={"username": "guacadmin", "password": "guac-policy-test"},
                          timeout=10).json()["authToken"]
    active = requests.get(f"{guac.url}/api/session/data/{guac.data_source}/activeConnections",
                          headers={"Guacamole-Token": token}, timeout=10).json()
    assert [a["connectionIdentifier"] for a in active.values()] == ["31"]
    guac.active_timeout = 0  # the page stopped asking
    assert requests.get(f"{guac.url}/api/session/data/{guac.data_source}/activeConnections",
                        headers={"Guacamole-Token": token}, timeout=10).json() == {}


# ---- stuck and failed ---------------------------------------------------------------------------

def test_stuck_desktops_fail_and_old_failed_ones_are_deleted(settings, redis_conn):
    stuck = desktop("STOPPING", ago=3600, operation="stop", job_id="desktop-x-stop-dead")
    busy = desktop("PROVISIONING", ago=60, operation="create", job_id="desktop-y-create-live")
    old_failed = desktop("FAILED", ago=2 * 86400)
    new_failed = desktop("FAILED", ago=3600)

    result = by_desktop(policies.run(settings, "cleanup"))
    assert set(result) == {stuck, old_failed}
    assert result[stuck]["action"] == "fail" and result[stuck]["done"]
    assert row(stuck).status == "FAILED" and row(stuck).job_id is None and row(stuck).operation is None
    assert row(stuck).status_message.startswith("Stop failed: stuck in STOPPING since ")
    assert policy_events(stuck)[0][:2] == ("FAILED", "policy:cleanup")
    assert result[old_failed]["action"] == "delete" and row(old_failed).status == "DELETING"
    assert "failed desktops are kept for 1 day" in result[old_failed]["reason"]
    assert queued(redis_conn)[old_failed]["operation"] == "delete"
    assert row(busy).status == "PROVISIONING" and row(new_failed).status == "FAILED"


def test_retention_zero_keeps_failed_desktops(settings):
    old_failed = desktop("FAILED", ago=30 * 86400)
    assert policies.run(settings.replace(failed_retention=0), "cleanup")["actions"] == []
    assert row(old_failed).status == "FAILED"


# ---- running passes -----------------------------------------------------------------------------

def test_one_pass_per_policy_at_a_time(settings, redis_conn):
    redis_conn.set("controlplane:policy:expire:lock", "someone-else", ex=60)
    with pytest.raises(policies.PolicyRunning):
        policies.run(settings, "expire")
    assert policies.run(settings, "cleanup")["policy"] == "cleanup"  # other policies are free
    redis_conn.delete("controlplane:policy:expire:lock")
    assert policies.run(settings, "expire")["policy"] == "expire"
    assert redis_conn.get("controlplane:policy:expire:lock") is None  # released


def test_concurrent_passes_act_once(settings, redis_conn):
    expired = desktop(expires_at=utcnow() - dt.timedelta(minutes=1))
    results, errors = [], []

    def run():
        try:
            results.append(policies.run(settings, "expire"))
        except policies.PolicyRunning as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    acted = [a for r in results for a in r["actions"] if a["done"]]
    assert [a["desktopId"] for a in acted] == [expired]
    assert len(results) + len(errors) == 4
    assert len(policy_events(expired)) == 1


def test_the_admin_api_runs_passes(client, auth, redis_conn):
    expired = desktop(user="user_adm", expires_at=utcnow() - dt.timedelta(minutes=1))
    url = "/api/v1/admin/policies/expire"
    dry = client.post(url, json={"dryRun": True}, headers=auth("ops", admin=True))
    assert dry.status_code == 200, dry.get_json()
    body = dry.get_json()
    assert list(body) == ["success", "data", "timestamp"] and body["data"]["dryRun"] is True
    assert [a["desktopId"] for a in body["data"]["actions"]] == [expired] and row(expired).status == "RUNNING"
    real = client.post(url, headers=auth("ops", admin=True)).get_json()["data"]
    assert real["actions"][0]["done"] is True and row(expired).status == "STOPPING"

    for response, status, code in (
            (client.post(url, headers=auth("user_adm")), 403, "FORBIDDEN"),
            (client.post(url), 401, "UNAUTHORIZED"),
            (client.post("/api/v1/admin/policies/nope", headers=auth("ops", admin=True)), 404, "NOT_FOUND"),
            (client.post(url, json={"dryRun": "maybe"}, headers=auth("ops", admin=True)), 400, "VALIDATION_ERROR")):
        body = response.get_json()
        assert response.status_code == status and body["success"] is False and body["error"] == code, body
    redis_conn.set("controlplane:policy:idle:lock", "x", ex=60)
    busy = client.post("/api/v1/admin/policies/idle", headers=auth("ops", admin=True))
    assert busy.status_code == 409 and busy.get_json()["error"] == "POLICY_RUNNING"


def test_events_show_who_did_what_and_why(client, auth, settings):
    expired = desktop(user="user_ev", expires_at=utcnow() - dt.timedelta(minutes=1))
    policies.run(settings, "expire")
    response = client.get(f"{BASE}/{expired}/events", headers=auth("user_ev"))
    assert response.status_code == 200, response.get_json()
    events = response.get_json()["data"]["events"]
    assert [(e["status"], e["source"]) for e in events] == [("RUNNING", "worker"), ("STOPPING", "policy:expire")]
    assert events[-1]["message"].startswith("Shutting down VM: expired at ")
    assert client.get(f"{BASE}/{expired}/events", headers=auth("user_other")).status_code == 404
    assert client.get(f"{BASE}/{expired}/events", headers=auth("ops", admin=True)).status_code == 200


def test_the_periodic_job_is_enqueued_once_per_interval_and_runs_every_policy(settings, redis_conn, monkeypatch):
    from controlplane.tasks import engine, maintenance
    expired = desktop(expires_at=utcnow() - dt.timedelta(minutes=1))
    stuck = desktop("STARTING", ago=3600, operation="start", job_id="desktop-z-start-dead")
    assert maintenance.enqueue_if_due(settings.replace(policy_interval=0), redis_conn) is False
    assert maintenance.enqueue_if_due(settings.replace(policy_interval=60), redis_conn) is True
    assert maintenance.enqueue_if_due(settings.replace(policy_interval=60), redis_conn) is False  # this interval's
    assert not [j for j in Queue(QUEUE_NAME, connection=redis_conn).jobs if j.func_name == maintenance.JOB_FUNCTION]
    [job] = [j for j in Queue(MAINTENANCE_QUEUE_NAME, connection=redis_conn).jobs
             if j.func_name == maintenance.JOB_FUNCTION]  # behind users' jobs
    assert job.args == () and job.kwargs == {}
    monkeypatch.setattr(engine, "_settings", settings)  # what the worker's configure() sets
    summary = job.func()
    assert summary["expire"]["done"] == 1 and summary["cleanup"]["done"] == 1
    assert summary["idle"] == {"done": 0, "not_done": 0, "notes": []}
    assert summary["reconcile"]["notes"][0].startswith("skipped: could not read Proxmox VE's VMs")  # none here
    assert row(expired).status == "STOPPING" and row(stuck).status == "FAILED"


# ---- draining a node ------------------------------------------------------------------------------

def test_draining_a_node_stops_what_runs_there_and_keeps_it_free(client, auth, redis_conn):
    admin = auth("ops", admin=True)
    on_node = desktop(user="user_drain1", node="pve7")
    also = desktop(user="user_drain2", node="pve7")
    stopped = desktop("STOPPED", user="user_drain3", node="pve7")
    busy = desktop("STARTING", user="user_drain4", node="pve7")
    elsewhere = desktop(user="user_drain5", node="pve1")
    url = "/api/v1/admin/nodes/pve7"

    report = client.get(url, headers=admin).get_json()["data"]
    assert report["draining"] is False and report["settled"] is False
    assert report["desktops"] == {"RUNNING": [on_node, also], "STOPPED": [stopped], "STARTING": [busy]}

    dry = client.post(f"{url}/drain", json={"dryRun": True}, headers=admin).get_json()["data"]
    assert [a["desktopId"] for a in dry["actions"]] == [on_node, also] and not any(a["done"] for a in dry["actions"])
    assert client.get(url, headers=admin).get_json()["data"]["draining"] is False  # a dry run changes nothing

    done = client.post(f"{url}/drain", headers=admin)
    assert done.status_code == 200, done.get_json()
    data = done.get_json()["data"]
    assert [(a["desktopId"], a["action"], a["done"]) for a in data["actions"]] == [(on_node, "stop", True),
                                                                                  (also, "stop", True)]
    assert data["notes"] == ["node pve7 is in maintenance until released",
                             f"desktop {busy} is STARTING: not stopped by this run"]
    assert row(on_node).status == "STOPPING"
    assert row(on_node).status_message == "Shutting down VM: node pve7 is drained for maintenance"
    assert policy_events(on_node) == [("STOPPING", "policy:drain", row(on_node).status_message)]
    assert queued(redis_conn)[on_node]["reason"] == "node pve7 is drained for maintenance"
    assert row(elsewhere).status == "RUNNING"
    assert client.get(url, headers=admin).get_json()["data"]["draining"] is True

    # In maintenance: nothing starts there (retry later), other nodes are not affected.
    refused = client.post(f"{BASE}/{stopped}/start", headers=auth("user_drain3"))
    body = refused.get_json()
    assert refused.status_code == 500 and body["error"] == "INFRASTRUCTURE_ERROR", body
    assert body["message"] == "Cannot start desktop: node pve7 is under maintenance; try again later"

    released = client.delete(f"{url}/drain", headers=admin)
    assert released.status_code == 200 and released.get_json()["data"]["draining"] is False
    assert client.post(f"{BASE}/{stopped}/start", headers=auth("user_drain3")).status_code == 200


def test_creates_wait_while_the_node_is_drained(client, auth, base_settings):
    admin = auth("ops", admin=True)
    node = base_settings.proxmox_node
    assert client.post(f"/api/v1/admin/nodes/{node}/drain", headers=admin).status_code == 200
    try:
        refused = client.post(BASE, json={"userId": "user_new"}, headers=auth("user_new"))
        assert refused.status_code == 500 and refused.get_json()["error"] == "INFRASTRUCTURE_ERROR"
        assert "under maintenance" in refused.get_json()["message"]
        project = client.post("/api/projects", json={"name": "P"}, headers=auth("user_new"))
        assert project.status_code == 503 and project.get_json()["error"]["code"] == "SERVICE_UNAVAILABLE"
    finally:
        client.delete(f"/api/v1/admin/nodes/{node}/drain", headers=admin)
    assert client.post(BASE, json={"userId": "user_new"}, headers=auth("user_new")).status_code == 201


def test_drain_refusals(client, auth, redis_conn):
    admin = auth("ops", admin=True)
    for response, status, code in (
            (client.post("/api/v1/admin/nodes/pve1/drain", headers=auth("user_x")), 403, "FORBIDDEN"),
            (client.post("/api/v1/admin/nodes/bad_name!/drain", headers=admin), 400, "VALIDATION_ERROR"),
            (client.post("/api/v1/admin/nodes/pve1/drain", json={"force": "hard"}, headers=admin), 400,
             "VALIDATION_ERROR"),
            (client.get("/api/v1/admin/nodes/-x", headers=admin), 400, "VALIDATION_ERROR")):
        assert response.status_code == status and response.get_json()["error"] == code, response.get_json()
    redis_conn.set("controlplane:drain:pve1:lock", "x", ex=60)
    assert client.post("/api/v1/admin/nodes/pve1/drain", headers=admin).status_code == 409


def test_every_pass_that_acted_is_recorded_and_listed(client, auth, settings):
    admin = auth("ops", admin=True)
    expired = desktop(user="user_rec", expires_at=utcnow() - dt.timedelta(minutes=1))
    assert client.post("/api/v1/admin/policies/expire", json={"dryRun": True}, headers=admin).status_code == 200
    assert client.post("/api/v1/admin/policies/expire", headers=admin).status_code == 200
    assert client.post("/api/v1/admin/policies/expire", headers=admin).status_code == 200  # nothing left: not kept
    policies.run(settings, "cleanup")  # nothing to do: not kept
    assert client.post("/api/v1/admin/nodes/pve3/drain", headers=admin).status_code == 200
    assert client.delete("/api/v1/admin/nodes/pve3/drain", headers=admin).status_code == 200
    listed = client.get("/api/v1/admin/policies/runs", headers=admin)
    assert listed.status_code == 200, listed.get_json()
    runs = listed.get_json()["data"]["runs"]
    assert [(r["policy"], r["ranBy"]) for r in runs] == [("drain", "admin ops"), ("drain", "admin ops"),
                                                          ("expire", "admin ops")]
    assert runs[0]["notes"] == ["node pve3 released from maintenance"]
    assert [(a["desktopId"], a["action"], a["done"]) for a in runs[2]["actions"]] == [(expired, "stop", True)]
    assert runs[2]["actions"][0]["reason"].startswith("expired at ")
    only = client.get("/api/v1/admin/policies/runs?policy=expire&limit=1", headers=admin).get_json()["data"]["runs"]
    assert [r["id"] for r in only] == [runs[2]["id"]]
    assert client.get("/api/v1/admin/policies/runs", headers=auth("user_rec")).status_code == 403
    assert client.get("/api/v1/admin/policies/runs?limit=0", headers=admin).status_code == 400


def test_old_records_are_pruned(settings, client, auth):
    import datetime as _dt

    from controlplane.models import AuditEntry, PolicyRun
    with db.connection_context():
        old = utcnow() - _dt.timedelta(days=400)
        PolicyRun.create(policy="expire", ran_by="periodic job", ran_at=old)
        PolicyRun.create(policy="expire", ran_by="periodic job")
        AuditEntry.create(request_id="old", method="POST", path="/api/x", action="a", status=200, result="ok", at=old)
        AuditEntry.create(request_id="new", method="POST", path="/api/x", action="a", status=200, result="ok")
    assert policy_runs.prune_records(settings.replace(audit_retention_days=0)) == 0
    assert policy_runs.prune_records(settings) == 2
    with db.connection_context():
        assert PolicyRun.select().count() == 1 and [e.request_id for e in AuditEntry.select()] == ["new"]
