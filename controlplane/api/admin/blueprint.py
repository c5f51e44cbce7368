"""The admin blueprint (/api/v1/admin): admin tokens only. Its routes are in resources.py (policies,
audit) and pools.py (the warm pool); `controlplane.api.admin.blp` is the blueprint with all of them."""
from __future__ import annotations

from flask import g, request
from flask_smorest import Blueprint

from ...auth import current_identity
from ...errors import Forbidden
from ..common import refuse_unusable_input, settings

blp = Blueprint("admin", __name__, url_prefix="/api/v1/admin",
                description="Admin operations: lifecycle policies (expiry, idle stop, clean-up) and reconciliation.")


@blp.before_request
def _admin_only():
    if request.method == "OPTIONS":  # Flask answers it (Allow); no token, as flask-jwt-extended exempts it
        return
    g.identity = current_identity(settings())
    if not g.identity.is_admin:
        raise Forbidden("This operation needs an admin token")
    refuse_unusable_input()
