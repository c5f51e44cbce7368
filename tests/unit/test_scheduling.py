"""The scheduler beside each worker (controlplane/tasks/scheduling.py): it moves a retry's scheduled
job to its queue when due, and goes on doing so after Redis went away and came back (RQ's own loop
ends on the first error, which left every retry of the lab waiting for ever)."""
from __future__ import annotations

import redis
from rq import Queue

from controlplane.lab.redis_server import PrivateRedis
from controlplane.services.queue import QUEUE_NAME, enqueue, get_redis
from controlplane.tasks.scheduling import Scheduling


def due(url: str, timeout: float) -> str | None:
    """The id of the next job pushed onto the queue (the scheduler's move), waited for up to `timeout` s."""
    client = redis.Redis.from_url(url)  # no socket timeout of its own: BLPOP waits
    got = client.blpop([Queue(QUEUE_NAME, connection=get_redis(url)).key], timeout=timeout)
    return got[1].decode() if got else None


def test_a_scheduled_job_is_moved_to_its_queue_when_due_even_after_redis_came_back(tmp_path):
    server = PrivateRedis(tmp_path / "redis", persist=False).start()
    scheduling = Scheduling(server.url, interval=0.2)
    scheduling.start()
    try:
        enqueue(server.url, "controlplane.tasks.desktops.run_desktop_job", 1, "start", False, timeout=60,
                job_id="desktop-1-start-000000000001", delay=1)
        assert due(server.url, 30) == "desktop-1-start-000000000001"
        server.stop()  # Redis goes away (and its data with it) while the scheduler runs ...
        server = PrivateRedis(tmp_path / "redis", persist=False).start()  # ... and comes back
        enqueue(server.url, "controlplane.tasks.desktops.run_desktop_job", 2, "start", False, timeout=60,
                job_id="desktop-2-start-000000000002", delay=1)
        assert due(server.url, 30) == "desktop-2-start-000000000002", "the scheduler stopped with Redis"
        assert scheduling.is_alive()
    finally:
        scheduling.stop()
        server.stop()
    assert not scheduling.is_alive()
