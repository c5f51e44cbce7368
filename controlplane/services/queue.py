"""Redis and the RQ queue, passed explicitly (no Connection context manager)."""
from __future__ import annotations

import functools

import redis
from rq import Queue

QUEUE_NAME = "desktops"
EVENTS_CHANNEL_PREFIX = "controlplane:events:"


@functools.lru_cache(maxsize=4)
def get_redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=10, health_check_interval=30)


def get_queue(url: str) -> Queue:
    return Queue(QUEUE_NAME, connection=get_redis(url))
