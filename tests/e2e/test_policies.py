"""Lifecycle policies on the lab, with time made short by configuration: real desktops (fakepve,
the Guacamole stand-in, the workers running the playbooks) expired, stopped when idle, and
deleted when failed for too long, each explained in its status message and events; and the ops
playbooks run from the README's command line against the lab's API."""
from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from .helpers import Api, desktop_row, events
from .test_failures import (assert_nothing_left, connections_named, guacamole_down, lease_holder, pve_fault,
                            template_vmid, wait_failed)

# The policies' database side (their queries, the admin API) is tested on both databases in tests/api.
pytestmark = pytest.mark.playbooks

REPO = Path(__file__).resolve().parents[2]
SHORT_PLANS = """
plans:
  BASIC: {cores: 2, memory_mb: 2048, template: tmpl-debian12-desktop, idle_stop_after: 4s}
  STANDARD: {cores: 4, memory_mb: 4096, template: tmpl-debian12-desktop}
  PREMIUM: {cores: 8, memory_mb: 8192, template: tmpl-debian12-desktop}
"""


def create(api: Api, user: str, **body) -> int:
    response = api.session.post(api.base, json={"userId": user, "plan": "BASIC", **body}, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()["data"]["id"]


def running(api: Api, desktop_id: int) -> dict:
    data = api.wait_settled(desktop_id)
    assert data["status"] == "RUNNING", data
    return data


def run_policy(lab, name: str, dry_run: bool = False) -> dict:
    """A pass through the lab's admin API, as the cron playbooks do."""
    response = requests.post(f"{lab.url}/api/v1/admin/policies/{name}", json={"dryRun": dry_run}, timeout=60,
                             headers={"Authorization": f"Bearer {lab.token('ops', admin=True)}"})
    assert response.status_code == 200, response.text
    return response.json()["data"]


def policy_events(desktop_id: int) -> list[tuple[str, str, str]]:
    return [e for e in events(desktop_id) if e[2].startswith("policy:")]


def expire_now(desktop_id: int, given: dt.datetime) -> dt.datetime:
    """Let the desktop's expiry pass without waiting for the clock: the expiry it was created with
    (checked: stored as given) is moved to two seconds ago. Returns the new expiry."""
    from controlplane.extensions import db
    from controlplane.models import Desktop
    assert desktop_row(desktop_id).expires_at == given.astimezone(dt.timezone.utc).replace(tzinfo=None)
    past = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=2)).replace(microsecond=0)
    with db.connection_context():
        assert Desktop.update(expires_at=past.replace(tzinfo=None)).where(Desktop.id == desktop_id).execute() == 1
    return past


def later(seconds: float) -> dt.datetime:
    """The time a policy pass is told it is (policies.run's `now`): `seconds` from now."""
    return dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=seconds)


def test_an_expired_desktop_is_stopped_then_deleted_after_the_grace(lab, fresh_user):
    from controlplane.services import policies
    api = Api(lab.url, lab.token(fresh_user))
    expires = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=3)).replace(microsecond=0)
    desktop_id = create(api, fresh_user, expiresAt=expires.isoformat())
    vmid = desktop_row(desktop_id).vmid
    running(api, desktop_id)
    expires = expire_now(desktop_id, expires)

    planned = run_policy(lab, "expire", dry_run=True)
    assert [a["desktopId"] for a in planned["actions"] if a["userId"] == fresh_user] == [desktop_id]
    assert api.status(desktop_id).json()["data"]["status"] == "RUNNING"  # a dry run did nothing

    mine = [a for a in run_policy(lab, "expire")["actions"] if a["desktopId"] == desktop_id]
    assert [(a["action"], a["done"]) for a in mine] == [("stop", True)], mine
    stopped = api.wait_settled(desktop_id)
    assert stopped["status"] == "STOPPED", stopped
    assert stopped["statusMessage"] == f"Desktop is stopped: {mine[0]['reason']}"
    assert stopped["statusMessage"].startswith(f"Desktop is stopped: expired at {expires.isoformat()}")
    assert lab.vm(vmid).status == "stopped"
    # The owner cannot start it again; the API shows who stopped it and why.
    refused = api.start(desktop_id)
    assert refused.status_code == 400 and refused.json()["error"] == "INVALID_OPERATION"
    shown = api.session.get(f"{api.base}/{desktop_id}/events", timeout=10).json()["data"]["events"]
    assert [(e["status"], e["source"]) for e in shown][-2:] == [("STOPPING", "policy:expire"), ("STOPPED", "worker")]

    # After the grace period (made short here), it is deleted with its VM and connection.
    short = lab.settings.replace(expiry_grace=1)
    result = policies.run(short, "expire")
    mine = [a for a in result["actions"] if a["desktopId"] == desktop_id]
    assert [(a["action"], a["done"]) for a in mine] == [("delete", True)], mine
    deleted = api.wait_settled(desktop_id)
    assert deleted["status"] == "DELETED", deleted
    assert deleted["statusMessage"].startswith("Desktop deleted: expired at ")
    assert_nothing_left(lab, desktop_id, vmid)
    assert lease_holder(vmid) is False
    assert [s for s, _, _ in policy_events(desktop_id)] == ["STOPPING", "DELETING"]


