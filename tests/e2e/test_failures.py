"""Failure paths end to end through the real stack (HTTP API → Redis → real RQ worker processes →
ansible-runner → proxmox_kvm → fakepve, and the guacamole_connection role → the Guacamole
stand-in). Every failure must end in a clear state with a reason, and leave no VM and no Guacamole
connection behind once the desktop is deleted.

The lab is shared by the whole session: every fault set here is cleared in a `finally`.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import time
import zlib

import pytest
import yaml

from controlplane.user_ids import guacamole_username
from tests.inventory import QUICK

from .helpers import TRANSITIONAL, Api, desktop_row, events

pytestmark = pytest.mark.timeout(600)


# ---- looking at the lab ------------------------------------------------------------------------

def desktop_name(desktop_id: int) -> str:
    return f"cds-desktop-{desktop_id}"


def vms_named(lab, desktop_id: int) -> list[int]:
    return [vmid for vmid, name in lab.vms().items() if name == desktop_name(desktop_id)]


def connections_named(lab, desktop_id: int) -> list[str]:
    return [ident for ident, c in lab.connections().items() if c["name"] == desktop_name(desktop_id)]


def lease_holder(vmid: int):
    """The desktop id holding a lease on `vmid`, False if it is not leased."""
    from controlplane.extensions import db
    from controlplane.models import VmidLease
    with db.connection_context():
        lease = VmidLease.get_or_none(VmidLease.vmid == vmid)
        return False if lease is None else lease.desktop_id


def assert_nothing_left(lab, desktop_id: int, vmid: int) -> None:
    assert vmid not in lab.vms(), f"VM {vmid} of desktop {desktop_id} is still in Proxmox"
    assert not vms_named(lab, desktop_id), f"a VM named {desktop_name(desktop_id)} is still in Proxmox"
    assert not connections_named(lab, desktop_id), f"a connection {desktop_name(desktop_id)} is still in Guacamole"


def delete_and_check(lab, api: Api, desktop_id: int) -> None:
    """Delete the (settled) desktop: DELETED, nothing left, its VM id free again."""
    vmid = desktop_row(desktop_id).vmid
    response = api.delete(desktop_id)
    assert response.status_code == 200, response.text
    data = api.wait_settled(desktop_id)
    assert data["status"] == "DELETED", data
    assert_nothing_left(lab, desktop_id, vmid)
    assert lease_holder(vmid) is False, f"VM id {vmid} is still leased after the desktop was deleted"


def wait_failed(api: Api, desktop_id: int, timeout: float = 360) -> str:
    # A create failing at a 5xx is run 5 times (the lab's backoff, 1.5 s of waits), each ~30 s here.
    data = api.wait_settled(desktop_id, timeout=timeout)
    assert data["status"] == "FAILED", data
    message = data["statusMessage"]
    assert message, data
    assert events(desktop_id)[-1][:2] == ("FAILED", message)
    print(f"desktop {desktop_id} FAILED: {message}")
    return message


def provisioning_retry(lab, attempt: int) -> str:
    """What the lab's workers announce before running a create whose step failed again
    ('attempt 2 of 3 in 0.1 s after a failed step'; in production 'in 30 s')."""
    attempts, delay = lab.settings.provisioning_attempts, lab.settings.provisioning_retry_delay
    assert attempts == 3, f"the lab keeps the contract's three attempts: {attempts}"
    return f"attempt {attempt} of {attempts} in {delay:g} s after a failed step"


def template_vmid(lab, plan: str) -> int:
    plans = yaml.safe_load(open(lab.settings.plans_file))["plans"]
    name = plans[plan]["template"]
    found = lab.services.call(lambda: [vm.vmid for vm in lab.pve.vms if vm.template and vm.name == name])
    assert len(found) == 1, found
    return found[0]


# ---- faults (always cleared) ---------------------------------------------------------------------

@contextlib.contextmanager
def pve_fault(lab, method: str, suffix: str, **kwargs):
    lab.services.call(lambda: lab.pve.fail(method, suffix, **kwargs))
    try:
        yield
    finally:
        lab.services.call(lambda: lab.pve.failures.pop((method, suffix), None))


@contextlib.contextmanager
def guacamole_fault(lab, method: str, path_regex: str, status: int = 500, times: int | None = None):
    lab.services.call(lambda: lab.guacamole.fail(method, path_regex, status, times=times))
    try:
        yield
    finally:
        lab.services.call(lab.guacamole.clear_faults)


@contextlib.contextmanager
def guacamole_down(lab):
    lab.services.call(lambda: setattr(lab.guacamole, "down", True))
    try:
        yield
    finally:
        lab.services.call(lambda: setattr(lab.guacamole, "down", False))


@contextlib.contextmanager
def broken_agent(lab, vmid: int):
    agents = lab.services.proxmox.agents
    lab.services.call(lambda: agents.broken.add(vmid))
    try:
        yield
    finally:
        lab.services.call(lambda: agents.broken.discard(vmid))


def create(api: Api, user: str, plan: str = "BASIC") -> int:
    response = api.create(user, plan=plan)
    assert response.status_code == 201, response.text
    return response.json()["data"]["id"]


# ---- 1. the clone fails ----------------------------------------------------------------------------

def test_clone_failure_fails_the_desktop_and_leaves_nothing(lab, fresh_user):
    api = Api(lab.url, lab.token(fresh_user))
    suffix = f"/nodes/pve1/qemu/{template_vmid(lab, 'BASIC')}/clone"
    with pve_fault(lab, "POST", suffix, status=500, message="lab fault: storage pool is exhausted"):
        desktop_id = create(api, fresh_user)
        vmid = desktop_row(desktop_id).vmid
        message = wait_failed(api, desktop_id)
    assert message.startswith("Create failed at 'Clone the VM from its template': "), message
    assert "storage pool is exhausted" in message, message
    # A failed step: the whole create ran three times (the contract's PROVISIONING_FAILED guidance).
    assert message.endswith("(gave up after 3 attempts)"), message
    statuses = [s for s, _, _ in events(desktop_id)]
    assert statuses == ["PENDING", "PROVISIONING"] * 3 + ["FAILED"], statuses
    retries = [m for s, m, _ in events(desktop_id) if s == "PENDING"][1:]
    assert [m.rsplit("; ", 1)[1] for m in retries] == [provisioning_retry(lab, 2), provisioning_retry(lab, 3)], retries
    assert_nothing_left(lab, desktop_id, vmid)
    got = api.get(desktop_id).json()["data"]
    assert got["ipAddress"] is None and got["connectionUrl"] is None
    # The VM id stays leased to the FAILED desktop until it is deleted (delete runs on that id).
    assert lease_holder(vmid) == desktop_id
    assert api.connect(desktop_id).json()["error"] == "DESKTOP_NOT_READY"

    # A FAILED desktop still counts as the user's one desktop ...
    assert api.create(fresh_user).status_code == 409
    # ... until it is deleted; then the user may create a new one, which works.
    delete_and_check(lab, api, desktop_id)
    again = create(api, fresh_user)
    assert api.wait_settled(again)["status"] == "RUNNING"
    assert len(vms_named(lab, again)) == 1 and len(connections_named(lab, again)) == 1
    delete_and_check(lab, api, again)


# ---- 2. the guest agent never reports an address -------------------------------------------------

@pytest.mark.faults  # what the playbooks' rescue does; the FAILED record is tested on both databases
def test_no_ip_address_fails_the_desktop_and_removes_the_vm(lab, fresh_user):
    api = Api(lab.url, lab.token(fresh_user))
    desktop_id = create(api, fresh_user)
    vmid = desktop_row(desktop_id).vmid
    with broken_agent(lab, vmid):  # the VM is cloned and started seconds later
        message = wait_failed(api, desktop_id)
    assert message.startswith("Create failed at 'Wait for the guest agent to report an IPv4 address': "), message
    assert "guest agent" in message.lower() and "IPv4" in message, message
    assert f"after {QUICK['proxmox_desktop_ip_wait_retries'] + 1} attempts" in message, message
    assert message.endswith("(gave up after 3 attempts)"), message
    statuses = [s for s, _, _ in events(desktop_id)]
    assert statuses == ["PENDING", "PROVISIONING", "STARTING", "WAITING_FOR_IP"] * 3 + ["FAILED"], statuses
    assert_nothing_left(lab, desktop_id, vmid)
    delete_and_check(lab, api, desktop_id)


# ---- 3. Guacamole fails while the connection is set up -------------------------------------------

@pytest.mark.faults  # what the playbooks' rescue does; the FAILED record is tested on both databases
def test_guacamole_down_while_configuring(lab, fresh_user):
    api = Api(lab.url, lab.token(fresh_user))
    with guacamole_down(lab):
        desktop_id = create(api, fresh_user)
        vmid = desktop_row(desktop_id).vmid
        message = wait_failed(api, desktop_id)
    assert message.startswith(f"Create failed at 'Register the desktop in Guacamole as {desktop_name(desktop_id)}': "
                              "Guacamole login as "), message
    assert "503" in message or "unavailable" in message.lower(), message
    statuses = [s for s, _, _ in events(desktop_id)]
    assert statuses[-2:] == ["CONFIGURING", "FAILED"], statuses
    assert_nothing_left(lab, desktop_id, vmid)
    delete_and_check(lab, api, desktop_id)


@pytest.mark.faults  # what the playbooks' rescue does; the FAILED record is tested on both databases
def test_guacamole_grant_fails_after_the_connection_was_made(lab, fresh_user):
    """The connection exists by the time the grant fails: the clean-up must remove it. Guacamole refuses
    the grant for good (403: not retried, one attempt; a passing 5xx on the way is test_faults' subject)."""
    api = Api(lab.url, lab.token(fresh_user))
    with guacamole_fault(lab, "PATCH", r"/users/[^/]+/permissions$", 403):
        desktop_id = create(api, fresh_user)
        vmid = desktop_row(desktop_id).vmid
        message = wait_failed(api, desktop_id)
    assert message.startswith(f"Create failed at 'Register the desktop in Guacamole as {desktop_name(desktop_id)}': "
                              f"Guacamole refused granting READ on {desktop_name(desktop_id)} to "
                              f"{guacamole_username(fresh_user)} (HTTP 403)"), message
    assert [s for s, _, _ in events(desktop_id)] == ["PENDING", "PROVISIONING", "STARTING", "WAITING_FOR_IP",
                                                     "CONFIGURING", "FAILED"]
    assert_nothing_left(lab, desktop_id, vmid)
    # Nor the Guacamole user each attempt made before its grant failed: the clean-up removed it.
    assert guacamole_username(fresh_user) not in lab.services.call(lambda: list(lab.guacamole.users))
    delete_and_check(lab, api, desktop_id)


# ---- 4. Guacamole fails while the desktop is deleted ---------------------------------------------

@pytest.mark.faults  # what the playbooks' rescue does; the FAILED record is tested on both databases
def test_guacamole_failing_during_delete(lab, fresh_user):
    api = Api(lab.url, lab.token(fresh_user))
    desktop_id = create(api, fresh_user)
    assert api.wait_settled(desktop_id)["status"] == "RUNNING"
    vmid = desktop_row(desktop_id).vmid
    with guacamole_fault(lab, "DELETE", r"/connections/[^/]+$", 500):
        assert api.delete(desktop_id).status_code == 200
        data = api.wait_settled(desktop_id)
    if data["status"] == "DELETED":  # only acceptable if nothing was left behind
        assert_nothing_left(lab, desktop_id, vmid)
        return
    assert data["status"] == "FAILED", data
    message = data["statusMessage"]
    print(f"desktop {desktop_id} FAILED: {message}")
    assert message.startswith(f"Delete failed: Delete the connection {desktop_name(desktop_id)}"), message
    assert "500" in message, message
    assert events(desktop_id)[-1][:2] == ("FAILED", message)
    assert lease_holder(vmid) == desktop_id
    # The fault is gone: a second delete finishes the job.
    delete_and_check(lab, api, desktop_id)


# ---- 5. the VM does not start -----------------------------------------------------------------------

@pytest.mark.faults  # what the playbooks' rescue does; the FAILED record is tested on both databases
def test_start_failure_then_delete(lab, fresh_user):
    api = Api(lab.url, lab.token(fresh_user))
    desktop_id = create(api, fresh_user)
    assert api.wait_settled(desktop_id)["status"] == "RUNNING"
    vmid = desktop_row(desktop_id).vmid
    assert api.stop(desktop_id, force=True).status_code == 200
    assert api.wait_settled(desktop_id)["status"] == "STOPPED"
    reason = "lab fault: volume local-lvm:vm-disk-0 does not exist"
    lab.services.call(lambda: setattr(lab.pve.vm(vmid), "start_error", reason))
    try:
        assert api.start(desktop_id).status_code == 200
        message = wait_failed(api, desktop_id)
    finally:
        lab.services.call(lambda: lab.pve.vm(vmid) and setattr(lab.pve.vm(vmid), "start_error", None))
    assert message.startswith("Start failed"), message
    assert "Start the VM" in message and "does not exist" in message, message
    assert lab.vm(vmid).status == "stopped"
    assert api.get(desktop_id).json()["data"]["connectionUrl"] is None
    delete_and_check(lab, api, desktop_id)


# ---- 6. the worker running the create is killed -------------------------------------------------

def _proc_children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def kill_tree(pid: int) -> list[int]:
    """SIGKILL a process and everything under it (the RQ work-horse has its own process group,
    ansible-runner's children their own session). Stops the tree first so nothing forks away."""
    assert pid not in (os.getpid(), os.getppid(), 1), pid
    stopped: list[int] = []
    while True:
        tree, todo = [], [pid]
        children = _proc_children()
        while todo:
            current = todo.pop()
            tree.append(current)
            todo.extend(children.get(current, []))
        fresh = [p for p in tree if p not in stopped]
        if not fresh:
            break
        for p in fresh:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGSTOP)
            stopped.append(p)
    for p in stopped:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    return stopped


