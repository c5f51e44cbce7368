"""Project shares: a generation number that rotates the share's password (a collaborator who
could write is removed); the two share columns that were never used go."""
import peewee as pw
from playhouse.migrate import SchemaMigrator, migrate


def apply(database, models):
    columns = {c.name for c in database.get_columns("project")}
    migrator = SchemaMigrator.from_database(database)
    operations = []
    if "share_generation" not in columns:
        operations.append(migrator.add_column("project", "share_generation", pw.IntegerField(default=0)))
    for unused in ("share_username", "share_password_hash"):
        if unused in columns:
            operations.append(migrator.drop_column("project", unused))
    if operations:
        migrate(*operations)
