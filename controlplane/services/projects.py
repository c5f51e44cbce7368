"""Projects (projects-api.md): create, read, operate, delete; members, invitations; and the one
permission table that REST and the WebSocket both use.

A project is provisioned by the same engine as a desktop (kinds.PROJECT): a VM from the template
of its `os`, on its own SDN network (a /24 leased from the configured pool), by the project_*
playbooks.
"""
from __future__ import annotations

import datetime as dt
import enum
import ipaddress
import logging
import statistics
from dataclasses import dataclass

import peewee as pw

from ..config import Settings
from ..errors import Forbidden, InfrastructureError, InvalidOperation, NotFound, Unavailable, ValidationFailed
from ..extensions import db
from ..models import Invitation, NetworkLease, Project, ProjectMember, utcnow
from ..project_states import ACCEPTED, ALLOWED_FROM, ProjectStatus
from ..states import Operation
from ..user_ids import guacamole_username
from . import guacamole_json, jobs, lifecycle, share_locks, shares
from .identity import Identity
from .maintenance import maintenance_refusal
from .plans import projects_config
from .queue import project_channel, publish
from .vmids import VmidRangeExhausted, allocate

log = logging.getLogger(__name__)


# ---- permissions -------------------------------------------------------------------------------

class Role(str, enum.Enum):
    OWNER = "owner"
    EDITOR = "editor"
    VIEWER = "viewer"


class Action(str, enum.Enum):
    READ = "read"  # the project, its status, its members
    READ_CHAT = "read_chat"  # chat history, chat events
    CHAT = "chat"  # send chat messages
    OPERATE = "operate"  # start and stop the VM
    DELETE = "delete"
    MANAGE_MEMBERS = "manage_members"  # invite and remove collaborators
    WRITE_SHARE = "write_share"  # change the shared folder, and be given its password (any member reads it)
    CONNECT = "connect"  # open the VM's screen (with OPERATE: in control; without: view only)


# The permission table, used by every REST view and the WebSocket. Admins may do everything.
PERMISSIONS: dict[Action, frozenset[Role]] = {
    Action.READ: frozenset({Role.VIEWER, Role.EDITOR, Role.OWNER}),
    Action.READ_CHAT: frozenset({Role.VIEWER, Role.EDITOR, Role.OWNER}),
    Action.CHAT: frozenset({Role.EDITOR, Role.OWNER}),
    Action.OPERATE: frozenset({Role.EDITOR, Role.OWNER}),
    Action.DELETE: frozenset({Role.OWNER}),
    Action.MANAGE_MEMBERS: frozenset({Role.OWNER}),
    Action.WRITE_SHARE: frozenset({Role.EDITOR, Role.OWNER}),
    Action.CONNECT: frozenset({Role.VIEWER, Role.EDITOR, Role.OWNER}),
}

INVITABLE_ROLES = (Role.EDITOR, Role.VIEWER)


def allowed(role: Role | None, action: Action, is_admin: bool = False) -> bool:
    return is_admin or (role is not None and role in PERMISSIONS[action])


def access(identity: Identity, project_id: str, action: Action) -> tuple[Project, Role | None]:
    """The project and the caller's role, if the caller may do `action` on it.

    Someone who is not a member gets 404 (projects they cannot see do not exist for them); a
    member whose role does not allow the action gets 403."""
    project = (Project.select().where(Project.public_id == project_id,
                                      Project.status != ProjectStatus.DELETED.value).first())
    if project is None:
        raise NotFound(f"Project {project_id} not found", details={"project_id": project_id})
    member = ProjectMember.get_or_none(ProjectMember.project == project.id, ProjectMember.user_id == identity.user_id)
    role = Role(member.role) if member else None
    if role is None and not identity.is_admin:
        raise NotFound(f"Project {project_id} not found", details={"project_id": project_id})
    if not allowed(role, action, identity.is_admin):
        raise Forbidden(f"Your role ({role.value}) does not allow this on project {project_id}",
                        details={"project_id": project_id, "required": _roles_text(action)})
    return project, role


def _roles_text(action: Action) -> str:
    return " or ".join(r.value for r in Role if r in PERMISSIONS[action])


# ---- reading -----------------------------------------------------------------------------------------

def list_for(identity: Identity) -> list[Project]:
    return list(Project.select().join(ProjectMember)
                .where(ProjectMember.user_id == identity.user_id, Project.status != ProjectStatus.DELETED.value)
                .order_by(Project.id))