def test_worker_killed_mid_create_is_resumed_or_failed(lab, fresh_user):
    from rq import Worker
    from rq.job import Job

    from controlplane.services.queue import get_redis
    conn = get_redis(lab.settings.redis_url)

    # A spare worker first, so the lab still has two once the job's worker is killed.
    spare = lab.workers.spawn()
    spare_name = next(name for name, proc in lab.workers.procs.items() if proc is spare)
    deadline = time.monotonic() + 30
    while spare_name not in {w.name for w in Worker.all(connection=conn)}:
        assert time.monotonic() < deadline, "the spare worker did not register"
        assert spare.poll() is None, lab.workers.logs()
        time.sleep(0.1)

    api = Api(lab.url, lab.token(fresh_user))
    desktop_id = create(api, fresh_user)
    vmid = desktop_row(desktop_id).vmid
    # Catch the job while it clones: find the worker running it.
    deadline = time.monotonic() + 60
    while True:
        assert time.monotonic() < deadline, f"desktop {desktop_id} never started provisioning"
        row = desktop_row(desktop_id)
        if row.status in ("PROVISIONING", "STARTING"):
            job = Job.fetch(row.job_id, connection=conn)
            if job.worker_name:
                break
        assert row.status in ("PENDING", "PROVISIONING", "STARTING"), row.status
        time.sleep(0.05)
    victim = lab.workers.proc_of(job.worker_name)  # renamed '<name>-1' if Redis was restarted
    killed = kill_tree(victim.pid)
    victim.wait(10)
    assert victim.returncode == -signal.SIGKILL and len(killed) >= 2, (victim.returncode, killed)
    killed_at = time.monotonic()
    killed_in = desktop_row(desktop_id).status

    # The reaper notices (the worker stops beating, the job is not alive) and resumes or fails it.
    data = api.wait_settled(desktop_id, timeout=150)
    settled_after = time.monotonic() - killed_at
    assert data["status"] in ("RUNNING", "FAILED"), data
    reaper_events = [(s, m) for s, m, source in events(desktop_id) if source == "reaper"]
    assert reaper_events, events(desktop_id)
    if data["status"] == "RUNNING":
        assert "resumed after the worker stopped" in reaper_events[0][1], reaper_events
        assert vms_named(lab, desktop_id) == [vmid]
        assert len(connections_named(lab, desktop_id)) == 1
        assert lab.vm(vmid).status == "running"
    else:
        assert data["statusMessage"].startswith("Create failed"), data
    print(f"killed in {killed_in}; settled as {data['status']} {settled_after:.1f}s later")
    delete_and_check(lab, api, desktop_id)


