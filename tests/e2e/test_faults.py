"""Proxmox and Guacamole faults from the stand-ins' own switches, on the lab: lost quorum, an offline
node, locks (a backup, a config lock held by another task, a lock left by an interrupted
snapshot), task errors, a guest that ignores the shutdown request, a slow and a dropping network,
rejected tickets, Guacamole failing for a while.

The worker applies the contract's retry guidance (services/failures.py): infrastructure errors
are run again four times after the backoff, a create whose step failed otherwise up to 3 times in all.
The lab's workers wait a tenth of the contract's 1, 2, 4, 8 s (tests/conftest.py), and the expected
messages are derived from their settings; tests/unit/test_failures.py proves the real schedule.
Each fault ends in a clear state (a clean recovery, or FAILED with the reason and the number of
attempts) and leaves nothing behind once the desktop is deleted.
"""
from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import pytest

from controlplane.config import parse_backoff

from .helpers import Api, desktop_row, events
from .test_failures import (assert_nothing_left, connections_named, create, delete_and_check, guacamole_fault,
                            provisioning_retry, pve_fault, template_vmid, vms_named, wait_failed)

pytestmark = [pytest.mark.timeout(300), pytest.mark.faults]


def infra_retries(lab) -> list[str]:
    """What the lab's workers announce before each rerun after an infrastructure error, in order
    ('retry 1 of 4 in 0.1 s after an infrastructure error'; in production 'in 1 s')."""
    delays = parse_backoff(lab.settings.retry_backoff)
    assert len(delays) == 4, f"the lab keeps the contract's four retries, only shorter: {delays}"
    return [f"retry {n} of {len(delays)} in {delay:g} s after an infrastructure error"
            for n, delay in enumerate(delays, 1)]


def gave_up(lab) -> str:
    """The end of the message of an operation whose infrastructure retries are used up."""
    return f"(gave up after {len(infra_retries(lab)) + 1} attempts)"


def retries(desktop_id: int) -> list[str]:
    """The worker's retry announcements, in order: 'retry 1 of 4 in 0.1 s after ...'."""
    return [m.rsplit("; ", 1)[1] for _, m, source in events(desktop_id)
            if source == "worker" and (m.endswith(" after an infrastructure error") or m.endswith(" after a failed step"))]


def wait_for_retry(desktop_id: int, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = retries(desktop_id)
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"desktop {desktop_id}: no retry within {timeout}s: {events(desktop_id)}")


def running_desktop(api: Api, user: str) -> tuple[int, int]:
    desktop_id = create(api, user)
    assert api.wait_settled(desktop_id)["status"] == "RUNNING"
    return desktop_id, desktop_row(desktop_id).vmid


@contextlib.contextmanager
def no_quorum(lab):
    lab.services.call(lab.pve.lose_quorum)
    try:
        yield
    finally:
        lab.services.call(lab.pve.regain_quorum)


@contextlib.contextmanager
def node_offline(lab, node: str):
    lab.services.call(lambda: lab.pve.set_node_offline(node))
    try:
        yield
    finally:
        lab.services.call(lambda: lab.pve.set_node_offline(node, offline=False))


@contextlib.contextmanager
def backup_running(lab, vmid: int):
    """A vzdump of the VM, as fakepve's backup() makes it (a task holding the 'backup' lock), that
    ends when the block does rather than after a fixed time."""
    finished = lab.services.call(asyncio.Event)
    locked, unlocked = threading.Event(), threading.Event()

    def start():
        vm = lab.pve.guest(vmid)

        async def body():
            vm.lock = "backup"
            vm.config["lock"] = "backup"
            locked.set()
            try:
                await finished.wait()
            finally:
                vm.lock = None
                vm.config.pop("lock", None)
                unlocked.set()
            return f"INFO: Finished Backup of VM {vmid}"
        asyncio.ensure_future(lab.pve.task(vm.node, "vzdump", vmid, "root@pam", body, vm=vm, lock=False,
                                           log=[f"INFO: starting new backup job: vzdump {vmid}"]))
    lab.services.call(start)
    try:
        assert locked.wait(10), f"the backup never locked VM {vmid}"
        yield
    finally:
        lab.services.call(finished.set)
        assert unlocked.wait(10), f"the backup of VM {vmid} never ended"


