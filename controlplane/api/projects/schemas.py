"""Marshmallow schemas of the projects API (projects-api.md), field names as the contract has them."""
from __future__ import annotations

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates

from ...services import shares
from ..common import NOT_BLANK, JsonBoolean, ListAnswer, ProjectsDateTime, settings


class Strict(Schema):
    class Meta:
        unknown = EXCLUDE


def _not_blank(value: str) -> None:
    if not value.strip():
        raise ValidationError("Must not be blank")


class ProjectCreate(Strict):
    name = fields.String(required=True, validate=[_not_blank, validate.Length(max=100, error="At most 100 characters")],
                         metadata={"example": "My New Project", "pattern": NOT_BLANK},  # not blank
                         error_messages={"required": "Project name is required", "null": "Project name is required",
                                         "invalid": "Must be a string"})
    description = fields.String(load_default="", validate=validate.Length(max=2000, error="At most 2000 characters"),
                                error_messages={"invalid": "Must be a string"})
    os = fields.String(load_default=None, metadata={"example": "windows11", "description": "Template key; windows11 by default"},
                       error_messages={"invalid": "Must be a string"})


class ProjectStopBody(Strict):
    force = JsonBoolean(load_default=False, error_messages={"invalid": "Must be true or false"})


class ProjectEmptyBody(Strict):
    pass


class SharedFolderUrl(fields.String):
    """The project's folder over HTTP/WebDAV (served at /shares); None when shares are disabled."""

    def serialize(self, attr, obj, accessor=None, **kwargs):
        return shares.url(settings(), obj.public_id)


class ProjectSummary(Schema):
    """A project (models.Project) as the list shows it."""
    id = fields.String(attribute="public_id", required=True)
    name = fields.String(required=True)
    status = fields.String(required=True)
    created_at = ProjectsDateTime(required=True)
    vm_ip = fields.String(allow_none=True)
    shared_folder_url = SharedFolderUrl(allow_none=True)


class ProjectList(ListAnswer):
    projects = fields.List(fields.Nested(ProjectSummary), required=True)


class ProjectCreated(Schema):
    project_id = fields.String(required=True)
    status = fields.String(required=True)
    estimated_time = fields.String(required=True)


class Collaborator(Schema):
    """A member (models.ProjectMember)."""
    user_id = fields.String(required=True)
    email = fields.String(allow_none=True)
    name = fields.String(allow_none=True)
    role = fields.String(required=True)
    joined_at = ProjectsDateTime()


class SharedFolder(Schema):
    url = fields.String(required=True, metadata={"example": "http://127.0.0.1:8080/shares/proj_0123456789abcdef/"})
    username = fields.String(required=True, allow_none=True,
                             metadata={"description": "The project id (null for viewers: use your bearer token)"})
    password = fields.String(required=True, allow_none=True,
                             metadata={"description": "HTTP Basic password for this project's folder (editors and "
                                                      "the owner; it changes when an editor is removed)"})
    access = fields.String(required=True, metadata={"description": "read-write or read-only"})


class ProjectDetails(ProjectSummary):
    """A project as one member sees it (services.projects.MembersView)."""
    description = fields.String()
    os = fields.String()
    status_message = fields.String()
    network = fields.String(allow_none=True)
    role = fields.Function(lambda view: view.role.value if view.role else None, allow_none=True,
                           metadata={"type": "string", "description": "The caller's role in the project"})
    shared_folder = fields.Nested(SharedFolder, allow_none=True,
                                  metadata={"description": "The project's WebDAV folder and its credentials "
                                                           "(members only; null when shares are disabled)"})
    collaborators = fields.List(fields.Nested(Collaborator), required=True)


class Done(Schema):
    success = fields.Boolean(required=True)
    message = fields.String()


class ProjectOperation(Done):
    project_id = fields.String()
    status = fields.String()


class ProjectScreen(Done):
    """POST /api/projects/{id}/connect: a link to the project VM's screen (services.projects.Screen)."""
    project_id = fields.String(required=True)
    connection_url = fields.String(attribute="url", required=True,
                                   metadata={"description": "Signs the browser into Guacamole with the VM's connection: "
                                                            "open it once, before expires_at"})
    expires_at = ProjectsDateTime(required=True)
    protocol = fields.String(required=True, metadata={"example": "vnc"})
    read_only = fields.Boolean(required=True, metadata={"description": "View only: the member's role may not operate "
                                                                       "the VM (viewers)"})


class Invite(Strict):
    email = fields.Email(required=True, error_messages={"required": "Email is required", "invalid": "Not a valid email address"},
                         metadata={"pattern": r"@[^@]+\.[^@.]+$"})  # fields.Email wants a dotted domain
    role = fields.String(required=True, validate=validate.OneOf(["editor", "viewer"], error="Must be editor or viewer"),
                         error_messages={"required": "Role is required"})

    @validates("email")
    def _length(self, value, **_):
        if len(value) > 320:
            raise ValidationError("At most 320 characters")


class Invited(Schema):
    success = fields.Boolean(required=True)
    invitation_id = fields.String(required=True)
    status = fields.String(required=True)


class CollaboratorList(ListAnswer):
    collaborators = fields.List(fields.Nested(Collaborator), required=True)


class InvitationOut(Schema):
    """An invitation (models.Invitation)."""
    id = fields.String(attribute="public_id", required=True)
    project_id = fields.String(attribute="project.public_id", required=True)
    project_name = fields.String(attribute="project.name")
    role = fields.String(required=True)
    invited_by = fields.String()
    status = fields.String(required=True)
    created_at = ProjectsDateTime()


class InvitationList(ListAnswer):
    invitations = fields.List(fields.Nested(InvitationOut), required=True)


class InvitationAnswer(Schema):
    success = fields.Boolean(required=True)
    invitation_id = fields.String(required=True)
    status = fields.String(required=True)
    project_id = fields.String(required=True)


class ErrorBody(Schema):
    code = fields.String(required=True)
    message = fields.String(required=True)
    details = fields.Dict()


class ProjectError(Schema):
    error = fields.Nested(ErrorBody, required=True)
