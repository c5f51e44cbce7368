"""The audit log of change requests, and idempotency keys of desktop creates (X-Request-ID)."""


def apply(database, models):
    database.create_tables([models.AuditEntry, models.IdempotencyKey], safe=True)
