"""Desktop operations, called by the API views (and later by other APIs and policies).

Views validate input and shape answers; this module decides. Long work never happens here:
it records the request in the database, then enqueues a job.
"""
from __future__ import annotations

import datetime as dt
import logging

import peewee as pw

from .. import metrics
from ..config import Settings
from ..errors import (
    DesktopAlreadyExists,
    DesktopNotFound,
    DesktopNotReady,
    Forbidden,
    InfrastructureError,
    InvalidOperation,
    ValidationFailed,
)
from ..extensions import db
from ..models import Desktop, DesktopEvent, IdempotencyKey, utcnow
from ..states import ACCEPTED, ALLOWED_FROM, INACTIVE, Operation, Status
from ..timestamps import utc_iso
from ..user_ids import guacamole_username
from . import guacamole_json, jobs, lifecycle, pool, vmids
from .identity import Identity
from .maintenance import maintenance_refusal
from .plans import Plan, duration_text, load_plans

log = logging.getLogger(__name__)


# ---- reading ------------------------------------------------------------------------------

_BY_ID_SQL: dict[int, str] = {}


def _by_id(desktop_id: int) -> Desktop | None:
    """Desktop.get_or_none(Desktop.id == desktop_id), with the SQL built once per database: the
    hottest read of the API (get, status, connect), where peewee's query building is most of the
    cost."""
    key = id(db.obj)
    sql = _BY_ID_SQL.get(key)
    if sql is None:
        sql, _ = Desktop.select().where(Desktop.id == 0).limit(1).sql()
        _BY_ID_SQL[key] = sql
    return next(iter(Desktop.raw(sql, desktop_id, 1)), None)


def get_visible(identity: Identity, desktop_id: int) -> Desktop:
    """The desktop, if it exists and the caller may see it; otherwise DESKTOP_NOT_FOUND.

    Another user's desktop answers 404 too, so ids do not reveal who has a desktop. A DELETED
    desktop stays visible to its owner (soft delete), so that a poller sees the final state.
    """
    desktop = _by_id(desktop_id)
    if desktop is None:
        raise DesktopNotFound(desktop_id)
    if not identity.is_admin and desktop.user_id != identity.user_id:
        raise DesktopNotFound(desktop_id)
    return desktop


def check_user(identity: Identity, user_id: str) -> None:
    if not identity.is_admin and user_id != identity.user_id:
        raise Forbidden("You may only access your own desktops")


def list_desktops(identity: Identity, user_id: str | None = None, status: Status | None = None) -> list[Desktop]:
    query = Desktop.select().order_by(Desktop.id)
    if user_id is not None:
        check_user(identity, user_id)
        query = query.where(Desktop.user_id == user_id)
    elif not identity.is_admin:
        query = query.where(Desktop.user_id == identity.user_id)
    if status is not None:
        query = query.where(Desktop.status == status.value)
    elif not identity.is_admin:
        query = query.where(Desktop.status != Status.DELETED.value)
    return list(query)


def get_for_user(identity: Identity, user_id: str) -> Desktop:
    check_user(identity, user_id)
    desktop = (Desktop.select().where(Desktop.user_id == user_id, Desktop.status.not_in([s.value for s in INACTIVE]))
               .order_by(Desktop.id.desc()).first())
    if desktop is None:
        raise DesktopNotFound(message=f"No active desktop found for user {user_id}")
    return desktop


def events(desktop: Desktop) -> list[DesktopEvent]:
    return list(DesktopEvent.select().where(DesktopEvent.desktop == desktop.id).order_by(DesktopEvent.id))


def connection_url(settings: Settings, desktop: Desktop) -> str | None:
    """Guacamole's client URL for the desktop's connection, only while it is RUNNING."""
    if desktop.status != Status.RUNNING.value or not desktop.guacamole_connection_id:
        return None
    return (f"{settings.effective_guacamole_public_url}/#/client/"
            f"{guacamole_json.client_id(desktop.guacamole_connection_id, settings.guacamole_data_source)}")


