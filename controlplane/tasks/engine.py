"""The one job function behind every operation on a desktop or a project.

It takes ids, loads the record, runs the operation's playbook through ansible-runner, maps task
events to status steps, writes the final state once (conditional on still owning the record),
and raises on failure.
"""
from __future__ import annotations

import logging

from rq import get_current_job

from ..config import Settings
from ..extensions import db
from ..models import init_db
from ..runner.ansible import run_playbook
from ..services import kinds, lifecycle, reaper
from ..services.kinds import JobFailed
from ..services.states import Operation

log = logging.getLogger(__name__)

_settings: Settings | None = None


def configure(settings: Settings) -> None:
    """Called once per worker process (controlplane worker, or a test's SimpleWorker)."""
    global _settings
    _settings = settings
    init_db(settings.effective_database_url)


def settings() -> Settings:
    if _settings is None:
        configure(Settings.from_env())
    return _settings


def run_job(kind_name: str, resource_id: int, operation: str, force: bool = False) -> dict:
    kind = kinds.get(kind_name)
    cfg = settings()
    job = get_current_job()
    job_id = job.id if job is not None else None
    op = Operation(operation)
    model = kind.model
    with db.connection_context():
        row = model.get_or_none(model.id == resource_id)
        if row is None or (job_id is not None and row.job_id != job_id):
            log.warning("job %s for %s %s is stale (it now has job %s); skipping", job_id, kind.name, resource_id,
                        row and row.job_id)
            return {"id": resource_id, "skipped": "stale job"}

        def on_task(role: str, filename: str, task: str) -> None:
            mapped = kind.task_status.get((role, filename))
            if mapped is None:
                return
            status, message = mapped
            current = model.get_by_id(resource_id)
            if kind.advances(op, current.status, status, current.status_message, message):
                lifecycle.set_status(current, status, message, "worker", job_id=row.job_id, publish_to=cfg.redis_url,
                                     settings=cfg)

        try:
            extravars = kind.extravars(cfg, row, op, force)
        except JobFailed as exc:
            _fail(cfg, kind, row, op, str(exc))
            raise
        log.info("running %s for %s %s (VM %s)", kind.playbook[op], kind.name, row.id, row.vmid)
        result = run_playbook(cfg.ansible_dir, kind.playbook[op], cfg.inventory_path, extravars, cfg.playbook_env(),
                              timeout=cfg.job_timeout, secrets=cfg.secrets(), on_task=on_task)
        if not result.ok:
            reason = result.reason()
            if result.status == "failed" and (result.failure or "").startswith(kind.failure_verb[op]):
                # The playbook reported the failed step itself ("Create failed at '<task>': <error>",
                # the create playbooks' rescue): not prefixed with the name of the reporting task.
                reason = result.failure
            _fail(cfg, kind, row, op, reason)
            raise JobFailed(f"{op.value} of {kind.name} {row.id} failed: {reason}")
        try:
            fields = kind.result_fields(cfg, op, result.stats)
        except JobFailed as exc:
            _fail(cfg, kind, row, op, str(exc))
            raise
        final, message = kind.final[op]
        reason = (job.meta or {}).get("reason") if job is not None else None
        if reason:
            message = f"{message}: {reason}"
        if not lifecycle.set_status(row, final, message, "worker", job_id=row.job_id, publish_to=cfg.redis_url,
                                    settings=cfg, operation=None, **fields):
            log.warning("%s %s moved on before job %s finished; its result is not recorded", kind.name, resource_id,
                        job_id)
        return {"id": row.id, "status": final.value, **result.stats}


def _fail(cfg: Settings, kind: kinds.Kind, row, op: Operation, reason: str) -> None:
    verb = kind.failure_verb[op]
    message = reason if reason.startswith(verb) else f"{verb}: {reason}"
    lifecycle.set_status(row, kind.failed, message, "worker", job_id=row.job_id, publish_to=cfg.redis_url,
                         settings=cfg, operation=None)


def on_job_failure(job, connection, exc_type, exc_value, traceback) -> None:
    """RQ failure callback: playbook failures are already recorded; anything else (an exception in
    our code, or a worker that died: AbandonedJobError) is resolved by the reaper's policy."""
    if isinstance(exc_value, JobFailed):
        return
    meta = job.meta or {}
    kind_name = meta.get("kind", "desktop")
    resource_id = meta.get("resource_id", meta.get("desktop_id"))
    if resource_id is None:
        return
    kind = kinds.get(kind_name)
    cfg = settings()
    with db.connection_context():
        row = kind.model.get_or_none(kind.model.id == resource_id)
        if row is not None and row.job_id == job.id:
            reaper.resolve_abandoned(cfg, row, f"{exc_type.__name__ if exc_type else 'error'}")
