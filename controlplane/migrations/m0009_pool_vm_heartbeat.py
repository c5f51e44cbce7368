"""A pool VM's running job beats on its row (job_heartbeat_at), as desktops' and projects' jobs do
(m0007): the refill pass trusts it over Redis before it gives a fill or a removal up."""
import peewee as pw
from playhouse.migrate import SchemaMigrator, migrate


def apply(database, models):
    if "pool_vm" not in database.get_tables():
        return  # made by an earlier migration from the current model, with the column
    if "job_heartbeat_at" not in {c.name for c in database.get_columns("pool_vm")}:
        migrate(SchemaMigrator.from_database(database).add_column("pool_vm", "job_heartbeat_at",
                                                                  pw.DateTimeField(null=True)))
