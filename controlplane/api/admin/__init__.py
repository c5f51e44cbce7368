"""Admin operations under /api/v1/admin: the blueprint, with the routes of resources.py and pools.py."""
from .blueprint import blp
from . import pools, resources  # noqa: F401,I001  (their routes are on blp)

__all__ = ["blp"]
