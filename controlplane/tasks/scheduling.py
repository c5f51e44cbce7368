"""RQ's scheduler of the control plane's queues, in a thread of the reaper process beside each worker.

A retry's next run waits as a scheduled job (tasks/engine.py). Every second, the scheduler that
holds the queues' lock (RQ's: one at a time across all workers) moves the jobs that are due to
their queue. It runs here rather than in the process RQ would fork for it, which outlives a worker
killed outright; and it outlives Redis going away: an error is logged and the next second tries
again (RQ's own loop would end on it, leaving the retries of every worker waiting for ever).
"""
from __future__ import annotations

import logging
import threading

import redis
from rq.scheduler import RQScheduler

from ..services.queue import WORKER_QUEUES, get_redis

log = logging.getLogger(__name__)

QUEUES = frozenset(WORKER_QUEUES)


class Scheduling(threading.Thread):
    """Schedules until stop(); release the lock then, so another worker's scheduler takes over at once."""

    def __init__(self, redis_url: str, interval: float = 1.0):
        super().__init__(name="rq-scheduler", daemon=True)
        self.scheduler = RQScheduler(sorted(QUEUES), connection=get_redis(redis_url))
        self.interval = interval
        self._stopping = threading.Event()

    def tick(self) -> None:
        """Take (or keep) the queues' lock; while it is ours, move the jobs that are due."""
        scheduler = self.scheduler
        if scheduler.acquired_locks != QUEUES:  # RQ's own loop asks again only every 2 minutes
            scheduler.acquire_locks()
        if scheduler.acquired_locks:
            scheduler.heartbeat()
            scheduler.enqueue_scheduled_jobs()

    def run(self) -> None:
        born = False
        while not self._stopping.is_set():
            try:
                if not born:
                    self.scheduler.register_birth()
                    born = True
                self.tick()
            except redis.RedisError as exc:
                log.warning("scheduler: Redis failed (%s); trying again", exc)
            except Exception:  # noqa: BLE001 - the next tick tries again; scheduling must not stop
                log.exception("scheduler: a pass failed")
            self._stopping.wait(self.interval)
        try:
            self.scheduler.release_locks()
            self.scheduler.register_death()
        except redis.RedisError:
            pass  # the lock expires by itself a minute later

    def stop(self, timeout: float = 5) -> None:
        self._stopping.set()
        if self.is_alive():
            self.join(timeout)
