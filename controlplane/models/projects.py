"""Projects (projects-api.md): a team's VM on its own network with a shared folder, its members,
invitations, AI chat history, and the users' chat settings and usage.

Public ids carry the contract's prefixes (`proj_…`, `inv_…`, `msg_…`); the integer primary keys
stay internal (VM names, network names, foreign keys).
"""
from __future__ import annotations

import secrets

import peewee as pw

from .base import BaseModel, utcnow


def public_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


class Project(BaseModel):
    id = pw.BigAutoField()
    public_id = pw.CharField(max_length=40, unique=True, default=lambda: public_id("proj"))
    owner_id = pw.CharField(max_length=255, index=True)
    name = pw.CharField(max_length=100)
    description = pw.TextField(default="")
    os = pw.CharField(max_length=32)
    status = pw.CharField(max_length=32, index=True)
    status_message = pw.TextField(default="")
    vmid = pw.IntegerField(null=True)
    node = pw.CharField(max_length=64, null=True)
    vm_ip = pw.CharField(max_length=64, null=True)
    network = pw.CharField(max_length=16, null=True)  # the SDN VNet id
    network_cidr = pw.CharField(max_length=32, null=True)
    guacamole_connection_id = pw.CharField(max_length=64, null=True)  # the VM's screen (cds-project-<id>)
    # Bumped when a collaborator who knew the share's password is removed: a new password
    # (services.shares.password).
    share_generation = pw.IntegerField(default=0)
    operation = pw.CharField(max_length=16, null=True)
    job_id = pw.CharField(max_length=128, null=True)
    resumes = pw.IntegerField(default=0)
    job_heartbeat_at = pw.DateTimeField(null=True)  # the running job's last sign of life (tasks/engine.py)
    provisioning_started_at = pw.DateTimeField(null=True)
    provisioning_finished_at = pw.DateTimeField(null=True)
    created_at = pw.DateTimeField(default=utcnow)
    updated_at = pw.DateTimeField(default=utcnow)
    deleted_at = pw.DateTimeField(null=True)


class ProjectEvent(BaseModel):
    """Every status change of a project, in order (like DesktopEvent)."""
    id = pw.BigAutoField()
    project = pw.ForeignKeyField(Project, backref="events", on_delete="CASCADE")
    status = pw.CharField(max_length=32)
    message = pw.TextField(default="")
    source = pw.CharField(max_length=32)
    created_at = pw.DateTimeField(default=utcnow)


class ProjectMember(BaseModel):
    """A member of a project: its owner, or a collaborator who accepted an invitation."""
    id = pw.BigAutoField()
    project = pw.ForeignKeyField(Project, backref="members", on_delete="CASCADE")
    user_id = pw.CharField(max_length=255, index=True)
    email = pw.CharField(max_length=320, null=True)
    name = pw.CharField(max_length=255, null=True)
    role = pw.CharField(max_length=16)  # owner, editor, viewer
    joined_at = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("project", "user_id"), True),)


class Invitation(BaseModel):
    id = pw.BigAutoField()
    public_id = pw.CharField(max_length=40, unique=True, default=lambda: public_id("inv"))
    project = pw.ForeignKeyField(Project, backref="invitations", on_delete="CASCADE")
    email = pw.CharField(max_length=320, index=True)  # stored lower-case
    role = pw.CharField(max_length=16)
    invited_by = pw.CharField(max_length=255)
    status = pw.CharField(max_length=16, default="sent")  # sent, accepted, declined, revoked
    created_at = pw.DateTimeField(default=utcnow)
    responded_at = pw.DateTimeField(null=True)


# At most one open invitation per project and address.
Invitation.add_index(Invitation.index(Invitation.project, Invitation.email, unique=True,
                                      name="invitation_one_open_per_email").where(Invitation.status == "sent"))


class ChatMessage(BaseModel):
    id = pw.BigAutoField()
    public_id = pw.CharField(max_length=40, unique=True, default=lambda: public_id("msg"))
    project = pw.ForeignKeyField(Project, backref="messages", on_delete="CASCADE")
    user_id = pw.CharField(max_length=255, null=True)  # the author of a user message
    role = pw.CharField(max_length=16)  # user, assistant
    content = pw.TextField()
    model = pw.CharField(max_length=200, null=True)
    tokens = pw.IntegerField(null=True)
    cost = pw.DoubleField(null=True)
    error = pw.TextField(null=True)  # why no answer came (provider error), on the user's message
    created_at = pw.DateTimeField(default=utcnow, index=True)


class UserSettings(BaseModel):
    user_id = pw.CharField(max_length=255, primary_key=True)
    preferred_model = pw.CharField(max_length=200, null=True)
    model_parameters = pw.TextField(default="{}")  # JSON
    custom_models = pw.TextField(default="[]")  # JSON
    api_keys = pw.TextField(default="{}")  # JSON: provider → encrypted key
    updated_at = pw.DateTimeField(default=utcnow)


class UsageRecord(BaseModel):
    """One model call: who, which project and model, tokens and cost (for GET /api/user/usage)."""
    id = pw.BigAutoField()
    user_id = pw.CharField(max_length=255)
    project = pw.ForeignKeyField(Project, null=True, backref="usage", on_delete="SET NULL")
    model = pw.CharField(max_length=200)
    prompt_tokens = pw.IntegerField(default=0)
    completion_tokens = pw.IntegerField(default=0)
    tokens = pw.IntegerField(default=0)
    cost = pw.DoubleField(default=0.0)
    created_at = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("user_id", "created_at"), False),)


class NetworkLease(BaseModel):
    """A project's /24 from the configured pool, held until its network is confirmed deleted."""
    cidr = pw.CharField(max_length=32, primary_key=True)
    project = pw.ForeignKeyField(Project, null=True, backref="network_leases", on_delete="SET NULL")
    created_at = pw.DateTimeField(default=utcnow)


PROJECT_MODELS = (Project, ProjectEvent, ProjectMember, Invitation, ChatMessage, UserSettings, UsageRecord,
                  NetworkLease)
