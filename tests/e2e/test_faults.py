"""Proxmox faults from fakepve's own switches, on the lab: a lost quorum, an offline node, revoked
login tickets. Each ends in a clear state (FAILED with the reason, or a clean recovery) and leaves
nothing behind once the fault is gone and the desktop deleted. (Retrying infrastructure errors
with the contract's backoff is not built yet: a failed step fails the operation at once.)"""
from __future__ import annotations

import contextlib

from .helpers import Api, desktop_row, events
from .test_failures import assert_nothing_left, create, delete_and_check, wait_failed


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


def test_a_create_without_quorum_fails_clearly_and_leaves_nothing(lab, fresh_user):
    api = Api(lab.url, lab.token(fresh_user))
    with no_quorum(lab):
        desktop_id = create(api, fresh_user)
        vmid = desktop_row(desktop_id).vmid
        message = wait_failed(api, desktop_id)
    assert message.startswith("Create failed at "), message
    assert "no quorum" in message, message
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
