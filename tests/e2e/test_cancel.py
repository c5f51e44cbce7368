"""Cancelling a create end to end (issue 21): DELETE while the desktop is being created stops the
create's job where it is (its playbook is killed, not run to the end), and the delete removes
whatever the create had made: the desktop ends DELETED, with no VM in Proxmox, no connection in
Guacamole, its VM id free, and the user may create another desktop at once.

Proxmox or Guacamole answers late while the create runs, so that each of its steps (each status it shows: the configure and firewall steps share PROVISIONING with the clone)
lasts long enough for the test to see it and cancel there.
"""
from __future__ import annotations

import pytest
from rq.job import Job

from controlplane.services.queue import get_redis, user_channel
from controlplane.states import TASK_FILE_STATUS

from .helpers import Api, desktop_row, events, wait_for_status_event
from .test_failures import assert_nothing_left, lease_holder

pytestmark = [pytest.mark.timeout(300), pytest.mark.playbooks]



def step(role: str, filename: str) -> tuple[str, str]:
    status, message = TASK_FILE_STATUS[(role, filename)]
    return status.value, message


# Where to cancel: the status and message it shows, and the real seconds Proxmox and Guacamole
# answer late meanwhile (the guest agent's own delay keeps WAITING_FOR_IP long enough).
STEPS = {
    "queued": ("PENDING", "Desktop creation queued", 0.25, 0),
    "clone": (*step("proxmox_desktop", "clone.yml"), 0.25, 0),
    "start": (*step("proxmox_desktop", "start.yml"), 0.1, 0),
    "wait_ip": (*step("proxmox_desktop", "wait_ip.yml"), 0.05, 0),
    "guacamole": (*step("guacamole_connection", "present.yml"), 0, 0.3),
}


def slow(lab, proxmox: float, guacamole: float) -> None:
    scale = lab.services.config.time_scale
    lab.services.call(lambda: lab.pve.slow_network(proxmox / scale))
    lab.services.call(lambda: setattr(lab.guacamole, "latency", guacamole))


@pytest.mark.parametrize("where", list(STEPS))
def test_a_create_cancelled_at_each_step_leaves_nothing(lab, fresh_user, where):
    status, message, proxmox_late, guacamole_late = STEPS[where]
    api = Api(lab.url, lab.token(fresh_user))
    listener = get_redis(lab.settings.redis_url).pubsub()
    listener.subscribe(user_channel(fresh_user))  # before the create: every status event of the desktop
    slow(lab, proxmox_late, guacamole_late)
    try:
        response = api.create(fresh_user, plan="BASIC")
        assert response.status_code == 201, response.text
        desktop_id = response.json()["data"]["id"]
        vmid = desktop_row(desktop_id).vmid
        wait_for_status_event(listener, lambda: tuple(api.status(desktop_id).json()["data"][k]
                                                      for k in ("status", "statusMessage")), (status, message))
        cancelled = api.delete(desktop_id)
    finally:
        slow(lab, 0, 0)
        listener.close()
    assert cancelled.status_code == 200, cancelled.text
    data = api.wait_settled(desktop_id, timeout=120)
    assert data["status"] == "DELETED", data

    # The cancel landed on that step, and nothing of the create came after it.
    history = events(desktop_id)
    at = next(i for i, e in enumerate(history) if e[0] == "DELETING")
    assert history[at][1] == "Create cancelled; removing desktop", history
    assert history[at - 1][:2] == (status, message), history
    assert {e[0] for e in history[at:]} == {"DELETING", "DELETED"}, history
    assert history[-1][0] == "DELETED"

    # The create's job stopped: cancelled before it started, or its playbook killed where it was.
    conn = get_redis(lab.settings.redis_url)
    delete_job = Job.fetch(desktop_row(desktop_id).job_id, connection=conn)
    create_job = Job.fetch(delete_job.meta["after"], connection=conn)
    if where == "queued":
        assert create_job.get_status() in ("canceled", "finished"), create_job.get_status()
        if create_job.get_status() == "finished":
            assert create_job.return_value() in ({"id": desktop_id, "cancelled": True},
                                                 {"id": desktop_id, "skipped": "stale job"})
    else:
        result = create_job.return_value()
        assert create_job.get_status() == "finished", create_job.get_status()
        # Cancelled at the last step, the playbook may end before it is told: its result is then
        # not recorded (the events above show nothing of it) and the delete removes what it made.
        assert result == {"id": desktop_id, "cancelled": True} or (
            where == "guacamole" and result.get("status") == "RUNNING"), result

    assert_nothing_left(lab, desktop_id, vmid)
    assert lease_holder(vmid) is False, f"VM id {vmid} is still leased after the cancel"
    if where == "queued":  # the user's one desktop is free again: a new create is accepted at once
        again = api.create(fresh_user, plan="BASIC")
        assert again.status_code == 201, again.text
        new_id = again.json()["data"]["id"]
        assert api.delete(new_id).status_code == 200  # cancels this one too (PENDING or later)
        assert api.wait_settled(new_id, timeout=120)["status"] == "DELETED"
