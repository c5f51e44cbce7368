"""The reaper's policy on a real database and Redis: a desktop whose job died is resumed (keeping
what the job was asked to do), then FAILED once resumes are used up; live jobs are left alone."""
from __future__ import annotations

import datetime as dt

import pytest
from rq import Queue
from rq.job import JobStatus

from controlplane.extensions import db
from controlplane.models import Desktop, DesktopEvent, utcnow
from controlplane.services import jobs
from controlplane.services.queue import QUEUE_NAME
from controlplane.services.reaper import reap
from controlplane.states import Operation


def stuck_desktop(settings, redis_conn, status="STOPPING", operation=Operation.STOP, force=True, worker="ghost"):
    """A desktop in a transition whose job was taken by a worker that is gone."""
    with db.connection_context():
        desktop = Desktop.create(user_id="user_reaped", name="d", plan="BASIC", cpu_cores=2, memory_mb=2048,
                                 status=status, status_message="Shutting down VM", operation=operation.value,
                                 vmid=12345, node="pve1",
                                 updated_at=utcnow() - dt.timedelta(seconds=settings.abandoned_after + 5))
        job_id = jobs.new_job_id(desktop.id, operation)
        job = jobs.enqueue(settings, operation, desktop.id, job_id, force=force)
        Desktop.update(job_id=job_id).where(Desktop.id == desktop.id).execute()
    Queue(QUEUE_NAME, connection=redis_conn).remove(job)
    job.set_status(JobStatus.STARTED)
    job.worker_name = worker
    job.save()
    return desktop.id, job_id


def test_abandoned_forced_stop_is_resumed_forced(client, base_settings, redis_conn):
    desktop_id, old_job = stuck_desktop(base_settings, redis_conn, force=True)
    assert reap(base_settings) == {"resumed": 1}
    with db.connection_context():
        desktop = Desktop.get_by_id(desktop_id)
        assert desktop.job_id != old_job and desktop.resumes == 1 and desktop.status == "STOPPING"
        last = DesktopEvent.select().where(DesktopEvent.desktop == desktop_id).order_by(DesktopEvent.id.desc()).get()
        assert last.source == "reaper" and "resumed after the worker stopped" in last.message
    new_job = Queue(QUEUE_NAME, connection=redis_conn).fetch_job(desktop.job_id)
    assert new_job.args == (desktop_id, "stop", True) and new_job.meta["force"] is True


def test_graceful_stop_is_resumed_graceful(client, base_settings, redis_conn):
    desktop_id, _ = stuck_desktop(base_settings, redis_conn, force=False)
    reap(base_settings)
    with db.connection_context():
        job_id = Desktop.get_by_id(desktop_id).job_id
    assert Queue(QUEUE_NAME, connection=redis_conn).fetch_job(job_id).args == (desktop_id, "stop", False)


def test_second_abandonment_fails_the_desktop(client, base_settings, redis_conn):
    desktop_id, _ = stuck_desktop(base_settings, redis_conn, status="PROVISIONING", operation=Operation.CREATE,
                                  force=False)
    with db.connection_context():
        Desktop.update(resumes=base_settings.max_resumes).where(Desktop.id == desktop_id).execute()
    assert reap(base_settings) == {"failed": 1}
    with db.connection_context():
        desktop = Desktop.get_by_id(desktop_id)
    assert desktop.status == "FAILED" and desktop.operation is None
    assert desktop.status_message.startswith("Create failed: the worker running it stopped")
    assert "not resumed" in desktop.status_message


def test_a_job_still_queued_or_run_by_a_live_worker_is_left_alone(client, base_settings, redis_conn):
    from rq import Worker
    desktop_id, job_id = stuck_desktop(base_settings, redis_conn, worker="alive-worker")
    worker = Worker([QUEUE_NAME], connection=redis_conn, name="alive-worker")
    worker.register_birth()
    worker.heartbeat()
    try:
        assert reap(base_settings) == {}
    finally:
        worker.register_death()
    with db.connection_context():
        assert Desktop.get_by_id(desktop_id).job_id == job_id


