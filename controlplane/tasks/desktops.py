"""RQ job functions for desktops. They take ids, load state, run one playbook, write the final
state once, and raise on failure.
"""
from __future__ import annotations

import logging

from rq import get_current_job

from ..config import Settings
from ..extensions import db
from ..models import Desktop, init_db, utcnow
from ..runner.ansible import run_playbook
from ..services import lifecycle, reaper
from ..services.plans import load_plans
from ..services.states import (FAILURE_VERB, FINAL_STATUS, PLAYBOOK, TASK_FILE_STATUS, Operation, Status,
                               advances)

log = logging.getLogger(__name__)

_settings: Settings | None = None


class DesktopJobFailed(RuntimeError):
    """The playbook failed; the desktop is already FAILED with the reason."""


def configure(settings: Settings) -> None:
    """Called once per worker process (controlplane worker, or a test's SimpleWorker)."""
    global _settings
    _settings = settings
    init_db(settings.effective_database_url)


def settings() -> Settings:
    global _settings
    if _settings is None:
        configure(Settings.from_env())
    return _settings


def extravars_for(cfg: Settings, desktop: Desktop, operation: Operation, force: bool) -> dict:
    plans = load_plans(cfg.plans_file)
    spec = plans.get(desktop.plan)
    values = {
        "desktop_id": desktop.id,
        "desktop_vmid": desktop.vmid,
        "desktop_user": desktop.user_id,
        "desktop_plan": desktop.plan,
        "desktop_plans_file": str(cfg.plans_file),
    }
    if operation is Operation.STOP:
        values["desktop_force"] = bool(force)
    if spec is None and operation in (Operation.CREATE, Operation.START):
        raise DesktopJobFailed(f"plan {desktop.plan} is no longer defined in {cfg.plans_file}")
    return values


def run_desktop_job(desktop_id: int, operation: str, force: bool = False) -> dict:
    cfg = settings()
    job = get_current_job()
    job_id = job.id if job is not None else None
    op = Operation(operation)
    with db.connection_context():
        desktop = Desktop.get_or_none(Desktop.id == desktop_id)
        if desktop is None or (job_id is not None and desktop.job_id != job_id):
            log.warning("job %s for desktop %s is stale (desktop now has job %s); skipping", job_id, desktop_id,
                        desktop and desktop.job_id)
            return {"desktop_id": desktop_id, "skipped": "stale job"}

        def on_task(role: str, filename: str, task: str) -> None:
            mapped = TASK_FILE_STATUS.get((role, filename))
            if mapped is None:
                return
            status, message = mapped
            current = Desktop.get_by_id(desktop_id)
            if advances(op, current.status, status):
                lifecycle.set_status(current, status, message, "worker", job_id=desktop.job_id,
                                     publish_to=cfg.redis_url)

        try:
            extravars = extravars_for(cfg, desktop, op, force)
        except DesktopJobFailed as exc:
            _fail(cfg, desktop, op, str(exc))
            raise
        log.info("running %s for desktop %s (VM %s)", PLAYBOOK[op], desktop.id, desktop.vmid)
        result = run_playbook(cfg.ansible_dir, PLAYBOOK[op], cfg.inventory_path, extravars, cfg.playbook_env(),
                              timeout=cfg.job_timeout, secrets=cfg.secrets(), on_task=on_task)
        if not result.ok:
            reason = result.reason()
            if result.status == "failed" and (result.failure or "").startswith(FAILURE_VERB[op]):
                # The playbook reported the failed step itself ("Create failed at '<task>': <error>",
                # desktop_create.yml's rescue): not prefixed with the name of the reporting task.
                reason = result.failure
            _fail(cfg, desktop, op, reason)
            raise DesktopJobFailed(f"{op.value} of desktop {desktop.id} failed: {reason}")

        final, message = FINAL_STATUS[op]
        fields: dict = {"operation": None}
        stats = result.stats
        if op in (Operation.CREATE, Operation.START):
            ip, connection = stats.get("desktop_ip"), stats.get("guacamole_connection_id")
            if not ip or not connection:
                reason = f"the playbook reported no {'IP address' if not ip else 'Guacamole connection'}"
                _fail(cfg, desktop, op, reason)
                raise DesktopJobFailed(reason)
            fields.update(ip_address=str(ip), guacamole_connection_id=str(connection),
                          protocol=str(stats.get("guacamole_protocol") or cfg.guacamole_protocol))
        if op is Operation.DELETE:
            fields.update(deleted_at=utcnow(), guacamole_connection_id=None)
        if not lifecycle.set_status(desktop, final, message, "worker", job_id=desktop.job_id,
                                    publish_to=cfg.redis_url, **fields):
            log.warning("desktop %s moved on before job %s finished; its result is not recorded", desktop_id, job_id)
        return {"desktop_id": desktop.id, "status": final.value, **{k: v for k, v in stats.items()}}


def _fail(cfg: Settings, desktop: Desktop, op: Operation, reason: str) -> None:
    verb = FAILURE_VERB[op]
    message = reason if reason.startswith(verb) else f"{verb}: {reason}"
    lifecycle.set_status(desktop, Status.FAILED, message, "worker", job_id=desktop.job_id,
                         publish_to=cfg.redis_url, operation=None)


def on_job_failure(job, connection, exc_type, exc_value, traceback) -> None:
    """RQ failure callback: playbook failures are already recorded; anything else (an exception in
    our code, or a worker that died: AbandonedJobError) is resolved by the reaper's policy."""
    if isinstance(exc_value, DesktopJobFailed):
        return
    desktop_id = (job.meta or {}).get("desktop_id")
    if desktop_id is None:
        return
    cfg = settings()
    with db.connection_context():
        desktop = Desktop.get_or_none(Desktop.id == desktop_id)
        if desktop is not None and desktop.job_id == job.id:
            reaper.resolve_abandoned(cfg, desktop, f"{exc_type.__name__ if exc_type else 'error'}")
