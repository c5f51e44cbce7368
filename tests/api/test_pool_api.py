"""The warm pool through the API, without workers: admins see and size each plan's pool; a create
takes a READY pool VM in its own transaction (its VM id, node and lease), never the same one twice,
never one of another plan or on a node in maintenance, and gives it back when it cannot be queued.
The pool's end-to-end behaviour (fills, refills, adoption by the playbook) is in tests/e2e/test_pool.py."""
from __future__ import annotations

import threading

import pytest
import redis as redis_lib
from rq import Queue

from controlplane.extensions import db
from controlplane.models import Desktop, PoolVm, PoolVmState, VmidLease
from controlplane.services import pool
from controlplane.services.queue import MAINTENANCE_QUEUE_NAME, QUEUE_NAME

BASE = "/api/v1/desktops"
POOLS = "/api/v1/admin/pools"


def ready_vm(plan: str = "STANDARD", vmid: int = 20001, node: str = "pve1", power: str = "running",
             ready_at=None) -> PoolVm:
    """A READY pool VM with its VM-id lease, as a fill job leaves it."""
    from controlplane.models import utcnow
    with db.connection_context():
        vm = PoolVm.create(plan=plan, template="tmpl-debian12-desktop", vmid=vmid, node=node, power=power,
                           state=PoolVmState.READY.value, message="Ready", ip_address="10.66.0.50",
                           ready_at=ready_at or utcnow())
        VmidLease.create(vmid=vmid, pool_vm_id=vm.id)
    return vm


def pool_of(client, auth, plan: str) -> dict:
    response = client.get(POOLS, headers=auth("ops", admin=True))
    assert response.status_code == 200, response.get_json()
    return next(p for p in response.get_json()["data"]["pools"] if p["plan"] == plan)


def test_admins_see_every_plans_pool(client, auth):
    ready_vm(vmid=20001)
    response = client.get(POOLS, headers=auth("ops", admin=True))
    assert response.status_code == 200
    body = response.get_json()
    assert body["success"] is True and list(body) == ["success", "data", "timestamp"]
    pools = {p["plan"]: p for p in body["data"]["pools"]}
    assert set(pools) == {"BASIC", "STANDARD", "PREMIUM"}
    standard = pools["STANDARD"]
    assert (standard["size"], standard["power"], standard["source"], standard["ready"], standard["filling"]) == \
        (0, "running", "plans file", 1, 0)
    [vm] = standard["vms"]
    assert (vm["name"], vm["vmid"], vm["node"], vm["state"], vm["ipAddress"]) == \
        (f"cds-pool-{vm['id']}", 20001, "pve1", "READY", "10.66.0.50")
    assert vm["createdAt"].endswith("+00:00") and vm["readyAt"]


def test_only_admins_see_or_size_pools(client, auth):
    for method in ("get", "put", "delete"):
        url = POOLS if method == "get" else f"{POOLS}/STANDARD"
        kwargs = {"json": {"size": 1}} if method == "put" else {}
        refused = getattr(client, method)(url, headers=auth("user_12345"), **kwargs)
        assert refused.status_code == 403 and refused.get_json()["error"] == "FORBIDDEN", method
        assert getattr(client, method)(url, **kwargs).status_code == 401, method


def test_an_admin_sizes_a_pool_and_a_refill_is_queued(client, auth, redis_conn):
    response = client.put(f"{POOLS}/STANDARD", json={"size": 3, "power": "stopped"}, headers=auth("ops", admin=True))
    assert response.status_code == 200, response.get_json()
    data = response.get_json()["data"]
    assert (data["plan"], data["size"], data["power"], data["source"]) == ("STANDARD", 3, "stopped", "admin ops")
    jobs = Queue(MAINTENANCE_QUEUE_NAME, connection=redis_conn).jobs
    assert [j.func_name for j in jobs] == [pool.REFILL_JOB]
    assert not Queue(QUEUE_NAME, connection=redis_conn).jobs  # never ahead of a user's job
    assert client.put(f"{POOLS}/STANDARD", json={"size": 2}, headers=auth("ops", admin=True)).get_json()["data"][
        "power"] == "running"  # power defaults to running
    reset = client.delete(f"{POOLS}/STANDARD", headers=auth("ops", admin=True))
    assert reset.status_code == 200 and reset.get_json()["data"]["source"] == "plans file"
    assert reset.get_json()["data"]["size"] == 0


