"""The warm pool: pool VMs, admins' pool sizes, and VM-id leases held by a pool VM."""
import peewee as pw
from playhouse.migrate import SchemaMigrator, migrate


def apply(database, models):
    database.create_tables([models.PoolVm, models.PoolSetting], safe=True)
    if "vmid_lease" in database.get_tables() and \
            "pool_vm_id" not in {c.name for c in database.get_columns("vmid_lease")}:
        migrate(SchemaMigrator.from_database(database).add_column("vmid_lease", "pool_vm_id",
                                                                   pw.BigIntegerField(null=True, index=True)))
