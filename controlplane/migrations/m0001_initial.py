"""Initial schema: desktops, their events, VM id leases."""


def apply(database):
    from ..models import MODELS
    database.create_tables(MODELS, safe=True)