def test_an_idle_desktop_is_stopped_and_a_used_one_is_not(lab, fresh_user, tmp_path):
    from controlplane.services import policies
    plans = tmp_path / "plans.yml"
    plans.write_text(SHORT_PLANS)
    short = lab.settings.replace(plans_file=plans)
    api = Api(lab.url, lab.token(fresh_user))
    desktop_id = create(api, fresh_user)
    running(api, desktop_id)
    [connection] = connections_named(lab, desktop_id)

    # Someone is connected through Guacamole: not idle, however long ago /connect was (a pass 5 s
    # from now, past the plan's 4 s).
    session = lab.services.call(lambda: lab.guacamole.open_session(connection, username=fresh_user))
    assert [a for a in policies.run(short, "idle", now=later(5))["actions"] if a["desktopId"] == desktop_id] == []
    assert api.status(desktop_id).json()["data"]["status"] == "RUNNING"
    seen = desktop_row(desktop_id).last_accessed_at
    assert seen is not None
    lab.services.call(lambda: lab.guacamole.close_session(session))

    # /connect counts as use too.
    assert api.connect(desktop_id).status_code == 200
    assert [a for a in policies.run(short, "idle")["actions"] if a["desktopId"] == desktop_id] == []

    # Nobody for longer than the plan's idle_stop_after: stopped gracefully, and told why (passes
    # 10 s from now: 5 s past the latest use above, whose time was at most 5 s from now).
    with guacamole_down(lab):  # Guacamole cannot say who is connected: nothing is stopped
        result = policies.run(short, "idle", now=later(10))
        assert [a for a in result["actions"] if a["desktopId"] == desktop_id] == [] and result["notes"]
    mine = [a for a in policies.run(short, "idle", now=later(10))["actions"] if a["desktopId"] == desktop_id]
    assert [(a["action"], a["done"]) for a in mine] == [("stop", True)], mine
    stopped = api.wait_settled(desktop_id)
    assert stopped["status"] == "STOPPED", stopped
    assert stopped["statusMessage"].startswith("Desktop is stopped: idle: no connection since ")
    assert "(plan BASIC stops desktops idle for 4 seconds)" in stopped["statusMessage"]
    assert [(s, src) for s, _, src in policy_events(desktop_id)] == [("STOPPING", "policy:idle")]
    # A stopped desktop starts again as usual (idle is not expiry).
    assert api.start(desktop_id).status_code == 200
    running(api, desktop_id)
    assert api.delete(desktop_id).status_code == 200
    assert api.wait_settled(desktop_id)["status"] == "DELETED"


def test_a_desktop_failed_for_too_long_is_deleted(lab, fresh_user):
    from controlplane.services import policies
    api = Api(lab.url, lab.token(fresh_user))
    # A create that fails for good at its first step (a refused clone is not retried): the policy's
    # subject is the FAILED desktop, not how it failed (tests/e2e/test_failures.py has those).
    clone = f"/nodes/pve1/qemu/{template_vmid(lab, 'BASIC')}/clone"
    with pve_fault(lab, "POST", clone, status=400, message="Parameter verification failed. (lab fault: no such storage)"):
        desktop_id = create(api, fresh_user)
        vmid = desktop_row(desktop_id).vmid
        assert "Parameter verification failed" in wait_failed(api, desktop_id)
    assert [s for s, _, _ in events(desktop_id)] == ["PENDING", "PROVISIONING", "FAILED"]  # one attempt
    result = policies.run(lab.settings.replace(failed_retention=1), "cleanup", now=later(2))  # failed 2 s ago
    mine = [a for a in result["actions"] if a["desktopId"] == desktop_id]
    assert [(a["action"], a["done"]) for a in mine] == [("delete", True)], mine
    deleted = api.wait_settled(desktop_id)
    assert deleted["status"] == "DELETED", deleted
    assert deleted["statusMessage"].startswith("Desktop deleted: failed since ")
    assert_nothing_left(lab, desktop_id, vmid)


