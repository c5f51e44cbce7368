"""Restarts in the middle of work, on the lab: Redis restarted (losing everything it held) while a
create runs and while creates wait in the queue, and the API server restarted during a burst of
creates. Nothing is lost: every desktop ends in a correct, explained state, the workers keep
working, and a reconciliation pass finds Proxmox, Guacamole and the database in agreement.
"""
from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
import requests

from tests.conftest import database_kind

from .helpers import TRANSITIONAL, Api, desktop_row, events
from .test_failures import (assert_nothing_left, connections_named, create, delete_and_check, lease_holder,
                            vms_named)

pytestmark = pytest.mark.timeout(420)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def wait_status(api: Api, desktop_id: int, wanted: set[str], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = api.status(desktop_id).json()["data"]["status"]
        if status in wanted:
            return status
        time.sleep(0.1)
    raise AssertionError(f"desktop {desktop_id} never reached {wanted}")


def assert_in_agreement(lab) -> None:
    """A reconciliation pass (dry run) finds nothing to fix: no VM or connection without a
    record, no record without its VM."""
    from controlplane.services import policies
    result = policies.run(lab.settings, "reconcile", dry_run=True)
    assert result["actions"] == [], result
    assert not [n for n in result["notes"] if n.startswith("skipped")], result["notes"]


def restart_redis(lab, private_redis) -> None:
    """Stop Redis until every live worker has seen it gone, then start it again (empty: no
    persistence). A busy worker quits RQ's loop and waits for Redis ("... once Redis answers"); an
    idle one retries its dequeue ("could not connect to Redis instance")."""
    from rq import Worker

    from controlplane.services.queue import get_redis
    busy = {w.name for w in Worker.all(connection=get_redis(lab.settings.redis_url)) if w.get_state() == "busy"}
    logs = {name: lab.workers.log_dir / f"{name}.log"
            for name, proc in lab.workers.procs.items() if proc.poll() is None}

    def signs(name: str) -> int:
        text = logs[name].read_text(errors="replace")
        quit_loop = text.count("once Redis answers")
        if any(b == name or b.startswith(name + "-") for b in busy):
            return quit_loop
        return quit_loop + text.count("could not connect to Redis instance")

    before = {name: signs(name) for name in logs}
    private_redis.stop()
    try:
        deadline = time.monotonic() + 60
        while waiting := [name for name in logs if signs(name) <= before[name]]:
            assert time.monotonic() < deadline, f"workers {waiting} never noticed that Redis was gone"
            time.sleep(0.1)
    finally:
        private_redis.start()


def test_redis_restarted_mid_create_and_with_creates_queued_loses_nothing(lab, private_redis):
    if private_redis is None:
        pytest.skip("restarts the tests' own Redis; CONTROLPLANE_TEST_REDIS_URL names another")
    users = [f"user_{uuid.uuid4().hex[:10]}" for _ in range(4)]
    apis = [Api(lab.url, lab.token(u)) for u in users]
    # One create in the middle of its playbook, three more behind it in the queue (two workers).
    first = create(apis[0], users[0])
    wait_status(apis[0], first, {"STARTING", "WAITING_FOR_IP", "CONFIGURING"})
    others = [create(api, user) for api, user in zip(apis[1:], users[1:])]
    restart_redis(lab, private_redis)  # a Redis without persistence: queue and registry are gone
    ids = [first, *others]
    for api, desktop_id in zip(apis, ids):
        data = api.wait_settled(desktop_id, timeout=180)
        assert data["status"] == "RUNNING", (desktop_id, data, events(desktop_id))
        assert len(vms_named(lab, desktop_id)) == 1 and len(connections_named(lab, desktop_id)) == 1
    # The workers came back by themselves and take new work.
    late_user = f"user_{uuid.uuid4().hex[:10]}"
    late_api = Api(lab.url, lab.token(late_user))
    late = create(late_api, late_user)
    assert late_api.wait_settled(late, timeout=90)["status"] == "RUNNING"
    assert_in_agreement(lab)
    for api, desktop_id in zip([*apis, late_api], [*ids, late]):
        delete_and_check(lab, api, desktop_id)


class ApiProcess:
    """The API as production runs it (`controlplane api`: gunicorn), on a port of its own."""

    def __init__(self, lab, port: int, log_path):
        self.lab, self.port, self.log_path = lab, port, log_path
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "ApiProcess":
        env = {**self.lab.workers.env(), "CONTROLPLANE_PORT": str(self.port)}
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "controlplane.cli", "api", "--workers", "2"],
                                     env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        # Until gunicorn has bound the port, connections are refused; then a request waits in the socket's
        # queue until a worker has started (it imports and warms the model library first: seconds, up to
        # tens of seconds on a busy machine).
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/api/v1/health", timeout=60).status_code in (200, 503):
                    return self
            except requests.ConnectionError:
                time.sleep(0.1)
            except requests.RequestException:
                pass
        raise AssertionError(f"the API did not come up: {open(self.log_path).read()[-2000:]}")

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


