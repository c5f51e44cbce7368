"""Desktops may expire: expires_at (lifecycle policies, services/policies.py)."""
import peewee as pw
from playhouse.migrate import SchemaMigrator, migrate


def apply(database, models):
    if "desktop" not in database.get_tables():
        return  # made by migration 1 from the current model, with the column
    columns = {c.name for c in database.get_columns("desktop")}
    if "expires_at" not in columns:
        migrator = SchemaMigrator.from_database(database)
        migrate(migrator.add_column("desktop", "expires_at", pw.DateTimeField(null=True)))
