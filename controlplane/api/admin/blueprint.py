"""The admin blueprint (/api/v1/admin): admin tokens only, the Desktop API's envelope (api/envelope.py).
Its routes are in resources.py (policies, nodes, audit) and pools.py (the warm pool);
`controlplane.api.admin.blp` is the blueprint with all of them."""
from __future__ import annotations

from ..envelope import DesktopApiBlueprint

blp = DesktopApiBlueprint("admin", __name__, url_prefix="/api/v1/admin", admin_only=True,
                          description="Admin operations: lifecycle policies (expiry, idle stop, clean-up) and "
                                      "reconciliation.")
