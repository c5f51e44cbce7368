"""The projects API (projects-api.md): projects, collaborators and invitations under /api.

Views are thin: they validate, call services.projects and return what it gives; the response schemas
(schemas.py) dump it. The blueprint (api/envelope.py) authenticates; errors are rendered by
api/errors.py in the contract's {"error": {code, message, details}} form.
"""
from __future__ import annotations

from flask import g, url_for
from flask.views import MethodView

from ...services import projects as service
from ...states import Operation
from ..common import settings
from ..envelope import ProjectsApiBlueprint
from . import schemas

blp = ProjectsApiBlueprint("projects", __name__, url_prefix="/api",
                           description="Projects: a team's VM on its own network, collaborators and invitations.")

ERRORS = {400: "INVALID_REQUEST", 401: "UNAUTHORIZED", 403: "FORBIDDEN (a role that does not allow it)",
          404: "NOT_FOUND (no such project, or not a member)", 503: "SERVICE_UNAVAILABLE"}


def with_errors(*codes):
    def wrap(fn):
        for code in codes:
            fn = blp.alt_response(code, schema=schemas.ProjectError, description=ERRORS.get(code, ""))(fn)
        return fn
    return wrap


@blp.route("/projects")
class Projects(MethodView):
    @blp.response(200, schemas.ProjectList)
    @with_errors(401)
    def get(self):
        """The projects the caller is a member of."""
        return {"projects": service.list_for(g.identity)}

    @blp.arguments(schemas.ProjectCreate)
    @blp.response(201, schemas.ProjectCreated)
    @with_errors(400, 401, 503)
    def post(self, body):
        """Create a project: its VM (from the template of `os`), network and shared folder are
        provisioned in the background; watch `status` (or the WebSocket) for `running`."""
        cfg = settings()
        project = service.create(cfg, g.identity, body["name"].strip(), body["description"], body["os"])
        estimate = service.estimate_text(service.estimated_seconds(cfg))
        return {"project_id": project.public_id, "status": project.status, "estimated_time": estimate}, 201, {
            "Location": url_for("projects.ProjectItem", project_id=project.public_id)}


@blp.route("/projects/<project_id>")
class ProjectItem(MethodView):
    @blp.response(200, schemas.ProjectDetails)
    @with_errors(401, 404)
    def get(self, project_id):
        """A project's details and its collaborators. Members also get `shared_folder`: the URL
        of the project's WebDAV folder, and for editors and the owner its user name and password
        (viewers read it with their bearer token; the password changes when an editor is removed)."""
        return service.view_of(settings(), g.identity, project_id)

    @blp.response(200, schemas.Done)
    @with_errors(400, 401, 403, 404, 503)
    def delete(self, project_id):
        """Delete the project (owner): its VM, network, share, chat history and collaborators go."""
        service.request(settings(), g.identity, project_id, Operation.DELETE)
        return {"success": True, "message": "Project deleted successfully"}


@blp.route("/projects/<project_id>/start")
class ProjectStart(MethodView):
    @blp.arguments(schemas.ProjectEmptyBody, required=False)
    @blp.response(200, schemas.ProjectOperation)
    @with_errors(400, 401, 403, 404, 503)
    def post(self, _body, project_id):
        """Start the project's VM (owner or editor)."""
        project = service.request(settings(), g.identity, project_id, Operation.START)
        return {"success": True, "message": "Project starting", "project_id": project.public_id,
                "status": project.status}


@blp.route("/projects/<project_id>/stop")
class ProjectStop(MethodView):
    @blp.arguments(schemas.ProjectStopBody, required=False)
    @blp.response(200, schemas.ProjectOperation)
    @with_errors(400, 401, 403, 404, 503)
    def post(self, body, project_id):
        """Stop the project's VM (owner or editor); `force` powers it off at once."""
        project = service.request(settings(), g.identity, project_id, Operation.STOP,
                                  force=bool((body or {}).get("force", False)))
        return {"success": True, "message": "Project stopping", "project_id": project.public_id,
                "status": project.status}


@blp.route("/projects/<project_id>/connect")
class ProjectConnect(MethodView):
    @blp.arguments(schemas.ProjectEmptyBody, required=False)
    @blp.response(200, schemas.ProjectScreen)
    @with_errors(400, 401, 403, 404, 503)
    def post(self, _body, project_id):
        """A link to the project VM's screen in Guacamole, new on every call, single use and short-lived
        (like a desktop's /connect): the owner and editors get control of the VM, viewers a view-only
        connection. The project's other members see who opened it (a collaborator_activity event)."""
        screen = service.connect(settings(), g.identity, project_id)
        return {"success": True, "message": "Open connection_url before it expires", "project_id": screen.project.public_id,
                "url": screen.url, "expires_at": screen.expires_at, "protocol": screen.protocol,
                "read_only": screen.read_only}


@blp.route("/projects/<project_id>/collaborators")
class Collaborators(MethodView):
    @blp.response(200, schemas.CollaboratorList)
    @with_errors(401, 404)
    def get(self, project_id):
        """The project's members, owner first."""
        project, _ = service.access(g.identity, project_id, service.Action.READ)
        return {"collaborators": service.members(project)}

    @blp.arguments(schemas.Invite)
    @blp.response(201, schemas.Invited)
    @with_errors(400, 401, 403, 404)
    def post(self, body, project_id):
        """Invite someone by email as editor or viewer (owner). They accept when they sign in with
        that email: GET /api/invitations, POST /api/invitations/<id>/accept."""
        invitation = service.invite(settings(), g.identity, project_id, body["email"], body["role"])
        return {"success": True, "invitation_id": invitation.public_id, "status": invitation.status}


@blp.route("/projects/<project_id>/collaborators/<path:user_id>")
class CollaboratorItem(MethodView):
    @blp.response(200, schemas.Done)
    @with_errors(400, 401, 403, 404)
    def delete(self, project_id, user_id):
        """Remove a collaborator (owner), or leave the project (a collaborator removing themselves)."""
        service.remove_member(settings(), g.identity, project_id, user_id)
        return {"success": True, "message": "Collaborator removed"}


@blp.route("/invitations")
class Invitations(MethodView):
    @blp.response(200, schemas.InvitationList)
    @with_errors(401)
    def get(self):
        """Open invitations for the caller's email address, if the identity provider verified it."""
        return {"invitations": service.invitations_for(g.identity)}


@blp.route("/invitations/<invitation_id>/accept")
class InvitationAccept(MethodView):
    @blp.arguments(schemas.ProjectEmptyBody, required=False)
    @blp.response(200, schemas.InvitationAnswer)
    @with_errors(400, 401, 403, 404)
    def post(self, _body, invitation_id):
        """Accept an invitation: the caller joins the project with the invited role. Needs a token whose
        email is the invited one and verified (`email_verified`); else 403."""
        invitation = service.respond(settings(), g.identity, invitation_id, accept=True)
        return {"success": True, "invitation_id": invitation.public_id, "status": invitation.status,
                "project_id": invitation.project.public_id}


@blp.route("/invitations/<invitation_id>/decline")
class InvitationDecline(MethodView):
    @blp.arguments(schemas.ProjectEmptyBody, required=False)
    @blp.response(200, schemas.InvitationAnswer)
    @with_errors(400, 401, 403, 404)
    def post(self, _body, invitation_id):
        """Decline an invitation (with the invited email, verified; else 403)."""
        invitation = service.respond(settings(), g.identity, invitation_id, accept=False)
        return {"success": True, "invitation_id": invitation.public_id, "status": invitation.status,
                "project_id": invitation.project.public_id}
