"""The one job engine: PlaybookJob, the template every job that runs a playbook follows, and its
subclasses: VmJob for the records (tasks/desktops.py DesktopJob, tasks/projects.py ProjectJob) and
tasks/pool.py PoolVmJob for the warm pool's VMs.

A job takes ids, loads its row, runs the operation's playbook through ansible-runner with the
contract's retries and a heartbeat on the row, maps task events to status steps, writes the final
state once (conditional on still owning the row), and raises on failure.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
import uuid

import redis

from rq import get_current_job

from .. import logs, metrics
from ..config import Settings, parse_backoff
from ..extensions import db
from ..models import init_db, utcnow
from ..runner.ansible import PlaybookResult, run_playbook
from ..services import failures, kinds, lifecycle, proxmox, queue, reaper
from ..services.audit import record_outcome
from ..services.kinds import JobFailed
from ..states import Operation

log = logging.getLogger(__name__)

# A job stops its playbook once its row names another job (a delete cancelling a create): the
# heartbeat thread looks every OWNERSHIP_POLL seconds, and every task start looks too.
OWNERSHIP_POLL = 0.5
# How long the delete of a cancelled create waits for that job to stop before it goes ahead anyway
# (its worker died without telling RQ, say): the job stops within a few seconds once told.
CANCELLED_JOB_WAIT = 60.0

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


class PlaybookJob:
    """A job that runs a playbook for one row (AWX's BaseTask, in small): the template every job
    of the control plane follows, desktops', projects' and the warm pool's alike.

    `run` owns what every such job does: the stale-job check (the row names its current job), the
    heartbeat on the row, the playbook run with the contract's retries (services/failures.py) within
    the job's time budget, and the one final write. Subclasses say what differs through hooks:
    `load`, `playbook`, `extravars`, `on_task`, `waiting` (a retry's wait shown on the row), `fail`,
    `gave_up`, `succeed`, `audit`. `extravars` and `succeed` raise JobFailed for a result they refuse."""

    model: type  # the row's model: it has job_id and job_heartbeat_at
    name: str  # for messages and logs: "desktop", "project", "pool VM"
    failure_callback: str | None = None  # RQ's on_failure of its jobs (as they were enqueued)

    # ---- hooks ---------------------------------------------------------------------------------------

    def load(self, resource_id: int, job_id: str | None, op: Operation):
        """The row, or None when this job no longer owns it (a stale or duplicate job)."""
        row = self.model.get_or_none(self.model.id == resource_id)
        if row is None or (job_id is not None and row.job_id != job_id):
            return None
        return row

    def niceness(self, cfg: Settings) -> int:
        """How much lower the playbook run's CPU priority is (runner/launch.py NICE): none."""
        return 0

    def playbook(self, op: Operation) -> str:
        raise NotImplementedError

    def failure_verb(self, op: Operation) -> str:
        raise NotImplementedError

    def extravars(self, cfg: Settings, row, op: Operation, force: bool) -> dict:
        raise NotImplementedError

    def on_task(self, cfg: Settings, row, op: Operation, role: str, filename: str, task: str) -> None:
        """A task of the playbook started (status steps)."""

    def waiting(self, cfg: Settings, row, op: Operation, message: str, hand_to: str | None) -> bool:
        """Show a retry's wait on the row and hand the row to the job of the next run (`hand_to`; None:
        this job runs it); False when the row moved on (the job then stops)."""
        raise NotImplementedError

    def fail(self, cfg: Settings, row, op: Operation, reason: str) -> None:
        raise NotImplementedError

    def gave_up(self, cfg: Settings, row, op: Operation, reason: str) -> None:
        """The last run failed and no retry is left."""
        self.fail(cfg, row, op, reason)

    def succeed(self, cfg: Settings, job, row, op: Operation, result: PlaybookResult) -> dict:
        raise NotImplementedError

    def audit(self, job, row, op: Operation, ok: bool) -> None:
        """Record the outcome (the audit log), when the row's kind has one."""

    # ---- the template --------------------------------------------------------------------------------

    def run(self, resource_id: int, operation: str, force: bool = False) -> dict:
        """The job, its records logged with its request's id (logs.context: the API request that asked
        for it, or the policy run or reaper pass) and its own."""
        job = get_current_job()
        meta = (job.meta or {}) if job is not None else {}
        with logs.context(request_id=meta.get("request_id"), job_id=job.id if job is not None else None):
            return self._run(job, resource_id, operation, force)

    def _run(self, job, resource_id: int, operation: str, force: bool) -> dict:
        cfg = settings()
        job_id = job.id if job is not None else None
        op = Operation(operation)
        self.moved_on = threading.Event()  # set once the row names another job: the playbook stops
        with db.connection_context():
            row = self.load(resource_id, job_id, op)
            if row is None:
                log.warning("job %s for %s %s is stale; skipping", job_id, self.name, resource_id)
                return {"id": resource_id, "skipped": "stale job"}
            cancelled = (job.meta or {}).get("after") if job is not None else None  # the job this one cancels
            if cancelled and not queue.wait_until_ended(cfg.redis_url, cancelled, CANCELLED_JOB_WAIT):
                log.warning("job %s, cancelled by %s, still runs after %g s; going ahead", cancelled, job_id,
                            CANCELLED_JOB_WAIT)
            try:
                extravars = self.extravars(cfg, row, op, force)
            except JobFailed as exc:
                self.fail(cfg, row, op, str(exc))
                self.audit(job, row, op, ok=False)
                raise
            started = time.monotonic()
            with _heartbeat(cfg, self.model, row.id, row.job_id, self.moved_on):
                result = self._run_with_retries(cfg, job, row, op, extravars)
            _count(self.playbook(op), result, time.monotonic() - started)
            if isinstance(result, RetryScheduled):
                return {"id": resource_id, "retry": result.job_id, "in_seconds": result.delay}
            if result.status == "canceled":
                log.info("%s %s: job %s stopped its playbook: the %s is another job's now (cancelled)",
                         self.name, resource_id, job_id, self.name)
                return {"id": resource_id, "cancelled": True}
            if not result.ok:
                self.audit(job, row, op, ok=False)
                raise JobFailed(f"{op.value} of {self.name} {row.id} failed: {_message_of(row)}")
            return self.succeed(cfg, job, row, op, result)

    def _run_with_retries(self, cfg: Settings, job, row, op: Operation,
                          extravars: dict) -> PlaybookResult | RetryScheduled:
        """Run the operation's playbook; after a failure, run it again as the contract's retry guidance
        says (services/failures.py), within the operation's time budget, while the row still belongs
        to this job. The row shows each wait ("... retry 2 of 4 in 2 s"); a failure that is not
        retried, or the last one, is the job's failure (gave_up). Returns the last result, or, under
        RQ, RetryScheduled: the next run is a job of its own, enqueued to run after the wait (the
        worker is free meanwhile), which the row now names and which goes on counting from here."""
        meta = (job.meta or {}) if job is not None else {}
        plan = failures.RetryPlan(parse_backoff(cfg.retry_backoff), cfg.provisioning_attempts,
                                  cfg.provisioning_retry_delay).resume(meta.get("retry"))
        deadline = meta.get("deadline") or time.time() + cfg.job_timeout  # wall clock: it crosses processes
        playbook, verb = self.playbook(op), self.failure_verb(op)
        while True:
            log.info("running %s for %s %s (VM %s), run %d", playbook, self.name, row.id, row.vmid, plan.runs)
            result = run_playbook(cfg.ansible_dir, playbook, cfg.inventory_path, extravars, cfg.playbook_env(playbook),
                                  timeout=max(1, int(deadline - time.time())), secrets=cfg.secrets(),
                                  on_task=lambda *task: self._task_started(cfg, row, op, *task),
                                  niceness=self.niceness(cfg), cancel=self.moved_on.is_set)
            if result.ok or result.status == "canceled":
                return result
            # A create playbook's rescue cleans up, then hands the failed step to us through set_stats
            # (failed_step, failed_message): a failure of that step, not of the infrastructure as such.
            step = failed_step(result)
            reason = f"{verb} at {step}" if step else result.reason()
            failure = failures.classify(op, reason, from_step=step is not None)
            if failure is failures.FailureClass.INFRASTRUCTURE:
                metrics.infrastructure_failed("guacamole" if result.failed_role == "guacamole_connection" else "proxmox")
            delay = plan.next_delay(failure)
            if delay is not None and deadline - time.time() < delay + 1:
                delay = None  # no time left for another run
            if delay is None:
                if plan.runs > 1:
                    reason = f"{reason} (gave up after {plan.runs} attempts)"
                self.gave_up(cfg, row, op, reason)
                return result
            cause = "an infrastructure error" if failure is failures.FailureClass.INFRASTRUCTURE else "a failed step"
            message = f"{with_verb(verb, reason)}; {plan.describe(failure)} in {delay:g} s after {cause}"
            log.warning("%s %s: %s", self.name, row.id, message)
            next_job = retry_job_id(job.id) if job is not None else None
            if not self.waiting(cfg, row, op, message, next_job):
                log.warning("%s %s moved on while job %s was retrying; stopping", self.name, row.id, row.job_id)
                return result
            if next_job is None:  # called outside RQ: the run waits here
                time.sleep(delay)
                continue
            try:
                queue.enqueue(cfg.redis_url, job.func_name, *job.args, **job.kwargs, queue=job.origin, job_id=next_job,
                              delay=delay, timeout=max(1, int(deadline - time.time() - delay)),
                              meta={**meta, "retry": plan.state(), "deadline": deadline},
                              description=job.description, on_failure=self.failure_callback)
            except redis.RedisError as exc:  # the row names a job Redis lacks: the reaper resumes it
                log.error("could not enqueue the next run of %s %s: %s", self.name, row.id, exc)
            return RetryScheduled(next_job, delay)

    def _task_started(self, cfg: Settings, row, op: Operation, role: str, filename: str, task: str) -> None:
        log.info("%s %s: %s: task '%s' (%s)", self.name, row.id, self.playbook(op), task,
                 f"{role}/{filename}" if role else filename)
        self.on_task(cfg, row, op, role, filename, task)


class VmJob(PlaybookJob):
    """An operation on a desktop or a project: a record of services/kinds.py, whose status the
    job moves (lifecycle.set_status: events, publishing) and whose outcome it audits. Subclasses:
    tasks/desktops.py DesktopJob, tasks/projects.py ProjectJob, which say `kind`, `extravars` and
    `result_fields` (what the playbook's stats put on the record; raises JobFailed)."""

    kind: kinds.Kind
    failure_callback = "controlplane.tasks.engine.on_job_failure"  # as services/jobs.py enqueues them

    @property
    def model(self):
        return self.kind.model

    @property
    def name(self) -> str:
        return self.kind.name

    def result_fields(self, cfg: Settings, op: Operation, stats: dict) -> dict:
        raise NotImplementedError

    def playbook(self, op: Operation) -> str:
        return self.kind.playbook[op]

    def failure_verb(self, op: Operation) -> str:
        return self.kind.failure_verb[op]

    def on_task(self, cfg: Settings, row, op: Operation, role: str, filename: str, task: str) -> None:
        mapped = self.kind.task_status.get((role, filename))
        current = self.model.get_by_id(row.id)
        if current.job_id != row.job_id:  # cancelled (a delete took the row): stop at this task
            self.moved_on.set()
            return
        if mapped is None:
            return
        status, message = mapped
        if self.kind.advances(op, current.status, status, current.status_message, message):
            lifecycle.set_status(current, status, message, "worker", job_id=row.job_id, publish_to=cfg.redis_url,
                                 settings=cfg)

    def waiting(self, cfg: Settings, row, op: Operation, message: str, hand_to: str | None) -> bool:
        first_status, _ = self.kind.accepted[op]
        return lifecycle.set_status(row, first_status, message, "worker", job_id=row.job_id,
                                    publish_to=cfg.redis_url, settings=cfg, hand_to=hand_to)

    def fail(self, cfg: Settings, row, op: Operation, reason: str) -> None:
        lifecycle.set_status(row, self.kind.failed, with_verb(self.failure_verb(op), reason), "worker",
                             job_id=row.job_id, publish_to=cfg.redis_url, settings=cfg, operation=None)

    def gave_up(self, cfg: Settings, row, op: Operation, reason: str) -> None:
        if op is Operation.STOP and _still_running(cfg, row):
            # A guest that ignores the shutdown request (or a VM Proxmox would not stop) is still
            # a working desktop: back to RUNNING, with the contract's escalation in the message.
            message = (f"{with_verb(self.failure_verb(op), reason)}; the VM is still running: "
                       "stop it again, or with force: true to power it off")
            lifecycle.set_status(row, self.kind.final[Operation.START][0], message, "worker", job_id=row.job_id,
                                 publish_to=cfg.redis_url, settings=cfg, operation=None)
            return
        self.fail(cfg, row, op, reason)

    def succeed(self, cfg: Settings, job, row, op: Operation, result: PlaybookResult) -> dict:
        try:
            fields = self.result_fields(cfg, op, result.stats)
        except JobFailed as exc:
            self.fail(cfg, row, op, str(exc))
            self.audit(job, row, op, ok=False)
            raise
        final, message = self.kind.final[op]
        reason = (job.meta or {}).get("reason") if job is not None else None
        if reason:
            message = f"{message}: {reason}"
        if lifecycle.set_status(row, final, message, "worker", job_id=row.job_id, publish_to=cfg.redis_url,
                                settings=cfg, operation=None, **fields):
            self.audit(job, row, op, ok=True)
        else:
            log.warning("%s %s moved on before job %s finished; its result is not recorded", self.name, row.id,
                        row.job_id)
        return {"id": row.id, "status": final.value, **result.stats,
                "playbook": {"seconds": result.seconds, "startup": result.startup, "tasks": result.timings}}

    def audit(self, job, row, op: Operation, ok: bool) -> None:
        meta = (job.meta or {}) if job is not None else {}
        record_outcome(row, op, ok=ok and row.status != self.kind.failed.value,
                       requested_by=meta.get("requested_by"), request_id=meta.get("request_id") or (job and job.id))


def _count(playbook: str, result, seconds: float) -> None:
    """The job's outcome and time in the metrics (metrics.py): succeeded, failed, retrying (its next run
    is a job of its own), cancelled."""
    if isinstance(result, RetryScheduled):
        outcome = "retrying"
    else:
        outcome = {"successful": "succeeded", "canceled": "cancelled"}.get(result.status, "failed")
    metrics.job_ended(playbook, outcome, seconds)


@dataclasses.dataclass(frozen=True)
class RetryScheduled:
    """The next run of a failed playbook is the job `job_id`, enqueued to start in `delay` seconds."""
    job_id: str
    delay: float


def retry_job_id(job_id: str) -> str:
    """A new id of the same form for the job of the next run: "<kind>-<id>-<operation>-<12 hex>" (or the
    pool's "pool-fill-<12 hex>") with new hex digits."""
    return f"{job_id.rsplit('-', 1)[0]}-{uuid.uuid4().hex[:12]}"


def with_verb(verb: str, reason: str) -> str:
    """"Create failed: <reason>", unless the reason says it already ("Create failed at '<task>': ...")."""
    return reason if reason.startswith(verb) else f"{verb}: {reason}"


def _message_of(row) -> str:
    return getattr(row, "status_message", None) or getattr(row, "message", "")


@contextlib.contextmanager
def _heartbeat(cfg: Settings, model, resource_id: int, job_id: str | None, moved_on: threading.Event):
    """While the job runs, write its sign of life on the row every `worker_heartbeat` seconds
    (job_heartbeat_at). The reaper trusts it over Redis, which may have lost the job (a restart
    without persistence) while the work horse runs on. Only the row's own job writes it. Between
    beats, every OWNERSHIP_POLL seconds, it looks whether the row still names the job: once it
    does not (a delete cancelled the job), `moved_on` is set, which stops the playbook."""
    if job_id is None:
        yield
        return
    stop = threading.Event()

    def beat():
        last_beat = None
        while True:
            try:
                with db.connection_context():
                    ours = model.id == resource_id, model.job_id == job_id
                    if last_beat is None or time.monotonic() - last_beat >= cfg.worker_heartbeat:
                        owned = model.update(job_heartbeat_at=utcnow()).where(*ours).execute() > 0
                        last_beat = time.monotonic()
                    else:
                        owned = model.select(model.id).where(*ours).exists()
                if not owned:
                    moved_on.set()
                    return
            except Exception as exc:  # the next beat tries again; the job itself goes on
                log.warning("heartbeat of job %s failed: %s", job_id, exc)
            if stop.wait(min(OWNERSHIP_POLL, cfg.worker_heartbeat)):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def failed_step(result: PlaybookResult) -> str | None:
    """"'<task>': <error>" when the playbook's rescue reported the step that failed (set_stats
    failed_step and failed_message, after its clean-up), else None."""
    step = result.stats.get("failed_step") if result.status == "failed" else None
    if not step:
        return None
    return f"'{step}': {result.stats.get('failed_message') or 'failed'}"


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