@contextlib.contextmanager
def config_lock_held(lab, vmid: int):
    """Another task holds the VM's config lock until the block ends (taken before the block starts)."""
    lab.services._run(lab.pve.hold_config_lock(vmid, None), timeout=10)
    try:
        yield
    finally:
        lab.services.call(lambda: lab.pve.release_config_lock(vmid))


def test_a_create_without_quorum_fails_clearly_and_leaves_nothing(lab, fresh_user):
    api = Api(lab.url, lab.token(fresh_user))
    with no_quorum(lab):
        desktop_id = create(api, fresh_user)
        vmid = desktop_row(desktop_id).vmid
        message = wait_failed(api, desktop_id)
    assert message.startswith("Create failed at "), message
    assert "no quorum" in message, message
    assert message.endswith(gave_up(lab)), message
    assert retries(desktop_id) == infra_retries(lab)
    assert_nothing_left(lab, desktop_id, vmid)
    delete_and_check(lab, api, desktop_id)


def test_a_start_on_an_offline_node_fails_clearly_then_works_once_it_is_back(lab, fresh_user):
    api = Api(lab.url, lab.token(fresh_user))
    desktop_id = create(api, fresh_user)
    assert api.wait_settled(desktop_id)["status"] == "RUNNING"
    assert api.stop(desktop_id).status_code == 200
    assert api.wait_settled(desktop_id)["status"] == "STOPPED"
    with node_offline(lab, "pve1"):
        assert api.start(desktop_id).status_code == 200
        message = wait_failed(api, desktop_id)
    assert message.startswith("Start failed"), message
    assert "595" in message or "offline" in message.lower() or "unreachable" in message.lower(), message
    assert message.endswith(gave_up(lab)), message
    assert retries(desktop_id) == infra_retries(lab)
    assert [s for s, _, _ in events(desktop_id)][-2:] == ["STARTING", "FAILED"]
    vmid = desktop_row(desktop_id).vmid
    assert lab.vm(vmid) is not None  # the VM is still there, owned by the FAILED desktop
    # With the node back, the FAILED desktop is deleted with its VM and connection.
    delete_and_check(lab, api, desktop_id)
    assert_nothing_left(lab, desktop_id, vmid)


def test_revoked_tickets_are_renewed(lab, fresh_user):
    api = Api(lab.url, lab.token(fresh_user))
    desktop_id = create(api, fresh_user)
    assert api.wait_settled(desktop_id)["status"] == "RUNNING"
    assert api.status(desktop_id, refresh=True).status_code == 200  # the API process has a ticket now
    lab.services.call(lab.pve.revoke_tickets)
    # The API's refresh logs in again by itself ...
    refreshed = api.status(desktop_id, refresh=True)
    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.json()["data"]["status"] == "RUNNING"
    # ... so does the reconciliation (it reads the cluster's VMs with the same client) ...
    from controlplane.services import policies
    assert not policies.run(lab.settings, "reconcile", dry_run=True)["notes"]  # this process has a ticket now
    lab.services.call(lab.pve.revoke_tickets)
    result = policies.run(lab.settings, "reconcile", dry_run=True)
    assert not [n for n in result["notes"] if n.startswith("skipped")], result["notes"]
    # ... and each playbook run logs in by itself.
    lab.services.call(lab.pve.revoke_tickets)
    assert api.stop(desktop_id).status_code == 200
    assert api.wait_settled(desktop_id)["status"] == "STOPPED"
    delete_and_check(lab, api, desktop_id)


# ---- recovering from passing faults ------------------------------------------------------------------