def connection_link(settings: Settings, desktop: Desktop, now: dt.datetime | None = None) -> tuple[str | None, dt.datetime | None]:
    """What /connect answers: an auth-json link that logs the browser in by itself and expires
    (CONTROLPLANE_CONNECT_TTL), fresh on every call, or the connection's plain URL (no expiry)."""
    if settings.effective_connect_mode != "json" or desktop.status != Status.RUNNING.value or not desktop.ip_address:
        return connection_url(settings, desktop), None
    expires_at = (now or utcnow()) + dt.timedelta(seconds=settings.connect_ttl)
    parameters = {"hostname": desktop.ip_address, "port": settings.effective_guacamole_port}
    if settings.guacamole_vnc_password and (desktop.protocol or settings.guacamole_protocol) == "vnc":
        parameters["password"] = settings.guacamole_vnc_password
    url = guacamole_json.link(settings.effective_guacamole_public_url, settings.guacamole_json_secret,
                              username=guacamole_username(desktop.user_id), connection=f"cds-desktop-{desktop.id}",
                              protocol=desktop.protocol or settings.guacamole_protocol, parameters=parameters,
                              expires_at=expires_at, single_use=settings.connect_single_use)
    return url, expires_at


def connect(settings: Settings, identity: Identity, desktop_id: int) -> Desktop:
    desktop = get_visible(identity, desktop_id)
    if desktop.status != Status.RUNNING.value:
        raise DesktopNotReady(f"Desktop is not in RUNNING state. Current status: {desktop.status}")
    now = utcnow()
    Desktop.update(last_accessed_at=now).where(Desktop.id == desktop.id).execute()
    desktop.last_accessed_at = now
    return desktop


# ---- changing -----------------------------------------------------------------------------

def create(settings: Settings, identity: Identity, user_id: str, name: str | None, plan: str,
           expires_at: dt.datetime | None = None, idempotency_key: str | None = None) -> tuple[Desktop, bool]:
    """Record a new desktop and enqueue its creation. Returns (desktop, replayed): with an
    idempotency key (the caller's X-Request-ID) that this caller used for a create before, the
    desktop that create made, and True."""
    check_user(identity, user_id)
    if idempotency_key:
        earlier = _created_with(identity, idempotency_key)
        if earlier is not None:
            return earlier, True
    plans = load_plans(settings.plans_file)
    if plan not in plans:
        raise ValidationFailed(details={"plan": "Plan must be one of " + _one_of(plans)})
    spec = plans[plan]
    expires_at = _expiry(spec, expires_at)
    if not settings.proxmox_shared_storage:
        # Clones stay on the template's node; with shared storage, placement skips nodes in maintenance.
        _refuse_on_draining_node(settings, settings.proxmox_node, "create desktop")
    accepted, message = ACCEPTED[Operation.CREATE]
    if _active_desktop_exists(user_id):
        earlier = _created_with(identity, idempotency_key) if idempotency_key else None
        if earlier is not None:  # the same create, retried while the first one was committing
            return earlier, True
        raise DesktopAlreadyExists()
    try:
        with db.atomic():
            desktop = Desktop.create(
                user_id=user_id, name=name or f"Desktop-{user_id}"[:100], status=accepted.value, status_message=message,
                plan=plan, cpu_cores=spec.cores, memory_mb=spec.memory_mb, node=settings.proxmox_node,
                operation=Operation.CREATE.value, expires_at=expires_at)
            warm = pool.take(settings, desktop, spec.template)
            if warm is not None:  # a VM of the warm pool: no clone, and running already unless the pool keeps them stopped
                desktop.vmid, desktop.node = warm.vmid, warm.node
                desktop.status_message = message = f"{message}: VM {warm.vmid} is ready in the warm pool"
            else:
                desktop.vmid = vmids.allocate(desktop.id, settings.vmid_min, settings.vmid_max)
            desktop.job_id = jobs.new_job_id(desktop.id, Operation.CREATE)
            desktop.save(only=[Desktop.vmid, Desktop.job_id, Desktop.node, Desktop.status_message])
            lifecycle.record_event(desktop, accepted, message, "api")
            if idempotency_key:
                IdempotencyKey.create(user_id=identity.user_id, key=idempotency_key, desktop=desktop.id)
    except pw.IntegrityError:
        # Lost the race against a concurrent create for the same user (the partial unique index),
        # or against the same create retried at once (the idempotency key): that one's desktop.
        earlier = _created_with(identity, idempotency_key) if idempotency_key else None
        if earlier is not None:
            return earlier, True
        raise DesktopAlreadyExists() from None
    except vmids.VmidRangeExhausted as exc:
        raise InfrastructureError(f"Failed to create desktop: {exc}") from None
    try:
        lifecycle.enqueue_create(settings, desktop, undo=lambda: pool.give_back(desktop))
    except lifecycle.QueueUnavailable:
        raise InfrastructureError("Failed to create desktop: the job queue is unavailable") from None
    if warm is None and pool.configs(settings)[plan].size > 0:
        metrics.pool_missed(plan)
    log.info("desktop %s: create accepted (plan %s, VM %s%s), job %s", desktop.id, plan, desktop.vmid,
             " from the warm pool" if warm is not None else "", desktop.job_id)
    if warm is not None:
        pool.request_refill(settings)
    return desktop, False