# ---- secrets never leak ---------------------------------------------------------------------------

def _redis_values(conn):
    for key in conn.scan_iter(count=1000):
        kind = conn.type(key).decode()
        if kind == "string":
            yield key, [conn.get(key) or b""]
        elif kind == "hash":
            yield key, [b for kv in conn.hgetall(key).items() for b in kv]
        elif kind == "list":
            yield key, conn.lrange(key, 0, -1)
        elif kind == "set":
            yield key, list(conn.smembers(key))
        elif kind == "zset":
            yield key, [m for m, _ in conn.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            yield key, [b for _, fields in conn.xrange(key) for kv in fields.items() for b in kv]
        yield key, [key]


def _expanded(value: bytes) -> list[bytes]:
    """The value, and its zlib-decompressed form (RQ compresses job data and exception text)."""
    out = [value]
    with contextlib.suppress(Exception):
        out.append(zlib.decompress(value))
    return out


def test_secrets_never_appear_in_messages_events_or_redis(lab, fresh_user):
    from controlplane.extensions import db
    from controlplane.models import Desktop, DesktopEvent
    from controlplane.services.queue import get_redis

    secrets = [s for s in (lab.settings.guacamole_password, lab.settings.proxmox_password) if s]
    assert len(secrets) == 2

    with db.connection_context():
        failures = DesktopEvent.select().where(DesktopEvent.status == "FAILED").count()
    if not failures:
        # Run alone: make one failure where the secret was on the wire (Guacamole refuses the login).
        api = Api(lab.url, lab.token(fresh_user))
        with guacamole_fault(lab, "POST", r"^/api/tokens$", 403):
            desktop_id = create(api, fresh_user)
            wait_failed(api, desktop_id)
        delete_and_check(lab, api, desktop_id)

    with db.connection_context():
        texts = [d.status_message or "" for d in Desktop.select()]
        texts += [e.message or "" for e in DesktopEvent.select()]
    assert texts
    for secret in secrets:
        leaked = [t for t in texts if secret in t]
        assert not leaked, f"a secret is in a status message or event: {leaked[:3]}"

    conn = get_redis(lab.settings.redis_url)
    scanned, job_calls = 0, 0
    for key, values in _redis_values(conn):
        scanned += 1
        for value in values:
            for blob in _expanded(value if isinstance(value, bytes) else str(value).encode()):
                job_calls += b"run_desktop_job" in blob
                for secret in secrets:
                    assert secret.encode() not in blob, f"a secret is in Redis key {key!r}"
    assert scanned > 0
    assert any(re.match(rb"rq:job:desktop-", k) for k in conn.scan_iter(match="rq:job:*")), \
        "no job records in Redis to check"
    assert job_calls, "the jobs' stored calls (function and arguments) were not read"

    for log in lab.workers.log_dir.glob("*.log"):
        text = log.read_text(errors="replace")
        for secret in secrets:
            assert secret not in text, f"a secret is in the worker log {log.name}"

    # Nothing transitional is left behind by the failure tests.
    with db.connection_context():
        stuck = [(d.id, d.status) for d in Desktop.select() if d.status in TRANSITIONAL]
    assert not stuck, stuck
