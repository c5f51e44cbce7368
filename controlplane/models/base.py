"""What every model shares: the database proxy they are bound to and the form of their timestamps."""
from __future__ import annotations

import datetime as dt

import peewee as pw

from ..extensions import db


def utcnow() -> dt.datetime:
    """Naive UTC, the form every timestamp column stores."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0)


class BaseModel(pw.Model):
    class Meta:
        database = db
        legacy_table_names = False
