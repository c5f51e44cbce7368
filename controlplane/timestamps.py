"""Timestamps as text. The database keeps naive UTC (models.utcnow); these write it out. The Desktop
API writes its own in the configured zone (api/common.py iso)."""
from __future__ import annotations

import datetime as dt


def utc_iso(value: dt.datetime | None) -> str | None:
    """UTC with its offset, e.g. 2026-02-23T10:00:00+00:00 (policy runs, the pool, status messages)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc).isoformat(timespec="seconds")


def utc_z(value: dt.datetime | None) -> str | None:
    """The projects contract's timestamps: UTC with a Z, e.g. 2026-02-23T10:00:00Z."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return value.isoformat(timespec="seconds") + "Z"