def test_a_queued_job_is_left_alone_but_one_a_dying_worker_popped_is_resumed(client, base_settings, redis_conn):
    """A worker killed as it dequeued (BLMOVE done, the job not yet started) leaves the job 'queued' in its
    intermediate list, out of the queue: RQ's own clean-up fails it only after ten minutes or more. The
    reaper resumes it at its next pass; a job still in its queue waits its turn."""
    with db.connection_context():
        desktop = Desktop.create(user_id="user_popped", name="d", plan="BASIC", cpu_cores=2, memory_mb=2048,
                                 status="DELETING", status_message="Removing desktop", operation="delete",
                                 vmid=12346, node="pve1",
                                 updated_at=utcnow() - dt.timedelta(seconds=base_settings.abandoned_after + 5))
        job_id = jobs.new_job_id(desktop.id, Operation.DELETE)
        Desktop.update(job_id=job_id).where(Desktop.id == desktop.id).execute()
    jobs.enqueue(base_settings, Operation.DELETE, desktop.id, job_id)
    assert reap(base_settings) == {}  # in its queue: it waits its turn
    queue = Queue(QUEUE_NAME, connection=redis_conn)
    assert redis_conn.lmove(queue.key, queue.intermediate_queue.key, "RIGHT", "LEFT") == job_id.encode()
    assert queue.fetch_job(job_id).get_status() == "queued"  # as the dying worker left it
    assert reap(base_settings) == {"resumed": 1}
    with db.connection_context():
        desktop = Desktop.get_by_id(desktop.id)
    assert desktop.job_id != job_id and desktop.status == "DELETING" and desktop.job_id in queue.job_ids


def test_recent_transitions_are_not_reaped(client, base_settings, redis_conn):
    desktop_id, job_id = stuck_desktop(base_settings, redis_conn)
    with db.connection_context():
        Desktop.update(updated_at=utcnow()).where(Desktop.id == desktop_id).execute()
    assert reap(base_settings) == {}


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as status:
            return any(line.split()[1:2] == ["Z"] for line in status if line.startswith("State:"))
    except FileNotFoundError:
        return True


def test_the_reaper_process_ends_when_its_worker_is_killed(base_settings, tmp_path):
    """The worker runs the reaper as a child process (a thread would be forked into every job's
    work horse, with whatever lock it held); a SIGKILLed worker leaves no reaper behind."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from controlplane.runner.ansible import _LOCKED, RUN_PREFIX
    runs = tmp_path / "tmp"  # the reaper's temporary folder, where its passes look for leftover runs
    runs.mkdir()
    env = {**os.environ, **base_settings.to_env(), "CONTROLPLANE_REAPER_INTERVAL": "1", "TMPDIR": str(runs)}
    # A stand-in for the worker: a shell whose child is the reaper, as cmd_worker starts it.
    shell = subprocess.Popen(
        ["sh", "-c", f"{sys.executable} -m controlplane.cli reap --loop --parent $$ & echo $!; wait"],
        stdout=subprocess.PIPE, env=env, text=True)
    reaper = int(shell.stdout.readline())
    try:
        # A few passes: each pass removes the folder a killed run left, so a folder put there after
        # the previous one went is taken by the next pass.
        for n in range(2):
            staging = runs / f"staging-{n}"
            staging.mkdir()
            (staging / _LOCKED).touch()
            leftover = staging.rename(runs / f"{RUN_PREFIX}left-{n}")
            deadline = time.monotonic() + 20
            while leftover.exists():
                assert not _gone(reaper), "the reaper stopped while its worker was alive"
                assert time.monotonic() < deadline, f"no reaper pass took the leftover run folder {n}"
                time.sleep(0.05)
        assert not _gone(reaper), "the reaper stopped while its worker was alive"
        shell.send_signal(signal.SIGKILL)
        shell.wait(5)
        deadline = time.monotonic() + 15
        while not _gone(reaper):
            assert time.monotonic() < deadline, "the reaper outlived its killed worker"
            time.sleep(0.1)
    finally:
        if not _gone(reaper):
            os.kill(reaper, signal.SIGKILL)


def test_a_fresh_heartbeat_keeps_a_job_redis_lost(client, base_settings, redis_conn):
    """Redis restarted without persistence: the job and the worker's registration are gone, but the
    work horse still runs and beats on the record: it is left alone until the beats stop."""
    desktop_id, job_id = stuck_desktop(base_settings, redis_conn)
    redis_conn.delete(f"rq:job:{job_id}")
    with db.connection_context():
        Desktop.update(job_heartbeat_at=utcnow()).where(Desktop.id == desktop_id).execute()
    assert reap(base_settings) == {}
    stale = utcnow() - dt.timedelta(seconds=base_settings.worker_stale_after + 1)
    with db.connection_context():
        Desktop.update(job_heartbeat_at=stale).where(Desktop.id == desktop_id).execute()
    assert reap(base_settings) == {"resumed": 1}


def test_a_create_committed_but_never_enqueued_is_enqueued(client, base_settings, redis_conn):
    """The API died between the insert and the enqueue: the desktop is PENDING with a job id Redis
    never saw. The reaper enqueues the create (with the same request id for the audit)."""
    with db.connection_context():
        desktop = Desktop.create(user_id="user_cut_off", name="d", plan="BASIC", cpu_cores=2, memory_mb=2048,
                                 status="PENDING", status_message="Desktop creation queued", operation="create",
                                 vmid=12346, node="pve1", job_id="desktop-0-create-never",
                                 updated_at=utcnow() - dt.timedelta(seconds=base_settings.abandoned_after + 5))
    assert reap(base_settings) == {"resumed": 1}
    with db.connection_context():
        fresh = Desktop.get_by_id(desktop.id)
    assert fresh.status == "PENDING" and fresh.job_id != "desktop-0-create-never" and fresh.resumes == 1
    job = Queue(QUEUE_NAME, connection=redis_conn).fetch_job(fresh.job_id)
    assert job.args == (desktop.id, "create", False) and job.get_status() == JobStatus.QUEUED
    assert job.meta["requested_by"] == "reaper"


@pytest.mark.parametrize("signum, blocked", [("SIGTERM", False), ("SIGINT", False), ("SIGINT", True)])
def test_a_worker_asked_to_stop_stops(client, base_settings, redis_conn, signum, blocked):
    """`controlplane worker` works again after RQ quits on an error (Redis gone), but a stop
    signal (Ctrl-C in `make lab`, SIGTERM from a supervisor) ends it, with its reaper. On an empty
    queue and database (`client`): a job left by an earlier test would keep it busy, never idle. Also
    when whatever started it had SIGINT blocked (an inherited signal mask)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from rq import Worker
    env = {**os.environ, **base_settings.to_env()}
    name = f"stop-test-{signum.lower()}{'-blocked' if blocked else ''}"
    block = (lambda: signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})) if blocked else None
    proc = subprocess.Popen([sys.executable, "-m", "controlplane.cli", "worker", "--name", name], env=env,
                            preexec_fn=block)
    try:
        deadline = time.monotonic() + 30
        # Idle: RQ has installed its signal handlers and waits for jobs.
        while not [w for w in Worker.all(connection=redis_conn) if w.name == name and w.get_state() == "idle"]:
            assert proc.poll() is None and time.monotonic() < deadline, "the worker did not start"
            time.sleep(0.1)
        proc.send_signal(getattr(signal, signum))
        assert proc.wait(20) == 0
        assert not [w for w in Worker.all(connection=redis_conn) if w.name.startswith(name)]
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_stopping_worker_is_not_held_by_its_pubsub_thread(redis_conn):
    """The race behind a worker that took a minute to stop: its pub/sub thread reads the reply to
    the unsubscribe before the stop flag is cleared, then waits for a subscription. RQ's Worker
    waits 60 s for it there (redis-py 8 joins the thread); ours wakes every second."""
    import threading
    import time

    from controlplane.tasks.worker import PUBSUB_WAKE_SECONDS, ControlPlaneWorker
    worker = ControlPlaneWorker(["stop-race"], connection=redis_conn, name="stop-race")
    worker.subscribe()
    pubsub, unsubscribed = worker.pubsub, threading.Event()
    handle = pubsub.handle_message

    def handled(response, *args, **kwargs):  # the thread's reading of each message
        answer = handle(response, *args, **kwargs)
        if not pubsub.subscribed:
            unsubscribed.set()
        return answer
    pubsub.handle_message = handled
    pubsub.unsubscribe()  # the thread reads its reply while the flag is still set
    assert unsubscribed.wait(10), "the pub/sub thread never read the unsubscribe's reply"
    started = time.monotonic()
    worker.unsubscribe()
    assert not worker.pubsub_thread.is_alive()
    assert time.monotonic() - started < PUBSUB_WAKE_SECONDS + 5


