"""The one job class behind every operation on a desktop or a project (VmJob; its subclasses are
tasks/desktops.py DesktopJob and tasks/projects.py ProjectJob).

A job takes ids, loads the record, runs the operation's playbook through ansible-runner, maps task
events to status steps, writes the final state once (conditional on still owning the record),
and raises on failure.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time

from rq import get_current_job

from ..config import Settings, parse_backoff
from ..extensions import db
from ..models import init_db, utcnow
from ..runner.ansible import PlaybookResult, run_playbook
from ..services import failures, kinds, lifecycle, proxmox, reaper
from ..services.audit import record_outcome
from ..services.kinds import JobFailed
from ..states import Operation

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


class VmJob:
    """One operation on a record whose VM a playbook makes and keeps (AWX's BaseTask, in small).

    The class owns what every such job does: the stale-job check, the playbook run with its
    retries, task events mapped to status steps, the heartbeat, the audit entry and the one final
    write (conditional on the record still being this job's). A subclass says what differs:
    `kind` (the record: kinds.DESKTOP, kinds.PROJECT), `extravars` (what the playbook is given)
    and `result_fields` (what the playbook's stats put on the record); both raise JobFailed."""

    kind: kinds.Kind

    def extravars(self, cfg: Settings, row, op: Operation, force: bool) -> dict:
        raise NotImplementedError

    def result_fields(self, cfg: Settings, op: Operation, stats: dict) -> dict:
        raise NotImplementedError

    def run(self, resource_id: int, operation: str, force: bool = False) -> dict:
        return _run(self, resource_id, operation, force)


def _run(vm_job: VmJob, resource_id: int, operation: str, force: bool) -> dict:
    kind = vm_job.kind
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
            extravars = vm_job.extravars(cfg, row, op, force)
        except JobFailed as exc:
            _fail(cfg, kind, row, op, str(exc))
            _audit(job, row, op, ok=False)
            raise
        with _heartbeat(cfg, model, row.id, row.job_id):
            result = _run_with_retries(cfg, kind, row, op, extravars, on_task)
        if not result.ok:
            _audit(job, row, op, ok=False)
            raise JobFailed(f"{op.value} of {kind.name} {row.id} failed: {row.status_message}")
        try:
            fields = vm_job.result_fields(cfg, op, result.stats)
        except JobFailed as exc:
            _fail(cfg, kind, row, op, str(exc))
            _audit(job, row, op, ok=False)
            raise
        final, message = kind.final[op]
        reason = (job.meta or {}).get("reason") if job is not None else None
        if reason:
            message = f"{message}: {reason}"
        if lifecycle.set_status(row, final, message, "worker", job_id=row.job_id, publish_to=cfg.redis_url,
                                settings=cfg, operation=None, **fields):
            _audit(job, row, op, ok=True)
        else:
            log.warning("%s %s moved on before job %s finished; its result is not recorded", kind.name, resource_id,
                        job_id)
        return {"id": row.id, "status": final.value, **result.stats,
                "playbook": {"seconds": result.seconds, "startup": result.startup, "tasks": result.timings}}


@contextlib.contextmanager
def _heartbeat(cfg: Settings, model, resource_id: int, job_id: str | None):
    """While the job runs, write its sign of life on the record every `worker_heartbeat` seconds
    (job_heartbeat_at). The reaper trusts it over Redis, which may have lost the job (a restart
    without persistence) while the work horse runs on. Only the record's own job writes it."""
    if job_id is None:
        yield
        return
    stop = threading.Event()

    def beat():
        while True:
            try:
                with db.connection_context():
                    model.update(job_heartbeat_at=utcnow()).where(model.id == resource_id,
                                                                  model.job_id == job_id).execute()
            except Exception as exc:  # the next beat tries again; the job itself goes on
                log.warning("heartbeat of job %s failed: %s", job_id, exc)
            if stop.wait(cfg.worker_heartbeat):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def _run_with_retries(cfg: Settings, kind: kinds.Kind, row, op: Operation, extravars: dict, on_task) -> PlaybookResult:
    """Run the operation's playbook; after a failure, run it again as the contract's retry guidance
    says (services/failures.py), within the job's time budget, while the record still belongs to
    this job. The record shows each wait ("... retry 2 of 4 in 2 s"); a failure that is not
    retried, or the last one, makes it FAILED. Returns the last result."""
    plan = failures.RetryPlan(parse_backoff(cfg.retry_backoff), cfg.provisioning_attempts,
                              cfg.provisioning_retry_delay)
    deadline = time.monotonic() + cfg.job_timeout
    first_status, _ = kind.accepted[op]
    while True:
        log.info("running %s for %s %s (VM %s), run %d", kind.playbook[op], kind.name, row.id, row.vmid, plan.runs)
        result = run_playbook(cfg.ansible_dir, kind.playbook[op], cfg.inventory_path, extravars,
                              cfg.playbook_env(kind.playbook[op]),
                              timeout=max(1, int(deadline - time.monotonic())), secrets=cfg.secrets(),
                              on_task=on_task)
        if result.ok:
            return result
        step = failed_step(result)
        from_step = step is not None
        # A create playbook's rescue cleans up, then hands the failed step to us through set_stats
        # (failed_step, failed_message): a failure of that step, not of the infrastructure as such.
        reason = f"{kind.failure_verb[op]} at {step}" if step else result.reason()
        failure = failures.classify(op, reason, from_step=from_step)
        delay = plan.next_delay(failure)
        if delay is not None and deadline - time.monotonic() < delay + 1:
            delay = None  # no time left for another run
        if delay is None:
            if plan.runs > 1:
                reason = f"{reason} (gave up after {plan.runs} attempts)"
            if op is Operation.STOP and _still_running(cfg, row):
                # A guest that ignores the shutdown request (or a VM Proxmox would not stop) is still
                # a working desktop: back to RUNNING, with the contract's escalation in the message.
                verb = kind.failure_verb[op]
                message = (f"{reason if reason.startswith(verb) else f'{verb}: {reason}'}; the VM is still running: "
                           "stop it again, or with force: true to power it off")
                lifecycle.set_status(row, kind.final[Operation.START][0], message, "worker", job_id=row.job_id,
                                     publish_to=cfg.redis_url, settings=cfg, operation=None)
                return result
            _fail(cfg, kind, row, op, reason)
            return result
        cause = "an infrastructure error" if failure is failures.FailureClass.INFRASTRUCTURE else "a failed step"
        verb = kind.failure_verb[op]
        message = f"{reason if reason.startswith(verb) else f'{verb}: {reason}'}; {plan.describe(failure)} in {delay:g} s " \
                  f"after {cause}"
        log.warning("%s %s: %s", kind.name, row.id, message)
        if not lifecycle.set_status(row, first_status, message, "worker", job_id=row.job_id,
                                    publish_to=cfg.redis_url, settings=cfg):
            log.warning("%s %s moved on while job %s was retrying; stopping", kind.name, row.id, row.job_id)
            return result
        time.sleep(delay)


def failed_step(result: PlaybookResult) -> str | None:
    """"'<task>': <error>" when the playbook's rescue reported the step that failed (set_stats
    failed_step and failed_message, after its clean-up), else None."""
    step = result.stats.get("failed_step") if result.status == "failed" else None
    if not step:
        return None
    return f"'{step}': {result.stats.get('failed_message') or 'failed'}"


def _audit(job, row, op: Operation, ok: bool) -> None:
    meta = (job.meta or {}) if job is not None else {}
    record_outcome(row, op, ok=ok and row.status != kinds.of(row).failed.value,
                   requested_by=meta.get("requested_by"), request_id=meta.get("request_id") or (job and job.id))


def _still_running(cfg: Settings, row) -> bool:
    """Whether Proxmox says the record's VM is running, wherever the cluster has it (False when it
    cannot be asked)."""
    if row.vmid is None:
        return False
    try:
        return proxmox.locate_vm(cfg, row.vmid, getattr(row, "node", None) or cfg.proxmox_node)[1] == "running"
    except Exception as exc:
        log.warning("could not read the state of VM %s after a failed stop: %s", row.vmid, exc)
        return False


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
