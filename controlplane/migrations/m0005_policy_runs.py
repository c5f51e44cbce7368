"""Policy runs: every pass of a lifecycle policy, reconciliation or drain that acted or found
something, visible to admins (GET /api/v1/admin/policies/runs)."""


def apply(database, models):
    database.create_tables([models.PolicyRun], safe=True)
