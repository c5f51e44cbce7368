"""The projects API's AI chat, user settings and usage (projects-api.md): /api/chat, /api/user."""
from __future__ import annotations

from flask import g
from flask.views import MethodView
from marshmallow import EXCLUDE, Schema, fields, validate

from ...services import conversations as service
from ..common import NOT_BLANK, ListAnswer, settings
from ..envelope import ProjectsApiBlueprint
from ..projects.resources import with_errors
from ..projects.schemas import ProjectError  # noqa: F401  (documented error shape)

blp = ProjectsApiBlueprint("chat", __name__, url_prefix="/api",
                          description="AI chat in a project, user settings and usage.")


class Strict(Schema):
    class Meta:
        unknown = EXCLUDE


class ChatSend(Strict):
    project_id = fields.String(required=True, error_messages={"required": "project_id is required"})
    message = fields.String(required=True, error_messages={"required": "message is required"},
                            metadata={"pattern": NOT_BLANK, "maxLength": service.MAX_MESSAGE_CHARS})  # as send() checks it
    model = fields.String(load_default=None, metadata={"example": "openai/gpt-4"})
    parameters = fields.Dict(load_default=None, metadata={"example": {"temperature": 0.7, "max_tokens": 2000}})


class ChatAnswer(Schema):
    """Dumps {"answer": the stored ChatMessage, "result": the model's ChatResult}."""
    message_id = fields.String(attribute="answer.public_id", required=True)
    response = fields.String(attribute="answer.content", required=True)
    model = fields.String(attribute="answer.model", required=True)
    tokens_used = fields.Integer(attribute="result.total_tokens", required=True)
    cost = fields.Float(attribute="result.cost", required=True)


class History(ListAnswer):
    messages = fields.List(fields.Nested(service.MessageSchema), required=True)


class HistoryQuery(Strict):
    limit = fields.Integer(load_default=200, validate=validate.Range(1, 1000, error="Must be between 1 and 1000"))
    before = fields.String(load_default=None, metadata={"description": "Only messages older than this message id"})


class UserSettingsOut(Schema):
    user_id = fields.String(required=True)
    preferred_model = fields.String(required=True)
    model_parameters = fields.Dict(required=True)
    custom_models = fields.List(fields.String(), required=True)
    api_keys = fields.List(fields.String(), metadata={"description": "Providers with a key of your own (keys are never shown)"})


class UserSettingsIn(Strict):
    preferred_model = fields.String()
    model_parameters = fields.Dict()
    custom_models = fields.List(fields.String())
    api_keys = fields.Dict(keys=fields.String(), values=fields.String(),
                           metadata={"description": "provider → your own key (write-only; empty removes it)"})


class SettingsUpdated(Schema):
    success = fields.Boolean(required=True)
    settings = fields.Nested(UserSettingsOut, required=True)


class UsageQuery(Strict):
    period = fields.String(load_default="last_30_days",
                           validate=validate.OneOf(list(service.PERIODS), error="Must be one of " + ", ".join(service.PERIODS)))


class ModelUsage(Schema):
    tokens = fields.Integer()
    cost = fields.Float()
    requests = fields.Integer()


class DayUsage(ModelUsage):
    date = fields.String(required=True, metadata={"example": "2026-12-05", "description": "a UTC day"})
    by_model = fields.Dict(keys=fields.String(), values=fields.Nested(ModelUsage), required=True)


class Usage(Schema):
    total_tokens = fields.Integer(required=True)
    total_cost = fields.Float(required=True)
    by_model = fields.Dict(keys=fields.String(), values=fields.Nested(ModelUsage), required=True)
    period = fields.String(required=True)
    by_day = fields.List(fields.Nested(DayUsage), metadata={
        "description": "Beyond the contract: the same figures per UTC day with usage, oldest first"})


@blp.route("/chat")
class Chat(MethodView):
    @blp.arguments(ChatSend)
    @blp.response(200, ChatAnswer)
    @with_errors(400, 401, 403, 404, 503)
    def post(self, body):
        """Send a message to the project's AI model (owner or editor); everyone in the project sees it."""
        answer, result = service.send(settings(), g.identity, body["project_id"], body["message"], body["model"],
                                      body["parameters"])
        return {"answer": answer, "result": result}


@blp.route("/chat/<project_id>/history")
class ChatHistory(MethodView):
    @blp.arguments(HistoryQuery, location="query")
    @blp.response(200, History)
    @with_errors(400, 401, 404)
    def get(self, query, project_id):
        """The project's chat, oldest first (any member)."""
        messages = service.history(g.identity, project_id, query["limit"], query["before"])
        return {"messages": messages}


@blp.route("/user/settings")
class Settings(MethodView):
    @blp.response(200, UserSettingsOut)
    @with_errors(401)
    def get(self):
        """Your chat settings (defaults until you change them)."""
        return service.user_settings(settings(), g.identity)

    @blp.arguments(UserSettingsIn, required=False)  # every field is optional: no body changes nothing
    @blp.response(200, SettingsUpdated)
    @with_errors(400, 401)
    def put(self, body):
        """Change your preferred model, its parameters, custom models, and your own provider keys."""
        updated = service.update_settings(settings(), g.identity, body)
        return {"success": True, "settings": updated}


@blp.route("/user/usage")
class UsageView(MethodView):
    @blp.arguments(UsageQuery, location="query")
    @blp.response(200, Usage)
    @with_errors(400, 401)
    def get(self, query):
        """Your model usage: tokens, cost and requests per model over a period (last 30 days by default)."""
        return service.usage(g.identity, query["period"])