@pytest.mark.timeout(900)
def test_api_killed_during_a_burst_of_creates_loses_nothing(lab, tmp_path):
    from tests.conftest import free_port
    api_proc = ApiProcess(lab, free_port(), tmp_path / "api.log").start()
    # 10 creates on SQLite; 6 on PostgreSQL, whose pass must also fit in CI's time (the commit-then-
    # enqueue path under test is the same code on both)
    users = [f"user_{uuid.uuid4().hex[:10]}" for _ in range(10 if database_kind() == "sqlite" else 6)]

    def post(user: str):
        try:
            response = requests.post(f"{api_proc.url}/api/v1/desktops", json={"userId": user, "plan": "BASIC"},
                                     headers={"Authorization": f"Bearer {lab.token(user)}"}, timeout=30)
            return user, response.status_code, response.json()
        except requests.RequestException as exc:
            return user, None, repr(exc)

    try:
        with concurrent.futures.ThreadPoolExecutor(len(users)) as pool:
            futures = [pool.submit(post, user) for user in users]
            for done, _ in enumerate(concurrent.futures.as_completed(futures), start=1):
                if done == 1:  # one answered, the rest in flight or not yet read
                    api_proc.kill()
                    break
            answers = [f.result() for f in futures]
        api_proc.start()
        created = {user: body["data"]["id"] for user, code, body in answers if code == 201}
        refused = [(user, code, body) for user, code, body in answers if code not in (201, None)]
        assert not refused, refused
        print(f"{len(created)} creates answered 201 before the kill, {len(users) - len(created)} did not")
        started = time.monotonic()
        # Every desktop in the database, answered or not, ends RUNNING (the reaper enqueues the
        # ones whose job the dying API never queued); users whose request was cut off may retry.
        from controlplane.extensions import db
        from controlplane.models import Desktop
        with db.connection_context():
            rows = {d.user_id: d.id for d in Desktop.select().where(Desktop.user_id.in_(users))}
        assert set(created.items()) <= set(rows.items())
        for user, desktop_id in rows.items():
            api = Api(api_proc.url, lab.token(user))
            data = api.wait_settled(desktop_id, timeout=240)
            assert data["status"] == "RUNNING", (desktop_id, data, events(desktop_id))
        print(f"{len(rows)} desktops in the database, RUNNING after {time.monotonic() - started:.0f} s")
        for user in set(users) - set(rows):  # cut off before the insert: a retry creates it now
            _, code, body = post(user)
            assert code == 201, body
            rows[user] = body["data"]["id"]
            assert Api(api_proc.url, lab.token(user)).wait_settled(rows[user], timeout=120)["status"] == "RUNNING"
        assert_in_agreement(lab)
        vmids = {desktop_id: desktop_row(desktop_id).vmid for desktop_id in rows.values()}
        for user, desktop_id in rows.items():  # all deletes at once (the workers share them), then each checked
            assert Api(api_proc.url, lab.token(user)).delete(desktop_id).status_code == 200
        for user, desktop_id in rows.items():
            assert Api(api_proc.url, lab.token(user)).wait_settled(desktop_id, timeout=240)["status"] == "DELETED"
            assert_nothing_left(lab, desktop_id, vmids[desktop_id])
            assert lease_holder(vmids[desktop_id]) is False
        assert not [s for s in (desktop_row(i).status for i in rows.values()) if s in TRANSITIONAL]
    finally:
        if api_proc.proc and api_proc.proc.poll() is None:
            api_proc.kill()