def test_a_create_waits_out_a_lost_quorum(lab, fresh_user):
    api = Api(lab.url, lab.token(fresh_user))
    with no_quorum(lab):
        desktop_id = create(api, fresh_user)
        assert wait_for_retry(desktop_id) == infra_retries(lab)[0]
    data = api.wait_settled(desktop_id, timeout=120)
    assert data["status"] == "RUNNING", data
    assert "no quorum" in [m for s, m, _ in events(desktop_id) if s == "PENDING"][1]
    vmid = desktop_row(desktop_id).vmid
    assert vms_named(lab, desktop_id) == [vmid] and len(connections_named(lab, desktop_id)) == 1
    delete_and_check(lab, api, desktop_id)


def test_a_clone_that_fails_once_is_made_again(lab, fresh_user):
    """A failed step: the create's rescue removed what it made, and the whole create runs again."""
    api = Api(lab.url, lab.token(fresh_user))
    suffix = f"/nodes/pve1/qemu/{template_vmid(lab, 'BASIC')}/clone"
    with pve_fault(lab, "POST", suffix, status=500, message="clone failed: unexpected error", times=1):
        desktop_id = create(api, fresh_user)
        data = api.wait_settled(desktop_id, timeout=120)
    assert data["status"] == "RUNNING", data
    assert retries(desktop_id) == [provisioning_retry(lab, 2)]
    statuses = [s for s, _, _ in events(desktop_id)]
    assert statuses[:3] == ["PENDING", "PROVISIONING", "PENDING"], statuses
    assert vms_named(lab, desktop_id) == [desktop_row(desktop_id).vmid]
    delete_and_check(lab, api, desktop_id)


def test_a_start_task_that_ends_in_an_error_is_run_again(lab, fresh_user):
    """The new VM's start task ends in `TASK ERROR: QEMU exited with code 1` once (proxmox_kvm only
    notices at its timeout): the create is run again from a clean slate and comes up."""
    api = Api(lab.url, lab.token(fresh_user))
    with pve_fault(lab, "POST", "/status/start", error="qemu_exited_code", times=1):
        desktop_id = create(api, fresh_user)
        data = api.wait_settled(desktop_id, timeout=180)
    assert data["status"] == "RUNNING", data
    first_failure = [m for s, m, _ in events(desktop_id) if s == "PENDING"][1]
    assert first_failure.startswith("Create failed at 'Start the VM'"), first_failure
    assert "QEMU exited with code 1" in first_failure, first_failure
    assert retries(desktop_id) == [provisioning_retry(lab, 2)]
    assert vms_named(lab, desktop_id) == [desktop_row(desktop_id).vmid]
    delete_and_check(lab, api, desktop_id)


def test_a_rejected_ticket_during_a_create_is_retried(lab, fresh_user):
    api = Api(lab.url, lab.token(fresh_user))
    suffix = f"/nodes/pve1/qemu/{template_vmid(lab, 'BASIC')}/clone"
    with pve_fault(lab, "POST", suffix, error="invalid_ticket", times=1):
        desktop_id = create(api, fresh_user)
        data = api.wait_settled(desktop_id, timeout=120)
    assert data["status"] == "RUNNING", data
    assert retries(desktop_id) == infra_retries(lab)[:1]
    assert "invalid PVE ticket" in [m for s, m, _ in events(desktop_id) if s == "PENDING"][1]
    delete_and_check(lab, api, desktop_id)


def test_a_stop_during_a_backup_waits_for_the_lock(lab, fresh_user):
    api = Api(lab.url, lab.token(fresh_user))
    desktop_id, vmid = running_desktop(api, fresh_user)
    # A vzdump holds the 'backup' lock until the stop has met it and announced its first retry.
    with backup_running(lab, vmid):
        assert api.stop(desktop_id).status_code == 200
        assert wait_for_retry(desktop_id) == infra_retries(lab)[0]
    data = api.wait_settled(desktop_id, timeout=60)
    assert data["status"] == "STOPPED", data
    found = retries(desktop_id)
    assert found and found == infra_retries(lab)[:len(found)], found
    assert "VM is locked (backup)" in " ".join(m for _, m, _ in events(desktop_id))
    assert lab.vm(vmid).status == "stopped"
    delete_and_check(lab, api, desktop_id)