@pytest.mark.parametrize("plan, body, field, message", [
    ("STANDARD", {"size": -1}, "size", "Size must not be negative"),
    ("STANDARD", {"size": 51}, "size", "Size must be between 0 and 50"),
    ("STANDARD", {"size": "2"}, "size", "size must be an integer"),
    ("STANDARD", {"size": True}, "size", "size must be an integer"),
    ("STANDARD", {}, "size", "size is required"),
    ("STANDARD", {"size": 1, "power": "warm"}, "power", "Power must be running or stopped"),
])
def test_a_bad_pool_setting_is_a_validation_error(client, auth, plan, body, field, message):
    response = client.put(f"{POOLS}/{plan}", json=body, headers=auth("ops", admin=True))
    assert response.status_code == 400, response.get_json()
    error = response.get_json()
    assert error["error"] == "VALIDATION_ERROR" and error["details"][field] == message
    assert error["path"] == f"{POOLS}/{plan}"


@pytest.mark.parametrize("method", ["put", "delete"])
def test_a_plan_the_plans_file_does_not_have_has_no_pool(client, auth, method):
    response = getattr(client, method)(f"{POOLS}/GOLD", json={"size": 1}, headers=auth("ops", admin=True))
    assert response.status_code == 404, response.get_json()
    error = response.get_json()
    assert error["error"] == "NOT_FOUND" and error["path"] == f"{POOLS}/GOLD"
    assert error["message"] == "No pool for plan 'GOLD': the plans are BASIC, STANDARD, PREMIUM"


def test_a_create_takes_a_ready_pool_vm_with_its_lease(client, auth, redis_conn):
    vm = ready_vm(vmid=20007, node="pve2")
    response = client.post(BASE, json={"userId": "user_warm", "plan": "STANDARD"}, headers=auth("user_warm"))
    assert response.status_code == 201, response.get_json()
    data = response.get_json()["data"]
    assert data["status"] == "PENDING" and data["statusMessage"] == \
        "Desktop creation queued: VM 20007 is ready in the warm pool"
    with db.connection_context():
        desktop = Desktop.get_by_id(data["id"])
        taken = PoolVm.get_by_id(vm.id)
        lease = VmidLease.get_by_id(20007)
    assert (desktop.vmid, desktop.node) == (20007, "pve2")
    assert (taken.state, taken.desktop_id) == ("TAKEN", desktop.id) and taken.taken_at is not None
    assert (lease.desktop_id, lease.pool_vm_id) == (desktop.id, None)
    # The create job and a refill (the pool is one short now) are queued, the refill behind users' jobs.
    assert [j.func_name for j in Queue(QUEUE_NAME, connection=redis_conn).jobs] == [
        "controlplane.tasks.desktops.run_desktop_job"]
    assert [j.func_name for j in Queue(MAINTENANCE_QUEUE_NAME, connection=redis_conn).jobs] == [pool.REFILL_JOB]
    # Taken VMs are no longer the pool's.
    assert pool_of(client, auth, "STANDARD")["vms"] == []


def test_without_a_ready_vm_of_its_plan_a_create_clones(client, auth):
    from prometheus_client import REGISTRY
    ready_vm(plan="PREMIUM", vmid=20010)
    size = client.put(f"{POOLS}/STANDARD", json={"size": 2}, headers=auth("ops", admin=True))
    assert size.status_code == 200, size.get_json()
    misses = REGISTRY.get_sample_value("cds_pool_misses_total", {"plan": "STANDARD"}) or 0
    response = client.post(BASE, json={"userId": "user_cold", "plan": "STANDARD"}, headers=auth("user_cold"))
    assert REGISTRY.get_sample_value("cds_pool_misses_total", {"plan": "STANDARD"}) == misses + 1  # a pool miss
    data = response.get_json()["data"]
    assert data["statusMessage"] == "Desktop creation queued"
    with db.connection_context():
        assert Desktop.get_by_id(data["id"]).vmid != 20010
        assert PoolVm.get(PoolVm.vmid == 20010).state == "READY"


def test_running_and_longest_waiting_pool_vms_go_first(client, auth):
    import datetime as dt

    from controlplane.models import utcnow
    now = utcnow()
    ready_vm(vmid=20021, power="stopped", ready_at=now - dt.timedelta(hours=2))
    ready_vm(vmid=20022, ready_at=now - dt.timedelta(minutes=5))
    ready_vm(vmid=20023, ready_at=now - dt.timedelta(hours=1))
    taken = []
    for n in range(3):
        user = f"user_order_{n}"
        data = client.post(BASE, json={"userId": user, "plan": "STANDARD"}, headers=auth(user)).get_json()["data"]
        with db.connection_context():
            taken.append(Desktop.get_by_id(data["id"]).vmid)
    assert taken == [20023, 20022, 20021]


