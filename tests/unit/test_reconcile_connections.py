"""Which Guacamole connections reconciliation removes (services/reconcile.py): those named as a
desktop's or a project's screen that no live record owns; never anyone else's."""
from __future__ import annotations

from types import SimpleNamespace

from controlplane.services.reconcile import _Live, _orphan_connections


def test_connections_no_live_desktop_or_project_owns_are_orphans():
    live = _Live(desktops={1: SimpleNamespace(vmid=1001)}, projects={7: SimpleNamespace(vmid=2007)}, pool_vms={},
                 leased=set())
    connections = {"11": "cds-desktop-1", "12": "cds-desktop-2", "13": "cds-project-7", "14": "cds-project-8",
                   "15": "someone-elses", "16": "cds-pool-3"}
    orphans, actions = _orphan_connections(connections, live)
    assert orphans == ["cds-desktop-2", "cds-project-8"]
    assert [(a.desktopId, a.action, a.target) for a in actions] == [
        (2, "remove-connection", "connection 12"), (None, "remove-connection", "connection 14")]
    assert "belongs to no live project: project 8 does not exist or was deleted" in actions[1].reason
