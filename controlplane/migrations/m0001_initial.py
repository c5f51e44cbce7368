"""Initial schema: desktops, their events, VM id leases."""


def apply(database, models):
    database.create_tables(models.MODELS, safe=True)