def playbook(lab, name: str, *args: str, token: str) -> subprocess.CompletedProcess:
    """The README's command line: ansible-playbook -i inventory/lab playbooks/<name> [--check]."""
    env = {**os.environ, "CONTROLPLANE_API_URL": lab.url, "CONTROLPLANE_ADMIN_TOKEN": token,
           "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1"}
    return subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", "inventory/lab",
                           f"playbooks/{name}", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_ops_playbooks_run_the_policies(lab, fresh_user):
    api = Api(lab.url, lab.token(fresh_user))
    admin = lab.token("ops", admin=True)
    expires = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=2)).replace(microsecond=0)
    desktop_id = create(api, fresh_user, expiresAt=expires.isoformat())
    running(api, desktop_id)
    expire_now(desktop_id, expires)

    dry = playbook(lab, "cleanup_expired.yml", "--check", token=admin)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "(dry run: nothing changed)" in dry.stdout
    assert f"stop desktop {desktop_id} of {fresh_user} (RUNNING): expired at" in dry.stdout
    assert api.status(desktop_id).json()["data"]["status"] == "RUNNING"

    # Two at once (cron overlapping itself): the desktop is stopped once, neither run fails.
    runs = []
    threads = [threading.Thread(target=lambda: runs.append(playbook(lab, "cleanup_expired.yml", token=admin))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert [r.returncode for r in runs] == [0, 0], [r.stdout + r.stderr for r in runs]
    assert api.wait_settled(desktop_id)["status"] == "STOPPED"
    assert [s for s, _, _ in policy_events(desktop_id)] == ["STOPPING"]
    assert sum(f"stop desktop {desktop_id} " in r.stdout for r in runs) >= 1

    idle = playbook(lab, "stop_idle.yml", "--check", token=admin)
    assert idle.returncode == 0 and "idle: " in idle.stdout, idle.stdout + idle.stderr

    for run in [dry, *runs, idle]:  # the admin token is never shown
        assert admin not in run.stdout + run.stderr and admin.split(".")[2] not in run.stdout + run.stderr
    refused = playbook(lab, "stop_idle.yml", token=lab.token(fresh_user))
    assert refused.returncode != 0 and "HTTP 403" in refused.stdout, refused.stdout
    missing = playbook(lab, "stop_idle.yml", token="")
    assert missing.returncode != 0 and "Set CONTROLPLANE_ADMIN_TOKEN" in missing.stdout, missing.stdout

    assert api.delete(desktop_id).status_code == 200
    assert api.wait_settled(desktop_id)["status"] == "DELETED"


def test_reconcile_removes_orphans_and_fails_records_whose_vm_vanished(lab, fresh_user):
    import random

    from controlplane.runner.ansible import run_playbook
    from controlplane.services import proxmox
    s = lab.settings
    # a fresh login if an earlier test revoked the process's tickets (test_faults does)
    pve = proxmox.with_login(s, lambda client: client.version.get() and client).nodes("pve1")
    admin = lab.token("ops", admin=True)

    # An orphan: a desktop made by hand with the create playbook, which no record owns.
    orphan_id, orphan_vmid = random.randint(900000, 999999), random.randint(5000, 5999)
    made = run_playbook(s.ansible_dir, "desktop_create.yml", s.inventory_path,
                        {"desktop_id": orphan_id, "desktop_vmid": orphan_vmid, "desktop_user": "user_by_hand",
                         "desktop_plan": "BASIC"}, s.playbook_env("desktop_create.yml"), timeout=180, secrets=s.secrets())
    assert made.ok, made.reason()
    orphan_name = f"cds-desktop-{orphan_id}"
    assert lab.vm(orphan_vmid) is not None and connections_named(lab, orphan_id)
    # A desktop whose VM is deleted behind the control plane's back.
    api = Api(lab.url, lab.token(fresh_user))
    desktop_id = create(api, fresh_user)
    running(api, desktop_id)
    vmid = desktop_row(desktop_id).vmid
    deadline = time.monotonic() + 60
    pve.qemu(vmid).status.stop.post()
    while lab.vm(vmid).status != "stopped":
        assert time.monotonic() < deadline, "the VM did not stop"
        time.sleep(0.1)
    pve.qemu(vmid).delete()
    while lab.vm(vmid) is not None:
        assert time.monotonic() < deadline, "the VM was not deleted"
        time.sleep(0.1)
    # A VM tagged like ours but not named like ours: someone else's business.
    odd_vmid = orphan_vmid + 1000
    pve.qemu(9000).clone.post(newid=odd_vmid, name="not-one-of-ours")
    while lab.vm(odd_vmid) is None or lab.vm(odd_vmid).lock:
        assert time.monotonic() < deadline, "the clone did not finish"
        time.sleep(0.1)
    pve.qemu(odd_vmid).config.put(tags="cloud-desktop")

    dry = playbook(lab, "reconcile.yml", "--check", token=admin)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert f"remove-vm vm {orphan_vmid} of user_by_hand: VM {orphan_vmid} ({orphan_name}) belongs to no live record" \
        in dry.stdout, dry.stdout
    assert f"({orphan_name}) belongs to no live desktop" in dry.stdout
    assert f"fail vm {vmid} of {fresh_user} (RUNNING): VM {vmid} no longer exists in Proxmox VE" in dry.stdout
    assert f"VM {odd_vmid} (not-one-of-ours) is tagged cloud-desktop but not named like ours: left alone" in dry.stdout
    assert lab.vm(orphan_vmid) is not None and api.status(desktop_id).json()["data"]["status"] == "RUNNING"

    real = playbook(lab, "reconcile.yml", token=admin)
    assert real.returncode == 0, real.stdout + real.stderr
    assert "removal job " in real.stdout and "queued" in real.stdout
    deadline = time.monotonic() + 120
    while lab.vm(orphan_vmid) is not None or connections_named(lab, orphan_id):
        assert time.monotonic() < deadline, "the orphaned VM and connection were not removed"
        time.sleep(0.5)
    failed = api.status(desktop_id).json()["data"]
    assert failed == {"desktopId": desktop_id, "status": "FAILED", "ready": False,
                      "statusMessage": f"VM {vmid} no longer exists in Proxmox VE"}
    assert policy_events(desktop_id) == [("FAILED", f"VM {vmid} no longer exists in Proxmox VE", "policy:reconcile")]
    assert lab.vm(odd_vmid) is not None  # left alone

    # Nothing of these is left to do.
    again = run_policy(lab, "reconcile")
    assert not [a for a in again["actions"]
                if a["target"] in (f"vm {orphan_vmid}", f"vm {vmid}", f"vm {odd_vmid}")], again
    pve.qemu(odd_vmid).delete()
    assert api.delete(desktop_id).status_code == 200
    assert api.wait_settled(desktop_id)["status"] == "DELETED"


def test_drain_node_stops_everything_there_waits_and_reports(lab, fresh_user):
    admin = lab.token("ops", admin=True)
    users = [fresh_user, fresh_user + "_b"]
    apis = [Api(lab.url, lab.token(user)) for user in users]
    ids = [create(api, user) for api, user in zip(apis, users)]
    for api, desktop_id in zip(apis, ids):
        running(api, desktop_id)
    node = lab.settings.proxmox_node

    dry = playbook(lab, "drain_node.yml", "--check", "-e", f"node={node}", token=admin)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    for desktop_id, user in zip(ids, users):
        assert f"stop desktop {desktop_id} of {user} (RUNNING): node {node} is drained for maintenance" in dry.stdout
    assert [api.status(i).json()["data"]["status"] for api, i in zip(apis, ids)] == ["RUNNING", "RUNNING"]

    from controlplane.services import maintenance
    try:
        drained = playbook(lab, "drain_node.yml", "-e", f"node={node}", "-e", "drain_wait_timeout=180", token=admin)
        assert drained.returncode == 0, drained.stdout + drained.stderr
        assert f"Node {node} is drained and in maintenance" in drained.stdout
        for api, desktop_id in zip(apis, ids):
            data = api.status(desktop_id).json()["data"]
            assert data["status"] == "STOPPED", data
            assert data["statusMessage"] == f"Desktop is stopped: node {node} is drained for maintenance"
            assert lab.vm(desktop_row(desktop_id).vmid).status == "stopped"
        refused = apis[0].start(ids[0])
        assert refused.status_code == 500 and refused.json()["error"] == "INFRASTRUCTURE_ERROR", refused.text

        released = playbook(lab, "drain_node.yml", "-e", f"node={node}", "-e", "drain_release=true", token=admin)
        assert released.returncode == 0, released.stdout + released.stderr
        assert not maintenance.is_draining(lab.settings, node)
    finally:
        maintenance.release(lab.settings, node)  # whatever happened above: the node serves again
    assert apis[0].start(ids[0]).status_code == 200
    running(apis[0], ids[0])
    for api, desktop_id in zip(apis, ids):
        assert api.delete(desktop_id).status_code == 200
        assert api.wait_settled(desktop_id)["status"] == "DELETED"
    assert admin not in drained.stdout + dry.stdout + released.stdout


def test_a_desktop_stuck_in_a_transition_is_failed_and_its_job_stopped(lab, fresh_user):
    from rq.job import Job

    from controlplane.services import policies
    from controlplane.services.queue import get_redis
    api = Api(lab.url, lab.token(fresh_user))
    desktop_id = create(api, fresh_user)
    running(api, desktop_id)
    vmid = desktop_row(desktop_id).vmid
    lab.services.call(lambda: setattr(lab.pve.vm(vmid), "acpi", False))  # the guest ignores the shutdown
    try:
        seen_tasks = lab.services.call(lambda: len(lab.pve.tasklog))
        assert api.stop(desktop_id).status_code == 200
        job_id = desktop_row(desktop_id).job_id
        deadline = time.monotonic() + 30
        while Job.fetch(job_id, connection=get_redis(lab.settings.redis_url)).get_status() != "started":
            assert time.monotonic() < deadline, "the stop job never started"
            time.sleep(0.2)
        # The job asked the guest to shut down (a qmshutdown task in fakepve), which it ignores: the
        # job now waits proxmox_desktop_stop_timeout (5 s, the tests' inventory) for it.
        while not lab.services.call(lambda: [t for t in lab.pve.tasklog[seen_tasks:]
                                             if t["type"] == "qmshutdown" and t["id"] == str(vmid)]):
            assert time.monotonic() < deadline, "the stop job never asked the guest to shut down"
            time.sleep(0.1)
        assert api.status(desktop_id).json()["data"]["status"] == "STOPPING"

        # A pass 3 s from now: in STOPPING for longer than stuck_after (2 s).
        result = policies.run(lab.settings.replace(stuck_after=2), "cleanup", now=later(3))
        mine = [a for a in result["actions"] if a["desktopId"] == desktop_id]
        assert [(a["action"], a["done"]) for a in mine] == [("fail", True)], mine
        failed = api.status(desktop_id).json()["data"]
        assert failed["status"] == "FAILED" and failed["statusMessage"].startswith("Stop failed: stuck in STOPPING since ")
        # Its job is stopped, and nothing it might still report overwrites the FAILED record.
        deadline = time.monotonic() + 30
        while Job.fetch(job_id, connection=get_redis(lab.settings.redis_url)).get_status() == "started":
            assert time.monotonic() < deadline, "the stuck job was not stopped"
            time.sleep(0.2)
        # RQ's worker writes the stopped status once it has waited for the job's work horse (killed):
        # nothing of the job is left to report.
        assert api.status(desktop_id).json()["data"]["status"] == "FAILED"
        assert [s for s, _, src in events(desktop_id)][-1] == "FAILED"
    finally:
        lab.services.call(lambda: setattr(lab.pve.vm(vmid), "acpi", True))
    assert api.delete(desktop_id).status_code == 200
    assert api.wait_settled(desktop_id)["status"] == "DELETED"
    assert_nothing_left(lab, desktop_id, vmid)