@dataclass(frozen=True)
class MembersView:
    """A project as one member sees it: the project (its fields read through), the member's role,
    the shared folder's credentials for that role (None: shares disabled), and the members."""
    project: Project
    role: Role | None
    shared_folder: shares.Credentials | None
    collaborators: list

    def __getattr__(self, name: str):
        return getattr(self.project, name)


def view_of(settings: Settings, identity: Identity, project_id: str) -> MembersView:
    project, role = access(identity, project_id, Action.READ)
    creds = None if role is None else shares.credentials(settings, project.public_id, project.share_generation,
                                                         writer=allowed(role, Action.WRITE_SHARE))
    return MembersView(project, role, creds, members(project))


def members(project: Project) -> list[ProjectMember]:
    order = pw.Case(ProjectMember.role, ((Role.OWNER.value, 0), (Role.EDITOR.value, 1)), 2)
    return list(ProjectMember.select().where(ProjectMember.project == project.id)
                .order_by(order, ProjectMember.joined_at, ProjectMember.id))


def estimated_seconds(settings: Settings) -> int:
    """From measured provisioning times (the median of the last 20), else the configured guess."""
    rows = (Project.select(Project.provisioning_started_at, Project.provisioning_finished_at)
            .where(Project.provisioning_finished_at.is_null(False), Project.provisioning_started_at.is_null(False))
            .order_by(Project.provisioning_finished_at.desc()).limit(20))
    durations = [(r.provisioning_finished_at - r.provisioning_started_at).total_seconds() for r in rows]
    if not durations:
        return projects_config(settings).default_estimate_seconds
    return max(1, round(statistics.median(durations)))


def estimate_text(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds} seconds"
    low, high = seconds // 60, -(-seconds // 60)
    if low == high:
        return f"{low} minute{'s' if low != 1 else ''}"
    return f"{low}-{high} minutes"


# ---- creating ----------------------------------------------------------------------------------------

def create(settings: Settings, identity: Identity, name: str, description: str, os_name: str | None) -> Project:
    config = projects_config(settings)
    os_name = os_name or config.default_os
    if os_name not in config.os_templates:
        raise ValidationFailed(f"Unknown os {os_name!r}",
                               details={"os": "Must be one of " + ", ".join(sorted(config.os_templates))})
    _refuse_on_draining_node(settings, settings.proxmox_node, "create project")
    accepted, message = ACCEPTED[Operation.CREATE]
    now = utcnow()
    try:
        with db.atomic():
            project = Project.create(owner_id=identity.user_id, name=name, description=description or "",
                                     os=os_name, status=accepted.value, status_message=message,
                                     node=settings.proxmox_node, operation=Operation.CREATE.value,
                                     provisioning_started_at=now, created_at=now, updated_at=now)
            project.vmid = allocate(None, settings.vmid_min, settings.vmid_max, project_id=project.id)
            project.network_cidr = _allocate_network(config.network_pool, project.id)
            project.job_id = jobs.new_job_id(project.id, Operation.CREATE, "project")
            project.save(only=[Project.vmid, Project.network_cidr, Project.job_id])
            ProjectMember.create(project=project.id, user_id=identity.user_id, email=identity.email,
                                 name=identity.name, role=Role.OWNER.value, joined_at=now)
            lifecycle.record_event(project, accepted, message, "api")
    except (VmidRangeExhausted, NetworkPoolExhausted) as exc:
        raise InfrastructureError(f"Failed to create project: {exc}") from None
    if shares.enabled(settings):
        shares.create_folder(settings, project.public_id)
    try:
        lifecycle.enqueue_create(settings, project)
    except lifecycle.QueueUnavailable:
        raise Unavailable("Failed to create project: the job queue is unavailable") from None
    return project


class NetworkPoolExhausted(RuntimeError):
    pass


def _allocate_network(pool: ipaddress.IPv4Network, project_id: int) -> str:
    """Lease the first free /24 of the pool for the project. Call inside a transaction."""
    if pool.prefixlen > 24:
        raise NetworkPoolExhausted(f"network pool {pool} is smaller than a /24")
    taken = {row.cidr for row in NetworkLease.select(NetworkLease.cidr)}
    for subnet in pool.subnets(new_prefix=24):
        cidr = str(subnet)
        if cidr in taken:
            continue
        try:
            with db.atomic():
                NetworkLease.create(cidr=cidr, project=project_id)
            return cidr
        except pw.IntegrityError:
            continue
    raise NetworkPoolExhausted(f"no free /24 left in {pool}")


# ---- operations ----------------------------------------------------------------------------------------