def _created_with(identity: Identity, key: str) -> Desktop | None:
    found = IdempotencyKey.get_or_none(IdempotencyKey.user_id == identity.user_id, IdempotencyKey.key == key)
    return Desktop.get_by_id(found.desktop_id) if found else None


def request(settings: Settings, identity: Identity, desktop_id: int, operation: Operation,
            force: bool = False) -> Desktop:
    """Accept start/stop/delete: check the state machine, record the new status, enqueue."""
    desktop = get_visible(identity, desktop_id)
    if Status(desktop.status) not in ALLOWED_FROM[operation]:
        raise InvalidOperation(f"Cannot {operation.value} desktop in {desktop.status} state")
    if operation is Operation.START and desktop.expires_at is not None and desktop.expires_at <= utcnow():
        raise InvalidOperation(f"Cannot start desktop: it expired at {utc_iso(desktop.expires_at)}")
    if operation is Operation.START:
        _refuse_on_draining_node(settings, desktop.node, "start desktop")
    accepted, message = ACCEPTED[operation]
    if operation is Operation.STOP and force:
        message = "Forcing VM power-off"
    try:
        fresh = lifecycle.accept(settings, desktop, operation, accepted, message, force=force)
    except lifecycle.QueueUnavailable:
        raise InfrastructureError(f"Failed to {operation.value} desktop: the job queue is unavailable") from None
    if fresh is None:
        current = Desktop.get_by_id(desktop.id)
        raise InvalidOperation(f"Cannot {operation.value} desktop in {current.status} state")
    return fresh


# ---- helpers ------------------------------------------------------------------------------

def _expiry(plan: Plan, asked: dt.datetime | None) -> dt.datetime | None:
    """When a new desktop expires (naive UTC): the time asked for, at most the plan's lifetime
    from now; by default the plan's lifetime (none: never)."""
    now = utcnow()
    latest = now + dt.timedelta(seconds=plan.expires_after) if plan.expires_after else None
    if asked is None:
        return latest
    asked = asked.astimezone(dt.timezone.utc).replace(tzinfo=None, microsecond=0)
    if asked <= now:
        raise ValidationFailed(details={"expiresAt": "expiresAt must be in the future"})
    if latest is not None and asked > latest:
        raise ValidationFailed(details={"expiresAt": f"expiresAt must be at most {duration_text(plan.expires_after)} "
                                                     f"from now for plan {plan.name}"})
    return asked


def _refuse_on_draining_node(settings: Settings, node: str | None, what: str) -> None:
    """A node in maintenance (maintenance.drain) takes no new desktops: INFRASTRUCTURE_ERROR, which
    the contract says to retry later."""
    refusal = maintenance_refusal(settings, node, what)
    if refusal:
        raise InfrastructureError(refusal)


def _active_desktop_exists(user_id: str) -> bool:
    return Desktop.select().where(Desktop.user_id == user_id,
                                  Desktop.status.not_in([s.value for s in INACTIVE])).exists()


def _one_of(plans) -> str:
    names = list(plans)
    return ", ".join(names[:-1]) + ", or " + names[-1] if len(names) > 1 else names[0]


def plan_choices(settings: Settings) -> str:
    return _one_of(load_plans(settings.plans_file))
