"""Projects: projects, their events, members, invitations, chat, user settings, usage, network
leases; VM id leases may belong to a project."""
import peewee as pw
from playhouse.migrate import SchemaMigrator, migrate


def apply(database, models):
    database.create_tables(models.PROJECT_MODELS, safe=True)
    columns = {c.name for c in database.get_columns("vmid_lease")}
    if "project_id" not in columns:
        migrator = SchemaMigrator.from_database(database)
        migrate(migrator.add_column("vmid_lease", "project_id", pw.BigIntegerField(null=True)),
                migrator.add_index("vmid_lease", ("project_id",), False))
