"""Redis and the RQ queue, passed explicitly (no Connection context manager)."""
from __future__ import annotations

import functools
import hashlib

import redis
from rq import Queue

QUEUE_NAME = "desktops"
# Warm pool fills and removals: every worker takes them only when no desktop or project job waits
# (cli.cmd_worker lists this queue second), so refilling never delays a user's request.
POOL_QUEUE_NAME = "pool"
EVENTS_CHANNEL_PREFIX = "controlplane:events:"


def user_channel(user_id: str) -> str:
    """The Redis channel of a user's events. User ids are the IdP's text: they reach Redis only as a
    digest, so no id can name another channel, a key pattern or anything beyond our prefix."""
    return f"{EVENTS_CHANNEL_PREFIX}user:{hashlib.sha256(user_id.encode('utf-8', 'surrogatepass')).hexdigest()}"


def project_channel(public_id: str) -> str:
    """The Redis channel of a project's events (its public id, ours, digested all the same)."""
    return f"{EVENTS_CHANNEL_PREFIX}project:{hashlib.sha256(public_id.encode('utf-8', 'surrogatepass')).hexdigest()}"


@functools.lru_cache(maxsize=4)
def get_redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=10, health_check_interval=30)


def get_queue(url: str, name: str = QUEUE_NAME) -> Queue:
    return Queue(name, connection=get_redis(url))
