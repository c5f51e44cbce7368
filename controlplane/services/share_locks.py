"""The WebDAV locks of the projects' shared folders (controlplane/api/shares.py): where they are
kept, how long they may live, and dropping the locks of someone who left.

A lock lives at most `shares_lock_timeout_max` seconds (CONTROLPLANE_SHARES_LOCK_TIMEOUT_MAX, one
hour by default): a LOCK or a refresh asking for longer, for `Infinite` or for nothing is given
that. (WsgiDAV's own storages grant up to four weeks.)

A lock's principal is who took it: the user id of a member who came with their bearer token, the
project id for the share's password (every holder of the password is the same principal). When a
member leaves or is removed, their own locks go, and so do the password's locks when the password
is rotated (the member had it: any of those locks may be theirs).

The locks are in Redis (every API process sees them); WsgiDAV's in-memory storage is used only by
a shares app made without Redis, whose locks no other process can drop.
"""
from __future__ import annotations

import logging
import re

from wsgidav import util as dav_util
from wsgidav.lock_man.lock_manager import normalize_lock_root
from wsgidav.lock_man.lock_storage import LockStorageDict
from wsgidav.lock_man.lock_storage_redis import LockStorageRedis

from ..config import Settings
from . import shares
from .queue import get_redis

log = logging.getLogger(__name__)

PREFIX = "controlplane:shares:lock-"


def _capped(timeout, cap: int) -> int:
    """A lock's lifetime in seconds: what was asked for, never more than the cap (None, -1 for
    "Infinite" and anything longer get the cap)."""
    try:
        seconds = float(timeout)
    except (TypeError, ValueError):
        return cap
    if seconds != seconds or seconds <= 0 or seconds > cap:  # NaN, Infinite (-1), too long
        return cap
    return max(1, int(seconds))


class CappedTimeouts:
    """Mixin for a WsgiDAV lock storage: every lock's timeout, on create and on refresh, capped."""

    timeout_max: int = 3600

    def create(self, path, lock):
        lock["timeout"] = _capped(lock.get("timeout"), self.timeout_max)
        return super().create(path, lock)

    def refresh(self, token, *, timeout):
        return super().refresh(token, timeout=_capped(timeout, self.timeout_max))


class MemoryLockStorage(CappedTimeouts, LockStorageDict):
    def __init__(self, timeout_max: int):
        super().__init__()
        self.timeout_max = timeout_max


class RedisLockStorage(CappedTimeouts, LockStorageRedis):
    """WsgiDAV's Redis lock storage on our Redis URL (TCP, TLS or a unix socket), under our own key
    prefix, so that every API process (gunicorn workers, several hosts) sees the same locks."""

    def __init__(self, url: str, timeout_max: int = 3600):
        super().__init__()
        self._url = url
        self.timeout_max = timeout_max
        self._redis_prefix = PREFIX + "{}"
        self._redis_lock_prefix = self._redis_prefix.format("lock:{}")
        self._redis_url2token_prefix = self._redis_prefix.format("URL2TOKEN:{}")

    def open(self):
        self._redis = get_redis(self._url)

    def create(self, path, lock):
        lock = super().create(path, lock)
        self._outlive(lock)
        return lock

    def refresh(self, token, *, timeout):
        lock = super().refresh(token, timeout=timeout)
        self._outlive(lock)
        return lock

    def _outlive(self, lock) -> None:
        # A path's list of lock tokens lives as long as its longest lock (WsgiDAV's never expires).
        key = self._redis_url2token_prefix.format(lock["root"])
        if self._redis.ttl(key) < int(lock["timeout"]) + 1:
            self._redis.expire(key, int(lock["timeout"]) + 1)

    def get_lock_list(self, path, *, include_root, include_children, token_only):
        """WsgiDAV's, except that the children are found with SCAN (not KEYS, which blocks Redis
        while it reads every key), on a pattern whose glob characters are escaped (lock roots are
        quoted URLs, so there should be none)."""
        assert dav_util.is_str(path) and path.startswith("/")
        assert include_root or include_children
        path = normalize_lock_root(path)
        key = self._redis_url2token_prefix.format(path)
        lists = [key] if include_root else []
        if include_children:
            pattern = re.sub(r"([\\*?\[\]])", r"\\\1", key) + "/*"
            lists += [k.decode("utf-8") for k in self._redis.scan_iter(match=pattern, count=1000)
                      if dav_util.is_child_uri(key, k.decode("utf-8"))]
        found = []
        for name in lists:
            for token in self._redis.lrange(name, 0, -1):
                lock = self.get(token.decode("utf-8"))  # drops expired ones
                if lock:
                    found.append(lock["token"] if token_only else lock)
        return found


def storage(settings: Settings):
    """A lock storage for the shares app: in Redis when there is one."""
    if settings.redis_url:
        return RedisLockStorage(settings.redis_url, settings.shares_lock_timeout_max)
    return MemoryLockStorage(settings.shares_lock_timeout_max)


def drop(settings: Settings, project_id: str, principals: set[str] | None = None) -> int:
    """Remove the locks in a project's folder taken by `principals` (every lock: None). Returns how
    many went. Best effort: a failure is logged (the locks then expire after at most
    shares_lock_timeout_max)."""
    if not settings.redis_url or not shares.is_project_id(project_id):
        return 0
    store = RedisLockStorage(settings.redis_url, settings.shares_lock_timeout_max)
    dropped = 0
    try:
        store.open()
        for lock in store.get_lock_list(f"/{project_id}", include_root=True, include_children=True,
                                        token_only=False):
            if principals is None or lock.get("principal") in principals:
                dropped += bool(store.delete(lock["token"]))
    except Exception as exc:
        log.error("could not drop the WebDAV locks of project %s: %s", project_id, exc)
    return dropped
