"""The audit log of change requests, and idempotency keys of desktop creates (X-Request-ID)."""


def apply(database):
    from ..models import AuditEntry, IdempotencyKey
    database.create_tables([AuditEntry, IdempotencyKey], safe=True)
