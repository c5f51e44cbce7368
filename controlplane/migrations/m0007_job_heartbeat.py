"""A running job's heartbeat on its record (job_heartbeat_at), kept in the database so that a Redis
that lost its data (restarted without persistence) does not make a live job look abandoned."""
import peewee as pw
from playhouse.migrate import SchemaMigrator, migrate


def apply(database, models):
    tables = database.get_tables()
    migrator = SchemaMigrator.from_database(database)
    for table in ("desktop", "project"):
        if table not in tables:
            continue  # made by an earlier migration from the current model, with the column
        if "job_heartbeat_at" not in {c.name for c in database.get_columns(table)}:
            migrate(migrator.add_column(table, "job_heartbeat_at", pw.DateTimeField(null=True)))
