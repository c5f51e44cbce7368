"""A project's VM has a Guacamole connection (its screen: POST /api/projects/{id}/connect)."""
import peewee as pw
from playhouse.migrate import SchemaMigrator, migrate


def apply(database, models):
    if "project" not in database.get_tables():
        return  # made by migration 2 from the current model, with the column
    columns = {c.name for c in database.get_columns("project")}
    if "guacamole_connection_id" not in columns:
        migrator = SchemaMigrator.from_database(database)
        migrate(migrator.add_column("project", "guacamole_connection_id", pw.CharField(max_length=64, null=True)))