def _refuse_on_draining_node(settings: Settings, node: str | None, what: str) -> None:
    refusal = maintenance_refusal(settings, node, what)
    if refusal:
        raise Unavailable(refusal, details={"node": node})


def request(settings: Settings, identity: Identity, project_id: str, operation: Operation,
            force: bool = False) -> Project:
    action = Action.DELETE if operation is Operation.DELETE else Action.OPERATE
    project, _ = access(identity, project_id, action)
    status = ProjectStatus(project.status)
    if status not in ALLOWED_FROM[operation]:
        raise InvalidOperation(f"Cannot {operation.value} project in {status.value} state",
                               details={"status": status.value})
    if operation is Operation.START:
        _refuse_on_draining_node(settings, project.node, "start project")
    accepted, message = ACCEPTED[operation]
    try:
        fresh = lifecycle.accept(settings, project, operation, accepted, message, force=force)
    except lifecycle.QueueUnavailable:
        raise Unavailable(f"Failed to {operation.value} project: the job queue is unavailable") from None
    if fresh is None:
        current = Project.get_by_id(project.id)
        raise InvalidOperation(f"Cannot {operation.value} project in {current.status} state")
    return fresh


# ---- the VM's screen ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Screen:
    """What POST /api/projects/{id}/connect answers: a link that signs the browser into Guacamole with
    the project's connection, until `expires_at`; view only for a member who may not operate the VM."""
    project: Project
    url: str
    expires_at: dt.datetime
    protocol: str
    read_only: bool


def connect(settings: Settings, identity: Identity, project_id: str) -> Screen:
    """A fresh auth-json link to the project VM's screen, as desktops' /connect makes (single use,
    CONTROLPLANE_CONNECT_TTL), for any member: in control for the owner and editors, view only (the
    connection's `read-only` parameter, which guacd enforces) for viewers. The project's room is told
    who opened it. Links are auth-json only: a plain connection URL could not be made view only."""
    project, role = access(identity, project_id, Action.CONNECT)
    if project.status != ProjectStatus.RUNNING.value or not project.vm_ip:
        raise InvalidOperation(f"Project {project_id} is not running (status: {project.status})",
                               details={"status": project.status})
    if not project.guacamole_connection_id:
        raise InvalidOperation(f"Project {project_id}'s VM has no screen yet: stop and start it once to register one",
                               details={"status": project.status})
    if settings.effective_connect_mode != "json":
        raise Unavailable("Project screens need auth-json links: set CONTROLPLANE_GUACAMOLE_JSON_SECRET",
                          details={"connect_mode": settings.effective_connect_mode})
    read_only = not allowed(role, Action.OPERATE, identity.is_admin)
    protocol = settings.guacamole_protocol
    parameters = {"hostname": project.vm_ip, "port": settings.effective_guacamole_port}
    if settings.guacamole_vnc_password and protocol == "vnc":
        parameters["password"] = settings.guacamole_vnc_password
    if read_only:
        parameters["read-only"] = "true"
    expires_at = utcnow() + dt.timedelta(seconds=settings.connect_ttl)
    url = guacamole_json.link(settings.effective_guacamole_public_url, settings.guacamole_json_secret,
                              username=guacamole_username(identity.user_id), connection=f"cds-project-{project.id}",
                              protocol=protocol, parameters=parameters, expires_at=expires_at,
                              single_use=settings.connect_single_use)
    lifecycle_notify(settings, project, {"type": "collaborator_activity", "project_id": project.public_id,
                                         "user": {"id": identity.user_id, "name": identity.name},
                                         "activity": "opened_screen", "read_only": read_only})
    return Screen(project, url, expires_at, protocol, read_only)


# ---- collaborators ---------------------------------------------------------------------------------------

def invite(settings: Settings, identity: Identity, project_id: str, email: str, role: str) -> Invitation:
    project, _ = access(identity, project_id, Action.MANAGE_MEMBERS)
    email = email.strip().lower()
    if role not in {r.value for r in INVITABLE_ROLES}:
        raise ValidationFailed("Invalid role", details={"role": "Must be editor or viewer"})
    if ProjectMember.select().where(ProjectMember.project == project.id,
                                    pw.fn.LOWER(ProjectMember.email) == email).exists():
        raise ValidationFailed(f"{email} is already a member of this project", details={"email": email})
    with db.atomic():
        open_invitation = Invitation.get_or_none(Invitation.project == project.id, Invitation.email == email,
                                                 Invitation.status == "sent")
        if open_invitation is not None:  # inviting again updates the role of the open invitation
            open_invitation.role = role
            open_invitation.save(only=[Invitation.role])
            return open_invitation
        invitation = Invitation.create(project=project.id, email=email, role=role, invited_by=identity.user_id)
    lifecycle_notify(settings, project, {"type": "collaborator_activity", "project_id": project.public_id,
                                         "user": {"id": identity.user_id, "name": identity.name},
                                         "activity": "invited", "email": email, "role": role})
    return invitation


