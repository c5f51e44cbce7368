"""What every view needs: the settings, the time in the contract's format."""
from __future__ import annotations

import datetime as dt

from flask import current_app

from ..config import Settings

SETTINGS_KEY = "controlplane.settings"


def settings() -> Settings:
    return current_app.extensions[SETTINGS_KEY]


def iso(value: dt.datetime | None) -> str | None:
    """ISO 8601 with the configured zone's offset, e.g. 2024-11-28T10:30:00+05:30."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(settings().tz).isoformat(timespec="seconds")


def now_iso() -> str:
    return iso(dt.datetime.now(dt.timezone.utc))
