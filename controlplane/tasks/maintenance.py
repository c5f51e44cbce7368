"""The periodic maintenance job: one pass of every lifecycle policy (services/policies.py).

Enqueued every CONTROLPLANE_POLICY_INTERVAL seconds by the reaper process beside the workers
(cli._reaper_loop; one enqueue per interval across all of them), and run by a worker like any
job. The cron playbooks run the same passes through the admin API.
"""
from __future__ import annotations

import logging

from ..runner.ansible import run_playbook
from ..services import policies, policy_runs
from ..services.queue import MAINTENANCE_QUEUE_NAME, enqueue
from .engine import settings

log = logging.getLogger(__name__)

JOB_FUNCTION = "controlplane.tasks.maintenance.run_policies"


def run_policies() -> dict:
    cfg = settings()
    summary: dict[str, object] = {}
    for name in policies.POLICIES:
        try:
            result = policies.run(cfg, name)
        except policies.PolicyRunning:
            summary[name] = "skipped: another pass is running"
            continue
        summary[name] = {"done": sum(1 for a in result["actions"] if a["done"]),
                         "not_done": sum(1 for a in result["actions"] if not a["done"]),
                         "notes": result["notes"]}
    policy_runs.prune_records(cfg)
    return summary


def enqueue_if_due(cfg, conn) -> bool:
    """Enqueue the maintenance job unless another process did in this interval."""
    if cfg.policy_interval <= 0:
        return False
    if not conn.set("controlplane:maintenance:due", "1", nx=True, ex=cfg.policy_interval):
        return False
    enqueue(cfg.redis_url, JOB_FUNCTION, timeout=900, queue=MAINTENANCE_QUEUE_NAME,
            description="lifecycle policies (periodic)")
    return True


def remove_orphans(vms: list[dict], connections: list[str]) -> dict:
    """Remove VMs and Guacamole connections that reconciliation found no live record owns, with
    playbooks/remove_orphans.yml (each VM's name is checked again before it is deleted)."""
    cfg = settings()
    extravars = {"orphan_vms": [{"vmid": int(vm["vmid"]), "name": str(vm["name"]), "node": str(vm["node"])}
                                for vm in vms],
                 "orphan_connections": [str(name) for name in connections]}
    result = run_playbook(cfg.ansible_dir, "remove_orphans.yml", cfg.inventory_path, extravars,
                          cfg.playbook_env("remove_orphans.yml"),
                          timeout=cfg.job_timeout, secrets=cfg.secrets())
    if not result.ok:
        log.error("removing orphans failed: %s", result.reason())
        raise RuntimeError(f"removing orphans failed: {result.reason()}")
    log.info("removed %d orphaned VM(s) and %d connection(s)", len(vms), len(connections))
    return {"vms": [vm["vmid"] for vm in vms], "connections": list(connections)}
