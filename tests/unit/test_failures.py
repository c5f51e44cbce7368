"""Which failures the worker runs again, and how often (services/failures.py)."""
from __future__ import annotations

import contextlib
import signal
import time

import pytest

from controlplane.config import ConfigError, Settings
from controlplane.config import parse_backoff
from controlplane.services.failures import FailureClass, RetryPlan, classify

INFRA, PROV, PERM = FailureClass.INFRASTRUCTURE, FailureClass.PROVISIONING, FailureClass.PERMANENT

# Real messages, as the runs on the lab (fakepve's error catalogue, the Guacamole stand-in) and
# proxmox_kvm / ansible.builtin.uri print them.
CASES = [
    # Proxmox could not do it now
    ("create", "Create failed at 'Clone the VM from its template': Unable to clone vm 9001 to 10001: "
               "500 Internal Server Error: cluster not ready - no quorum?", True, INFRA),
    ("stop", "Shut the VM down: Unable to shutdown VM 10001: 500 Internal Server Error: VM is locked (backup)",
     False, INFRA),
    ("start", "Start the VM: 500 Internal Server Error: can't lock file '/var/lock/qemu-server/lock-10001.conf' "
              "- got timeout", False, INFRA),
    ("start", "Start the VM: 595 Errors during connection establishment, proxy handshake: No route to host",
     False, INFRA),
    ("delete", "Delete the VM: HTTPSConnectionPool(host='127.0.0.2', port=8006): Max retries exceeded with url: "
               "/api2/json/access/ticket (Caused by NewConnectionError('Connection refused'))", False, INFRA),
    ("create", "Create failed at 'Configure the VM': 500 Internal Server Error: checksum mismatch "
               "(file change by other user?)", True, INFRA),
    ("stop", "Shut the VM down: 401 Unauthorized: permission denied - invalid PVE ticket", False, INFRA),
    ("create", "Create failed at 'Read the VM's status': Read timed out. (read timeout=30)", True, INFRA),
    # Guacamole could not do it now
    ("create", "Create failed at 'Check that Guacamole accepted the login': Guacamole refused the login: "
               "Status code was 503 and not [200]: HTTP Error 503: Service Unavailable", True, INFRA),
    ("create", "Create failed at 'Check that Guacamole accepted the login': Guacamole login as guacadmin at "
               "http://guac/guacamole failed (HTTP 500): Unexpected internal error.", True, INFRA),
    ("create", "Create failed at 'Check that Guacamole accepted the login': Guacamole login as guacadmin at "
               "http://guac/guacamole failed (HTTP 403): Permission denied.", True, PERM),
    ("create", "Create failed at 'Grant READ on the connection': Status code was -1 and not [200, 204]: "
               "Request failed: <urlopen error [Errno 111] Connection refused>", True, INFRA),
    ("delete", "Delete the connection cds-desktop-7: Status code was 500 and not [204]: HTTP Error 500: "
               "Internal Server Error", False, INFRA),
    # ... as the role's module (library/guacamole_connection.py) words them
    ("create", "Create failed at 'Register the desktop in Guacamole as cds-desktop-7': Guacamole login as guacadmin "
               "at http://guac/guacamole failed (HTTP 503): Service Unavailable", True, INFRA),
    ("create", "Create failed at 'Register the desktop in Guacamole as cds-desktop-7': Guacamole login as guacadmin "
               "at http://guac/guacamole failed (HTTP 403): Invalid login.", True, PERM),
    ("create", "Create failed at 'Register the desktop in Guacamole as cds-desktop-7': Guacamole at "
               "http://guac/guacamole did not answer the connection list: Request failed: <urlopen error "
               "[Errno 111] Connection refused>", True, INFRA),
    ("create", "Create failed at 'Register the desktop in Guacamole as cds-desktop-7': Guacamole refused granting "
               "READ on cds-desktop-7 to user_1 (HTTP 500): Unexpected internal error.", True, INFRA),
    ("create", "Create failed at 'Register the desktop in Guacamole as cds-desktop-7': Guacamole has no data "
               "source 'postgresql' for guacadmin; available: mysql", True, PERM),
    ("delete", "Delete the connection cds-desktop-7: Guacamole refused deleting the connection cds-desktop-7 "
               "(HTTP 500): Internal Server Error", False, INFRA),
    # A create step failed otherwise: the whole create runs again (its rescue cleaned up)
    ("create", "Create failed at 'Clone the VM from its template': Unable to clone vm: 500 Internal Server "
               "Error: lab fault: storage pool is exhausted", True, PROV),
    ("create", "Create failed at 'Wait for the guest agent to report an IPv4 address': Guest agent reported "
               "no IPv4 address after 9 attempts (1 s apart); last answer: Status code was 500 and not [200]: "
               "HTTP Error 500: QEMU guest agent is not running", True, PROV),
    ("start", "Start failed at 'Wait for the guest agent to report an IPv4 address': Guest agent reported "
              "no IPv4 address after 9 attempts (1 s apart); last answer: Status code was 500", False, PERM),
    ("create", "Create failed at 'Start the VM': TASK ERROR: QEMU exited with code 1", True, PROV),
    # Running it again cannot help
    ("create", "Create failed at 'Clone the VM from its template': 400 Bad Request: Parameter verification "
               "failed. {'storage': 'storage does not exist'}", True, PERM),
    ("create", "Create failed at 'Configure the VM': 403 Forbidden: Permission check failed "
               "(/vms/10001, VM.Config.Disk)", True, PERM),
    ("create", "Check the desktop's parameters: desktop_id, desktop_vmid (>= 100), desktop_user and "
               "desktop_plan are required", False, PERM),
    ("create", "plan GOLD is no longer defined in config/plans.yml", False, PERM),
    ("create", "the playbook did not finish before its timeout", False, PERM),
    ("stop", "Shut the VM down: Reached timeout while waiting for stopping VM. Last line in task before "
             "timeout: [{'t': 'VM quit/powerdown failed - got timeout'}]", False, PERM),
    ("start", "Start the VM: TASK ERROR: lab fault: volume local-lvm:vm-disk-0 does not exist", False, PERM),
    ("create", "Login to Proxmox: 401 Unauthorized: authentication failure", False, PERM),
    ("create", None, False, PERM),
]


