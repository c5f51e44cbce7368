"""Numbered schema migrations.

Each `m000N_*.py` module has `apply(database, models)`; applied numbers are recorded in
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


def _exclusive(database: pw.Database):
    """A transaction that holds the database's write lock from its start, so that processes
    migrating a new database at once (the API and every worker start together) take turns: SQLite
    refuses a deferred transaction's upgrade from read to write at once ("database is locked"), and
    two PostgreSQL sessions would both find a migration missing."""
    if isinstance(database, pw.SqliteDatabase):
        return database.atomic("IMMEDIATE")
    return _advisory(database)


class _advisory:
    KEY = 0x63647331  # "cds1": this schema's migrations

    def __init__(self, database):
        self.database = database
        self.tx = database.atomic()

    def __enter__(self):
        self.tx.__enter__()
        if isinstance(self.database, pw.PostgresqlDatabase):
            self.database.execute_sql("SELECT pg_advisory_xact_lock(%s)", (self.KEY,))
        return self

    def __exit__(self, *exc):
        return self.tx.__exit__(*exc)


def migrate(database: pw.Database, models) -> list[str]:
    """Apply every migration not yet recorded, each in its own transaction, one process at a time.
    `models`: the module of the models (controlplane.models, whose init_db calls this); a migration
    gets it too, so that nothing here imports the models (they are above the migrations)."""
    with database.bind_ctx([SchemaMigration, *models.ALL_MODELS]):
        with _exclusive(database):
            database.create_tables([SchemaMigration], safe=True)
        done = {m.number for m in SchemaMigration.select()}
        applied = []
        for number, name in _available():
            if number in done:
                continue
            module = importlib.import_module(f"{__name__}.{name}")
            with _exclusive(database):
                if SchemaMigration.get_or_none(SchemaMigration.number == number) is not None:
                    continue  # another process applied it while this one waited
                module.apply(database, models)
                SchemaMigration.create(number=number, name=name)
            applied.append(name)
        return applied