def invitations_for(identity: Identity) -> list[Invitation]:
    """Open invitations to the caller's verified email (none without one: an unverified email is
    anybody's claim, and would show them who invited that person to what)."""
    if not identity.email:
        return []
    return list(Invitation.select(Invitation, Project).join(Project)
                .where(Invitation.email == identity.email.strip().lower(), Invitation.status == "sent",
                       Project.status != ProjectStatus.DELETED.value)
                .order_by(Invitation.id))


def respond(settings: Settings, identity: Identity, invitation_id: str, accept: bool) -> Invitation:
    """Accept or decline an invitation to the caller's email. Only a verified email answers one
    (Identity.email): with an unverified one, or none, the caller is refused (403) before any
    invitation is looked up, and the invitation stays open for its real addressee."""
    if not identity.email:
        why = "is not verified by your identity provider" if identity.email_unverified else "is not in your token"
        raise Forbidden(f"Invitations are answered with a verified email address, and yours {why}: "
                        "verify it with your identity provider, then sign in again",
                        details={"email": "not verified" if identity.email_unverified else "missing"})
    invitation = (Invitation.select(Invitation, Project).join(Project)
                  .where(Invitation.public_id == invitation_id).first())
    mine = invitation is not None and invitation.email == identity.email.strip().lower()
    if not mine or invitation.project.status == ProjectStatus.DELETED.value:
        raise NotFound(f"Invitation {invitation_id} not found", details={"invitation_id": invitation_id})
    if invitation.status != "sent":
        raise InvalidOperation(f"Invitation {invitation_id} is already {invitation.status}",
                               details={"status": invitation.status})
    now = utcnow()
    with db.atomic():
        changed = (Invitation.update(status="accepted" if accept else "declined", responded_at=now)
                   .where(Invitation.id == invitation.id, Invitation.status == "sent").execute())
        if not changed:
            raise InvalidOperation(f"Invitation {invitation_id} was already answered")
        if accept:
            member = ProjectMember.get_or_none(ProjectMember.project == invitation.project_id,
                                               ProjectMember.user_id == identity.user_id)
            if member is None:
                ProjectMember.create(project=invitation.project_id, user_id=identity.user_id, email=identity.email,
                                     name=identity.name, role=invitation.role, joined_at=now)
    invitation.status = "accepted" if accept else "declined"
    lifecycle_notify(settings, invitation.project, {
        "type": "collaborator_activity", "project_id": invitation.project.public_id,
        "user": {"id": identity.user_id, "name": identity.name},
        "activity": "joined_project" if accept else "declined_invitation"})
    return invitation


def remove_member(settings: Settings, identity: Identity, project_id: str, user_id: str) -> None:
    """The owner removes a collaborator; a collaborator may remove themselves (leave)."""
    action = Action.READ if user_id == identity.user_id else Action.MANAGE_MEMBERS
    project, _ = access(identity, project_id, action)
    member = ProjectMember.get_or_none(ProjectMember.project == project.id, ProjectMember.user_id == user_id)
    if member is None:
        raise NotFound(f"User {user_id} is not a collaborator on project {project_id}",
                       details={"project_id": project_id, "user_id": user_id})
    if member.role == Role.OWNER.value:
        raise ValidationFailed("The project's owner cannot be removed", details={"user_id": user_id})
    had_password = allowed(Role(member.role), Action.WRITE_SHARE)
    with db.atomic():
        member.delete_instance()
        if had_password:
            # They were given the share's password: a new one from now on.
            Project.update(share_generation=Project.share_generation + 1).where(Project.id == project.id).execute()
    # Their WebDAV locks go: those taken with their own token, and, when they had the password,
    # those taken with it (the password's holders are one principal: any of them may be theirs).
    share_locks.drop(settings, project.public_id, {user_id, project.public_id} if had_password else {user_id})
    lifecycle_notify(settings, project, {"type": "collaborator_activity", "project_id": project.public_id,
                                         "user": {"id": user_id, "name": member.name},
                                         "activity": "left_project" if user_id == identity.user_id else "removed"})


def lifecycle_notify(settings: Settings, project: Project, payload: dict) -> None:
    """Publish an event to the project's room (best effort)."""
    publish(settings.redis_url, [project_channel(project.public_id)], payload)