@pytest.mark.parametrize("operation, message, from_step, expected", CASES)
def test_classify(operation, message, from_step, expected):
    assert classify(operation, message, from_step=from_step) is expected


def test_only_a_create_step_is_a_provisioning_failure():
    message = "Start failed at 'Start the VM': QEMU exited with code 1"
    assert classify("create", message, from_step=True) is PROV
    assert classify("start", message, from_step=True) is PERM
    assert classify("create", message, from_step=False) is PERM


def test_the_contracts_backoff_then_stop():
    plan = RetryPlan((1, 2, 4, 8), provisioning_attempts=3, provisioning_delay=30)
    delays = []
    while (delay := plan.next_delay(INFRA)) is not None:
        delays.append(delay)
        assert plan.describe(INFRA) == f"retry {len(delays)} of 4"
    assert delays == [1, 2, 4, 8]
    assert plan.runs == 5


def test_three_provisioning_attempts_then_stop():
    plan = RetryPlan((1, 2, 4, 8), provisioning_attempts=3, provisioning_delay=30)
    assert plan.next_delay(PROV) == 30
    assert plan.describe(PROV) == "attempt 2 of 3"
    assert plan.next_delay(PROV) == 30
    assert plan.describe(PROV) == "attempt 3 of 3"
    assert plan.next_delay(PROV) is None
    assert plan.runs == 3


def test_the_two_budgets_are_counted_apart_and_permanent_is_never_retried():
    plan = RetryPlan((1, 2), provisioning_attempts=2, provisioning_delay=5)
    assert plan.next_delay(PERM) is None
    assert plan.next_delay(INFRA) == 1
    assert plan.next_delay(PROV) == 5
    assert plan.next_delay(INFRA) == 2
    assert plan.next_delay(PROV) is None
    assert plan.next_delay(INFRA) is None
    assert plan.runs == 4


def test_no_retries_configured():
    plan = RetryPlan((), provisioning_attempts=1, provisioning_delay=30)
    assert plan.next_delay(INFRA) is None and plan.next_delay(PROV) is None


def test_parse_backoff():
    assert parse_backoff("1,2,4,8") == (1.0, 2.0, 4.0, 8.0)
    assert parse_backoff(" 0.5 , 1 ") == (0.5, 1.0)
    assert parse_backoff("") == ()
    for bad in ("1,-2", "one", "nan"):
        with pytest.raises(ValueError):
            parse_backoff(bad)


