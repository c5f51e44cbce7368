"""Numbered schema migrations.

Each `m000N_*.py` module has `apply(database)`; applied numbers are recorded in
`schema_migrations`. Migration 1 creates the initial tables; later ones use playhouse.migrate.
"""
from __future__ import annotations

import importlib
import pkgutil

import peewee as pw


class SchemaMigration(pw.Model):
    number = pw.IntegerField(primary_key=True)
    name = pw.CharField()

    class Meta:
        table_name = "schema_migrations"


def _available():
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("m") and info.name[1:5].isdigit():
            yield int(info.name[1:5]), info.name


def migrate(database: pw.Database) -> list[str]:
    """Apply every migration not yet recorded, each in its own transaction."""
    from ..models import ALL_MODELS
    with database.bind_ctx([SchemaMigration, *ALL_MODELS]):
        database.create_tables([SchemaMigration], safe=True)
        done = {m.number for m in SchemaMigration.select()}
        applied = []
        for number, name in _available():
            if number in done:
                continue
            module = importlib.import_module(f"{__name__}.{name}")
            with database.atomic():
                module.apply(database)
                try:
                    SchemaMigration.create(number=number, name=name)
                except pw.IntegrityError:
                    # Another process applied it concurrently (create_tables is idempotent).
                    pass
            applied.append(name)
        return applied