def test_a_worker_killed_outright_is_replaced_under_its_name(client, base_settings, redis_conn):
    """A supervisor (the lab, a systemd unit per worker) starts a killed worker again under the same
    name: the dead one's registration, left in Redis, no longer refuses it. On an empty queue (`client`)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from rq import Worker
    env = {**os.environ, **base_settings.to_env()}
    name = "killed-and-replaced"

    def start():
        return subprocess.Popen([sys.executable, "-m", "controlplane.cli", "worker", "--name", name], env=env)

    def works(proc) -> None:
        """A job put on the queue is done by `proc` (the only worker): it is up, under `name`, with its
        stop handlers in place. Waits on the job's result (RQ's blocking read of its result stream)."""
        job = Queue(QUEUE_NAME, connection=redis_conn).enqueue("os.getpid")
        deadline = time.monotonic() + 60
        while job.latest_result(timeout=5) is None:  # each wait under the connection's 10 s socket timeout
            assert proc.poll() is None, f"the worker exited with {proc.returncode}"
            assert time.monotonic() < deadline, "the worker did not take the job"

    first = start()
    second = None
    try:
        works(first)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert [w for w in Worker.all(connection=redis_conn) if w.name == name]  # still registered
        second = start()
        works(second)
        assert [w.pid for w in Worker.all(connection=redis_conn) if w.name == name] == [second.pid]
        second.send_signal(signal.SIGTERM)
        assert second.wait(20) == 0
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