def test_retry_settings_are_validated():
    assert Settings.from_env({}).retry_backoff == "1,2,4,8"
    assert Settings.from_env({}).provisioning_attempts == 3
    assert Settings.from_env({}).provisioning_retry_delay == 30
    for env in ({"CONTROLPLANE_RETRY_BACKOFF": "1,x"}, {"CONTROLPLANE_PROVISIONING_ATTEMPTS": "0"},
                {"CONTROLPLANE_PROVISIONING_RETRY_DELAY": "-1"}):
        with pytest.raises(ConfigError):
            Settings.from_env(env)


# ---- the real schedule, on the real retry path ---------------------------------------------------------

@contextlib.contextmanager
def scheduling(settings):
    """RQ's scheduler on `settings`' Redis, as the reaper process runs it, holding the queues' lock
    (so that no scheduler of an earlier test's worker is the one that moves the jobs)."""
    from controlplane.tasks.scheduling import QUEUES, Scheduling
    scheduling = Scheduling(settings.redis_url)
    assert scheduling.scheduler.acquire_locks() == QUEUES, "another scheduler holds the lock"
    scheduling.start()
    try:
        yield scheduling
    finally:
        scheduling.stop()


def starting_desktop(settings, user_id: str, vmid: int):
    """A desktop STARTING with its start job on the queue, as the API leaves it."""
    from controlplane.extensions import db
    from controlplane.models import Desktop
    from controlplane.services import jobs
    from controlplane.states import Operation
    with db.connection_context():
        desktop = Desktop.create(user_id=user_id, name="d", plan="BASIC", cpu_cores=2, memory_mb=2048,
                                 status="STARTING", status_message="VM is booting up", operation="start",
                                 vmid=vmid, node="pve1")
        job_id = jobs.new_job_id(desktop.id, Operation.START)
        Desktop.update(job_id=job_id).where(Desktop.id == desktop.id).execute()
    jobs.enqueue(settings, Operation.START, desktop.id, job_id)
    return desktop


def work(settings, redis_conn, jobs: int) -> None:
    """A real RQ worker (SimpleWorker, in this process) runs `jobs` jobs, the scheduler moving the
    retries' jobs to the queue when due; idle for 30 s, it gives up."""
    from rq import Queue, SimpleWorker
    from rq.timeouts import TimerDeathPenalty

    from controlplane.services.queue import QUEUE_NAME
    from controlplane.tasks.worker import PromptStop

    class Worker(PromptStop, SimpleWorker):  # its pub/sub thread does not hold it 60 s as it stops
        death_penalty_class = TimerDeathPenalty  # not SIGALRM, which pytest-timeout uses

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with scheduling(settings):
        try:
            Worker([Queue(QUEUE_NAME, connection=redis_conn)], connection=redis_conn).work(max_jobs=jobs,
                                                                                           max_idle_time=30)
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)


LOCKED = ("Start the VM: 500 Internal Server Error: can't lock file '/var/lock/qemu-server/lock-10001.conf' "
          "- got timeout")