def test_a_pool_vm_on_a_node_in_maintenance_is_not_taken(client, auth, base_settings, redis_conn):
    ready_vm(vmid=20031, node="pve2")
    from controlplane.services.maintenance import draining_key, is_draining
    redis_conn.set(draining_key("pve2"), "1")  # what a drain of pve2 leaves until it is released
    assert is_draining(base_settings, "pve2")
    data = client.post(BASE, json={"userId": "user_drain", "plan": "STANDARD"},
                       headers=auth("user_drain")).get_json()["data"]
    with db.connection_context():
        assert Desktop.get_by_id(data["id"]).vmid != 20031
        assert PoolVm.get(PoolVm.vmid == 20031).state == "READY"


def test_concurrent_creates_never_share_a_pool_vm(app, client, auth):
    for n in range(3):
        ready_vm(vmid=20041 + n)
    results = []

    def post(user):
        with app.test_client() as c:
            results.append(c.post(BASE, json={"userId": user, "plan": "STANDARD"}, headers=auth(user)))

    threads = [threading.Thread(target=post, args=(f"user_race_{n}",)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [r.status_code for r in results] == [201] * 6, [r.get_json() for r in results]
    with db.connection_context():
        vmids = [Desktop.get_by_id(r.get_json()["data"]["id"]).vmid for r in results]
        taken = {vm.vmid: vm.desktop_id for vm in PoolVm.select().where(PoolVm.state == "TAKEN")}
    assert len(set(vmids)) == 6  # no VM id twice
    assert set(taken) == {20041, 20042, 20043} and len(set(taken.values())) == 3


def test_a_create_that_cannot_be_queued_gives_its_pool_vm_back(client, auth, monkeypatch):
    vm = ready_vm(vmid=20051)
    from controlplane.services import jobs

    def refuse(*args, **kwargs):
        raise redis_lib.ConnectionError("Redis is down")
    monkeypatch.setattr(jobs, "enqueue", refuse)
    response = client.post(BASE, json={"userId": "user_down", "plan": "STANDARD"}, headers=auth("user_down"))
    assert response.status_code == 500 and response.get_json()["error"] == "INFRASTRUCTURE_ERROR"
    with db.connection_context():
        back = PoolVm.get_by_id(vm.id)
        lease = VmidLease.get_by_id(20051)
        assert Desktop.select().where(Desktop.user_id == "user_down").count() == 0
    assert (back.state, back.desktop_id) == ("READY", None)
    assert (lease.desktop_id, lease.pool_vm_id) == (None, vm.id)


# ---- refill passes (real database and Redis, no workers: the jobs they queue are inspected) -------

def pool_jobs(redis_conn) -> list[tuple[str, tuple]]:
    from controlplane.services.queue import POOL_QUEUE_NAME
    return [(j.func_name, j.args) for j in Queue(POOL_QUEUE_NAME, connection=redis_conn).jobs]


def state_of(vm: PoolVm) -> str:
    with db.connection_context():
        return PoolVm.get_by_id(vm.id).state


def test_a_refill_removes_abandoned_surplus_stale_and_drained_pool_vms(client, base_settings, redis_conn):
    import datetime as dt

    from controlplane.models import PoolSetting, utcnow
    from controlplane.services.maintenance import draining_key
    old = utcnow() - dt.timedelta(seconds=base_settings.abandoned_after + 30)
    with db.connection_context():
        PoolSetting.create(plan="STANDARD", size=1, power="running", updated_by="ops")
        abandoned = PoolVm.create(plan="STANDARD", template="tmpl-debian12-desktop", vmid=20201, node="pve1",
                                  power="running", state="FILLING", job_id="pool-fill-gone", updated_at=old)
    kept = ready_vm(vmid=20202)
    surplus = ready_vm(vmid=20203)
    drained = ready_vm(vmid=20204, node="pve9")
    with db.connection_context():
        stale = PoolVm.create(plan="BASIC", template="an-old-template", vmid=20205, node="pve1", power="running",
                              state="READY")
    redis_conn.set(draining_key("pve9"), "1")
    with db.connection_context():
        done = pool.refill(base_settings)
    assert {r["vmid"]: r["why"] for r in done["removing"]} == {
        20201: "its fill job is no longer running",
        20203: "the pool of STANDARD is larger than its size 1",
        20204: "node pve9 is in maintenance",
        20205: "the pool's template or power changed"}
    assert "filling" not in done  # STANDARD has its one; BASIC and PREMIUM want none
    assert state_of(kept) == "READY"
    assert {state_of(vm) for vm in (abandoned, surplus, drained, stale)} == {"REMOVING"}
    assert sorted(args for name, args in pool_jobs(redis_conn)) == sorted(
        (vm.id,) for vm in (abandoned, surplus, drained, stale))
    assert {name for name, _ in pool_jobs(redis_conn)} == {pool.REMOVE_JOB}
    with db.connection_context():  # a second pass queues nothing more
        assert pool.refill(base_settings) == {}


def test_a_refill_fills_a_deficit_on_a_leased_vm_id_and_waits_after_a_failure(client, base_settings, redis_conn,
                                                                               monkeypatch):
    from controlplane.models import PoolSetting
    monkeypatch.setattr(pool, "live_workers", lambda *_: {"w1", "w2", "w3"})  # room for two pool jobs
    with db.connection_context():
        PoolSetting.create(plan="STANDARD", size=2, power="stopped", updated_by="ops")
        done = pool.refill(base_settings)
    # The cluster cannot be read here (no Proxmox): the configured node is used.
    assert [(r["plan"], r["node"]) for r in done["filling"]] == [("STANDARD", "pve1")] * 2
    with db.connection_context():
        made = list(PoolVm.select().order_by(PoolVm.id))
        leases = {lease.vmid: lease.pool_vm_id for lease in VmidLease.select()}
    assert [(vm.state, vm.power) for vm in made] == [("FILLING", "stopped")] * 2
    assert leases == {vm.vmid: vm.id for vm in made}
    assert sorted(pool_jobs(redis_conn)) == sorted((pool.FILL_JOB, (vm.id,)) for vm in made)
    # A failed fill: the plan's pool waits before it tries again.
    with db.connection_context():
        PoolVm.update(state="FAILED", message="Fill failed at 'Clone': no space").where(PoolVm.id == made[0].id).execute()
    pool.note_failure(base_settings, "STANDARD", "Fill failed at 'Clone': no space")
    with db.connection_context():
        again = pool.refill(base_settings)
    assert [r["id"] for r in again["removing"]] == [made[0].id] and "filling" not in again
    assert again["notes"] == [f"STANDARD: a fill failed less than {base_settings.pool_retry_after} s ago; waiting"]
    assert pool_of_report(base_settings, "STANDARD")["lastFailure"] == "Fill failed at 'Clone': no space"


@pytest.mark.parametrize("workers, in_flight, fills", [(0, 0, 1), (1, 0, 1), (1, 1, 0), (2, 0, 1), (2, 1, 0),
                                                       (4, 1, 2), (4, 3, 0)])
def test_pool_jobs_leave_a_worker_free_for_users(client, base_settings, redis_conn, monkeypatch, workers,
                                                 in_flight, fills):
    """Fills are queued only while pool jobs in flight (filling or removing) are fewer than the live
    workers, one kept free for users' creates; with one worker or none, one pool job at a time."""
    from controlplane.models import PoolSetting
    monkeypatch.setattr(pool, "live_workers", lambda *_: {f"w{i}" for i in range(workers)})
    with db.connection_context():
        PoolSetting.create(plan="STANDARD", size=4, power="running", updated_by="ops")
        for i in range(in_flight):
            PoolVm.create(plan="STANDARD", template="tmpl-debian12-desktop", vmid=20301 + i, node="pve1",
                          power="running", state="FILLING" if i % 2 == 0 else "REMOVING", job_id=f"job-{i}")
        done = pool.refill(base_settings)
    assert len(done.get("filling", [])) == fills
    assert len([name for name, _ in pool_jobs(redis_conn) if name == pool.FILL_JOB]) == fills
    if not fills:
        assert done["notes"] == ["STANDARD: waiting for a worker (pool jobs leave one free for users)"]


def pool_of_report(settings, plan: str) -> dict:
    with db.connection_context():
        found = next(p for p in pool.report(settings) if p.config.plan == plan)
    return {"lastFailure": found.last_failure}


def test_refill_passes_do_not_overlap(client, base_settings, redis_conn):
    redis_conn.set(pool.REFILL_LOCK, "someone-else", ex=30)
    with db.connection_context():
        assert pool.refill(base_settings) == {"skipped": "another refill pass is running"}
    assert redis_conn.exists(pool.REFILL_AGAIN)  # the running pass goes round once more