def test_a_config_lock_held_by_another_task_is_waited_out(lab, fresh_user):
    api = Api(lab.url, lab.token(fresh_user))
    desktop_id, vmid = running_desktop(api, fresh_user)
    assert api.stop(desktop_id, force=True).status_code == 200
    assert api.wait_settled(desktop_id)["status"] == "STOPPED"
    # Another task holds the config lock until the start has met it and announced its first retry.
    with config_lock_held(lab, vmid):
        assert api.start(desktop_id).status_code == 200
        assert wait_for_retry(desktop_id) == infra_retries(lab)[0]
    data = api.wait_settled(desktop_id, timeout=90)
    assert data["status"] == "RUNNING", data
    found = retries(desktop_id)
    assert found and found == infra_retries(lab)[:len(found)], found
    assert f"can't lock file '/var/lock/qemu-server/lock-{vmid}.conf'" in " ".join(m for _, m, _ in events(desktop_id))
    delete_and_check(lab, api, desktop_id)


def test_a_lock_left_by_an_interrupted_snapshot_ends_the_stop_clearly(lab, fresh_user):
    """The lock never goes: after the backoff the stop gives up; the VM still runs, so the desktop
    is RUNNING again with the reason. Once the lock is cleared the stop works."""
    api = Api(lab.url, lab.token(fresh_user))
    desktop_id, vmid = running_desktop(api, fresh_user)
    lab.services.call(lambda: lab.pve.snapshot_lock(vmid))
    try:
        assert api.stop(desktop_id).status_code == 200
        data = api.wait_settled(desktop_id, timeout=120)
    finally:
        lab.services.call(lambda: lab.pve.unlock(vmid))
    assert data["status"] == "RUNNING", data
    message = data["statusMessage"]
    assert message.startswith("Stop failed"), message
    assert "locked (snapshot)" in message and gave_up(lab) in message, message
    assert message.endswith("the VM is still running: stop it again, or with force: true to power it off"), message
    assert retries(desktop_id) == infra_retries(lab)
    assert api.connect(desktop_id).status_code == 200
    assert api.stop(desktop_id).status_code == 200
    assert api.wait_settled(desktop_id)["status"] == "STOPPED"
    delete_and_check(lab, api, desktop_id)


def test_a_guest_that_ignores_the_shutdown_is_left_running_then_forced_off(lab, fresh_user):
    """A graceful stop waits proxmox_desktop_stop_timeout (the inventory's) for the guest; one that ignores the ACPI
    request is not retried (it would ignore it again): the desktop stays RUNNING and says how to
    escalate, and `force: true` powers it off."""
    api = Api(lab.url, lab.token(fresh_user))
    desktop_id, vmid = running_desktop(api, fresh_user)
    lab.services.call(lambda: setattr(lab.pve.vm(vmid), "acpi", False))
    try:
        assert api.stop(desktop_id).status_code == 200
        data = api.wait_settled(desktop_id, timeout=120)
        assert data["status"] == "RUNNING", data
        message = data["statusMessage"]
        assert message.startswith("Stop failed"), message
        assert "stop it again, or with force: true" in message, message
        assert retries(desktop_id) == []
        assert lab.vm(vmid).status == "running"
        assert api.stop(desktop_id, force=True).status_code == 200
        assert api.wait_settled(desktop_id, timeout=60)["status"] == "STOPPED"
        assert lab.vm(vmid).status == "stopped"
    finally:
        lab.services.call(lambda: lab.pve.vm(vmid) and setattr(lab.pve.vm(vmid), "acpi", True))
    delete_and_check(lab, api, desktop_id)


