"""Peewee models bound to a DatabaseProxy; `init_db(url)` binds and migrates.

SQLite by default, PostgreSQL by URL (playhouse.db_url). Invariants live in the database:
one non-deleted desktop per user (partial unique index) and one lease per VM id (primary key).
"""
from __future__ import annotations

import sys

import peewee as pw
from playhouse.db_url import connect

from ..extensions import db
from ..migrations import migrate
from .base import BaseModel, utcnow
from .desktops import MODELS, AuditEntry, Desktop, DesktopEvent, IdempotencyKey, PolicyRun, VmidLease
from .pool import POOL_MODELS, PoolSetting, PoolVm, PoolVmState
from .projects import (PROJECT_MODELS, ChatMessage, Invitation, NetworkLease, Project, ProjectEvent, ProjectMember,
                       UsageRecord, UserSettings)

# Every model, importable from here.
__all__ = ["ALL_MODELS", "MODELS", "AuditEntry", "BaseModel", "ChatMessage", "Desktop", "DesktopEvent",
           "IdempotencyKey", "Invitation", "NetworkLease", "PolicyRun", "PoolSetting", "PoolVm", "PoolVmState",
           "Project", "ProjectEvent", "ProjectMember", "UsageRecord", "UserSettings", "VmidLease", "init_db",
           "utcnow"]

ALL_MODELS = MODELS + PROJECT_MODELS + POOL_MODELS


def _sqlite_wal(url: str, wait: float = 30.0) -> None:
    """Put the SQLite file of `url` in WAL mode, retrying while another process holds it."""
    import sqlite3
    import time
    path = url.partition("://")[2][1:].split("?", 1)[0]  # sqlite:///rel.db, sqlite:////abs/file.db
    if not path or path == ":memory:":
        return
    deadline = time.monotonic() + wait
    while True:
        try:
            conn = sqlite3.connect(path, timeout=wait)
            try:
                conn.execute("PRAGMA journal_mode=wal")
            finally:
                conn.close()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def init_db(url: str, pooled: bool = False) -> pw.Database:
    """Bind the proxy to the database at `url` and create what is missing (idempotent).

    `pooled` (the API process): connections are kept and reused across requests instead of opened
    per request (a PostgreSQL connection costs a server process; a SQLite one its pragmas). Never
    in a process that forks with connections open (the RQ worker forks a work horse per job)."""
    kwargs = {}
    if url.startswith("sqlite"):
        # WAL + a busy timeout: the API and several workers write the same file. WAL is a setting of
        # the file, made once here: SQLite refuses the switch at once, without waiting, while another
        # process (a second worker starting at the same moment) has the new file open.
        _sqlite_wal(url)
        kwargs["pragmas"] = {"busy_timeout": 10000, "foreign_keys": 1, "synchronous": "normal"}
    scheme, sep, rest = url.partition("://")
    if pooled and sep and scheme in ("sqlite", "postgres", "postgresql"):
        url = f"{scheme}+pool://{rest}"
        # Connections idle 5 minutes are replaced; a request waits up to 10 s for a free one.
        kwargs.update(max_connections=64, stale_timeout=300, timeout=10)
        if scheme == "sqlite":
            kwargs["check_same_thread"] = False  # a pooled connection serves one thread at a time, not always the same
    database = connect(url, **kwargs)
    db.initialize(database)
    with database.connection_context():
        migrate(database, sys.modules[__name__])
    return database