def test_the_worker_waits_the_contracts_schedule_between_runs(client, base_settings, redis_conn, monkeypatch):
    """The default schedule as the workers keep it: a start job run by a real RQ worker (SimpleWorker, in
    this process) on a real Redis and database, through the engine's retry loop, with only the playbook
    run replaced by a stand-in that fails with an infrastructure error. Each next run is a job of its
    own, scheduled after the wait and moved to the queue when due by RQ's scheduler as the reaper
    process runs it (tasks/scheduling.py). The stand-in notes the wall-clock time of each
    run; the gaps between runs are the real waits (no clock is injected; the scheduler looks every
    second), so a schedule that waited less, more or in another order fails here. The lab's workers
    run a short schedule (tests/conftest.py) and check the same messages derived from it; this is the
    test of the default one, 1, 2, 4 and 8 s, and of its wording."""

    from controlplane.extensions import db
    from controlplane.models import Desktop, DesktopEvent
    from controlplane.runner.ansible import PlaybookResult
    from controlplane.tasks import engine

    defaults = Settings.from_env({})
    for name in ("retry_backoff", "provisioning_attempts", "provisioning_retry_delay", "job_timeout"):
        assert getattr(base_settings, name) == getattr(defaults, name), name
    assert parse_backoff(base_settings.retry_backoff) == (1, 2, 4, 8)

    runs: list[tuple[float, float]] = []  # (start, end) of each playbook run, time.monotonic()

    def locked_vm(ansible_dir, playbook, inventory, extravars, env, timeout, secrets, on_task=None, niceness=0, cancel=None):
        start = time.monotonic()
        assert playbook == "desktop_start.yml" and extravars["desktop_id"] == desktop.id, (playbook, extravars)
        result = PlaybookResult(status="failed", rc=2, failed_task="Start the VM", failure=LOCKED)
        runs.append((start, time.monotonic()))
        return result

    monkeypatch.setattr(engine, "run_playbook", locked_vm)
    monkeypatch.setattr(engine, "_settings", base_settings)
    from prometheus_client import REGISTRY
    errors = REGISTRY.get_sample_value("cds_infrastructure_errors_total", {"service": "proxmox"}) or 0
    desktop = starting_desktop(base_settings, "user_backoff", 10001)
    work(base_settings, redis_conn, 5)  # the first run and its four retries
    # each run's lock counted as a Proxmox error (metrics.py)
    assert REGISTRY.get_sample_value("cds_infrastructure_errors_total", {"service": "proxmox"}) == errors + 5

    assert len(runs) == 5, runs
    waits = [later[0] - earlier[1] for earlier, later in zip(runs, runs[1:])]
    # Each wait is the schedule's, plus up to two seconds: RQ keeps a scheduled time in whole seconds
    # (the engine rounds it up) and its scheduler looks every second.
    for waited, planned in zip(waits, (1, 2, 4, 8)):
        assert planned <= waited < planned + 2.3, waits
    with db.connection_context():
        desktop = Desktop.get_by_id(desktop.id)
        messages = [e.message for e in DesktopEvent.select().where(DesktopEvent.desktop == desktop.id)
                    .order_by(DesktopEvent.id)]
    assert messages == [f"Start failed: {LOCKED}; retry {n} of 4 in {s} s after an infrastructure error"
                        for n, s in ((1, 1), (2, 2), (3, 4), (4, 8))] + [
        f"Start failed: {LOCKED} (gave up after 5 attempts)"], messages
    assert desktop.status == "FAILED" and desktop.status_message == messages[-1]


def test_a_retry_waits_without_holding_a_worker(client, base_settings, redis_conn, monkeypatch):
    """Two desktops back off from a Proxmox that keeps a lock (the default schedule: 1, 2, 4, 8 s) on
    the only worker; a third user's start, asked after theirs, runs while they wait: it is done before
    the first of them has used up its retries, and each of them still runs five times. A retry that
    slept inside the worker would hold it for 15 s per desktop."""

    from controlplane.extensions import db
    from controlplane.models import Desktop
    from controlplane.runner.ansible import PlaybookResult
    from controlplane.tasks import engine

    runs: dict[int, list[float]] = {}

    def playbook(ansible_dir, playbook, inventory, extravars, env, timeout, secrets, on_task=None, niceness=0, cancel=None):
        desktop_id = extravars["desktop_id"]
        runs.setdefault(desktop_id, []).append(time.monotonic())
        if desktop_id == third.id:
            return PlaybookResult(status="successful", rc=0, stats={"desktop_ip": "10.0.0.3",
                                                                    "guacamole_connection_id": "3"})
        return PlaybookResult(status="failed", rc=2, failed_task="Start the VM", failure=LOCKED)

    monkeypatch.setattr(engine, "run_playbook", playbook)
    monkeypatch.setattr(engine, "_settings", base_settings)
    first, second, third = (starting_desktop(base_settings, f"user_{name}", 10011 + n)
                            for n, name in enumerate(("one", "two", "three")))
    work(base_settings, redis_conn, 11)  # five runs of each backing-off desktop, one of the third

    assert len(runs[first.id]) == 5 and len(runs[second.id]) == 5 and len(runs[third.id]) == 1, runs
    assert runs[third.id][0] < runs[first.id][1], "the third start waited for a retry"
    with db.connection_context():
        statuses = {d.id: d.status for d in Desktop.select().where(Desktop.id.in_([first.id, second.id, third.id]))}
    assert statuses == {first.id: "FAILED", second.id: "FAILED", third.id: "RUNNING"}, statuses