def test_a_slow_proxmox_still_gives_a_desktop(lab, fresh_user):
    api = Api(lab.url, lab.token(fresh_user))
    lab.services.call(lambda: lab.pve.slow_network(0.2 / lab.services.config.time_scale))
    try:
        desktop_id = create(api, fresh_user)
        data = api.wait_settled(desktop_id, timeout=180)
    finally:
        lab.services.call(lambda: lab.pve.slow_network(0))
    assert data["status"] == "RUNNING", data
    delete_and_check(lab, api, desktop_id)


def test_a_proxmox_dropping_requests_ends_in_a_clear_state_and_leaves_nothing(lab, fresh_user):
    """fakepve resets 3% of its connections: each run of the playbook makes dozens of requests, so
    several runs may fail. The create ends RUNNING, or FAILED after the backoff with the reason;
    either way, deleting it (once the network is well) leaves nothing behind."""
    api = Api(lab.url, lab.token(fresh_user))
    lab.services.call(lambda: lab.pve.flaky_network(drop_rate=0.03, seed=11))
    try:
        desktop_id = create(api, fresh_user)
        data = api.wait_settled(desktop_id, timeout=240)
    finally:
        lab.services.call(lambda: lab.pve.flaky_network(drop_rate=0.0))
    vmid = desktop_row(desktop_id).vmid
    print(f"desktop {desktop_id}: {data['status']}: {data['statusMessage']}; retries: {retries(desktop_id)}")
    if data["status"] == "FAILED":
        assert "(gave up after " in data["statusMessage"], data
    else:
        assert data["status"] == "RUNNING", data
        assert vms_named(lab, desktop_id) == [vmid] and len(connections_named(lab, desktop_id)) == 1
    delete_and_check(lab, api, desktop_id)
    assert_nothing_left(lab, desktop_id, vmid)


def test_guacamole_failing_for_a_while_during_configuring_is_waited_out(lab, fresh_user):
    api = Api(lab.url, lab.token(fresh_user))
    # Every login refused until the worker has announced its first retry, then Guacamole answers again.
    # (Not "the next three logins": another job of the lab, such as an earlier test's delete, may log
    # in meanwhile and use them up, and the create would then meet no fault at all.)
    with guacamole_fault(lab, "POST", r"/api/tokens$", 503):
        desktop_id = create(api, fresh_user)
        wait_for_retry(desktop_id)
    data = api.wait_settled(desktop_id, timeout=120)
    assert data["status"] == "RUNNING", data
    found = retries(desktop_id)
    assert found and found == infra_retries(lab)[:len(found)], found
    assert len(connections_named(lab, desktop_id)) == 1
    delete_and_check(lab, api, desktop_id)


def test_a_slow_guacamole_dropping_connections_is_waited_out(lab, fresh_user):
    """Guacamole answers 0.3 s late and resets two connections: the create comes up all the same."""
    api = Api(lab.url, lab.token(fresh_user))
    lab.services.call(lambda: setattr(lab.guacamole, "latency", 0.3))
    lab.services.call(lambda: lab.guacamole.drop(times=2))
    try:
        desktop_id = create(api, fresh_user)
        data = api.wait_settled(desktop_id, timeout=180)
    finally:
        lab.services.call(lab.guacamole.clear_faults)
    assert data["status"] == "RUNNING", data
    found = retries(desktop_id)
    assert found and found == infra_retries(lab)[:len(found)], found
    assert len(connections_named(lab, desktop_id)) == 1
    delete_and_check(lab, api, desktop_id)


def test_guacamole_failing_once_during_delete_is_retried(lab, fresh_user):
    api = Api(lab.url, lab.token(fresh_user))
    desktop_id, vmid = running_desktop(api, fresh_user)
    with guacamole_fault(lab, "DELETE", r"/connections/[^/]+$", 500, times=1):
        delete_and_check(lab, api, desktop_id)
    assert retries(desktop_id) == infra_retries(lab)[:1]
