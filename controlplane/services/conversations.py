"""A project's AI chat, the users' chat settings and their usage (projects-api.md).

The model call itself is services/chat.py (litellm). Here: who may chat, which model and
parameters apply (request, else the user's settings, else the server's default), the history
sent as context, what is stored (every message, including a user's message whose answer failed),
what is recorded for usage, and what is announced to the project's room.
"""
from __future__ import annotations

import datetime as dt
import json
import logging

from marshmallow import Schema, fields, post_dump

from ..config import Settings
from ..errors import ChatFailed, ValidationFailed
from ..extensions import db
from ..models import ChatMessage, Project, UsageRecord, UserSettings, utcnow
from ..timestamps import utc_z
from . import chat
from .identity import Identity
from .projects import Action, access, lifecycle_notify

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 32_000
CONTEXT_MESSAGES = 20
DEFAULT_PARAMETERS = {"temperature": 0.7, "max_tokens": 2000}
PERIODS = {"last_24_hours": dt.timedelta(hours=24), "last_7_days": dt.timedelta(days=7),
           "last_30_days": dt.timedelta(days=30), "last_90_days": dt.timedelta(days=90), "all_time": None}


def _chat_failed(error: chat.ChatError, message_id: str | None) -> ChatFailed:
    """A provider error for the projects API, which picks INVALID_REQUEST, RATE_LIMIT_EXCEEDED or
    SERVICE_UNAVAILABLE and the status by its kind."""
    details = dict(error.details)
    if message_id:
        details["message_id"] = message_id  # the user's message was saved
    return ChatFailed(error.message, details, error.kind, error.details.get("key_source"))


# ---- settings ------------------------------------------------------------------------------------------

def _settings_row(user_id: str) -> UserSettings | None:
    return UserSettings.get_or_none(UserSettings.user_id == user_id)


def user_settings(settings: Settings, identity: Identity) -> dict:
    row = _settings_row(identity.user_id)
    parameters = json.loads(row.model_parameters) if row else {}
    return {
        "user_id": identity.user_id,
        "preferred_model": (row.preferred_model if row and row.preferred_model else settings.llm_default_model),
        "model_parameters": {**DEFAULT_PARAMETERS, **parameters},
        "custom_models": json.loads(row.custom_models) if row else [],
        "api_keys": sorted(json.loads(row.api_keys)) if row else [],  # providers with a key of the user's own
    }


# Complexity above 15 (C901): one check per user setting of the contract.
def update_settings(settings: Settings, identity: Identity, changes: dict) -> dict:  # noqa: C901
    errors: dict = {}
    existing = _settings_row(identity.user_id)
    row = existing or UserSettings(user_id=identity.user_id)
    keys = json.loads(row.api_keys or "{}")
    if "preferred_model" in changes:
        try:
            chat.parse_model(changes["preferred_model"])
        except chat.ChatError as exc:
            errors["preferred_model"] = exc.message
    if "model_parameters" in changes:
        try:
            model = changes.get("preferred_model") or row.preferred_model
            changes["model_parameters"] = chat.validate_parameters(changes["model_parameters"], model)
        except chat.ChatError as exc:
            errors.update({f"model_parameters.{k}": v for k, v in exc.details.items()} or
                          {"model_parameters": exc.message})
    if "custom_models" in changes:
        for index, model in enumerate(changes["custom_models"]):
            try:
                chat.parse_model(model)
            except chat.ChatError as exc:
                errors[f"custom_models.{index}"] = exc.message
    if "api_keys" in changes:
        for provider, key in changes["api_keys"].items():
            if provider not in ("openai", "anthropic", "openrouter"):
                errors[f"api_keys.{provider}"] = "Keys can be stored for openai, anthropic and openrouter"
            elif key and not chat.user_keys_enabled(settings):
                errors[f"api_keys.{provider}"] = "This server does not store users' own keys"
            elif key:
                keys[provider] = chat.encrypt_user_key(settings, key)
            else:
                keys.pop(provider, None)  # an empty key removes it
    if errors:
        raise ValidationFailed("Invalid settings", details=errors)
    if "preferred_model" in changes:
        row.preferred_model = changes["preferred_model"]
    if "model_parameters" in changes:
        row.model_parameters = json.dumps(changes["model_parameters"])
    if "custom_models" in changes:
        row.custom_models = json.dumps(list(dict.fromkeys(changes["custom_models"])))
    row.api_keys = json.dumps(keys)
    row.updated_at = utcnow()
    row.save(force_insert=existing is None)
    return user_settings(settings, identity)


def _user_key(settings: Settings, user_id: str, provider: str) -> str | None:
    row = _settings_row(user_id)
    token = json.loads(row.api_keys).get(provider) if row else None
    return chat.decrypt_user_key(settings, token) if token else None


# ---- chat ----------------------------------------------------------------------------------------------

class MessageSchema(Schema):
    """A chat message as the projects API shows it, in the history and in `chat_message` events on
    /ws alike: an assistant's with its model and tokens, a user's with its author (and the error, if
    its answer failed)."""
    id = fields.String(attribute="public_id", required=True)
    role = fields.String(required=True)
    content = fields.String(required=True)
    timestamp = fields.Function(lambda message: utc_z(message.created_at), required=True,
                                metadata={"example": "2026-02-23T10:00:00Z"})
    model = fields.String(allow_none=True, metadata={"description": "assistant messages"})
    tokens = fields.Integer(allow_none=True, metadata={"description": "assistant messages"})
    user_id = fields.String(allow_none=True, metadata={"description": "user messages"})
    error = fields.String(metadata={"description": "a user message whose answer failed"})

    @post_dump(pass_original=True)
    def _by_role(self, data: dict, message: ChatMessage, **kwargs) -> dict:
        drop = ("user_id", "error") if message.role == "assistant" else ("model", "tokens")
        if message.role != "assistant" and not message.error:
            drop += ("error",)
        return {key: value for key, value in data.items() if key not in drop}


MESSAGE = MessageSchema()


def send(settings: Settings, identity: Identity, project_id: str, text: str, model: str | None,
         parameters: dict | None) -> tuple[ChatMessage, chat.ChatResult]:
    project, _ = access(identity, project_id, Action.CHAT)
    if not text.strip():
        raise ValidationFailed("Message is empty", details={"message": "Must not be blank"})
    if len(text) > MAX_MESSAGE_CHARS:
        raise ValidationFailed("Message is too long", details={"message": f"At most {MAX_MESSAGE_CHARS} characters"})
    preferences = user_settings(settings, identity)
    model = model or preferences["preferred_model"]
    try:
        provider, _ = chat.parse_model(model)
        user_key = _user_key(settings, identity.user_id, provider)
        chat.check_model(settings, model, user_key=bool(user_key))
        merged = {**preferences["model_parameters"], **(parameters or {})}
        merged = chat.validate_parameters(merged, model)
    except chat.ChatError as exc:
        details = exc.details if exc.kind == "invalid_parameters" else {"model": exc.message}
        if exc.kind == "invalid_parameters":
            details = {f"parameters.{k}": v for k, v in exc.details.items()}
        raise ValidationFailed(exc.message, details=details) from None

    context = [{"role": m.role, "content": m.content} for m in reversed(list(
        ChatMessage.select().where(ChatMessage.project == project.id, ChatMessage.error.is_null())
        .order_by(ChatMessage.id.desc()).limit(CONTEXT_MESSAGES)))]
    question = ChatMessage.create(project=project.id, user_id=identity.user_id, role="user", content=text,
                                  model=model)
    _announce(settings, project, question)
    try:
        result = chat.complete(settings, model, context + [{"role": "user", "content": text}], merged,
                               api_key=user_key)
    except chat.ChatError as exc:
        ChatMessage.update(error=exc.message).where(ChatMessage.id == question.id).execute()
        log.warning("chat in project %s: %s (%s)", project.public_id, exc.kind, exc.message)
        raise _chat_failed(exc, question.public_id) from None
    with db.atomic():
        answer = ChatMessage.create(project=project.id, role="assistant", content=result.content, model=model,
                                    tokens=result.total_tokens, cost=result.cost)
        UsageRecord.create(user_id=identity.user_id, project=project.id, model=model,
                           prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                           tokens=result.total_tokens, cost=result.cost)
    _announce(settings, project, answer)
    return answer, result


def _announce(settings: Settings, project: Project, message: ChatMessage) -> None:
    lifecycle_notify(settings, project, {"type": "chat_message", "project_id": project.public_id,
                                         "message": MESSAGE.dump(message)})


def history(identity: Identity, project_id: str, limit: int = 200, before: str | None = None) -> list[ChatMessage]:
    project, _ = access(identity, project_id, Action.READ_CHAT)
    query = ChatMessage.select().where(ChatMessage.project == project.id)
    if before:
        anchor = ChatMessage.get_or_none(ChatMessage.public_id == before, ChatMessage.project == project.id)
        if anchor is None:
            raise ValidationFailed("Unknown message id", details={"before": before})
        query = query.where(ChatMessage.id < anchor.id)
    return list(reversed(list(query.order_by(ChatMessage.id.desc()).limit(limit))))


# ---- usage ---------------------------------------------------------------------------------------------

def model_key(model: str) -> str:
    """The key of a model in usage's `by_model`: its own name, without the provider (and, through
    OpenRouter, the vendor) before it, as the contract's example has it ("gpt-4"): one key per
    model, whichever way it was called (openai/gpt-4, openrouter/openai/gpt-4)."""
    return model.rsplit("/", 1)[-1] or model


def usage(identity: Identity, period: str) -> dict:
    if period not in PERIODS:
        raise ValidationFailed("Unknown period", details={"period": "Must be one of " + ", ".join(PERIODS)})
    query = UsageRecord.select().where(UsageRecord.user_id == identity.user_id)
    if PERIODS[period] is not None:
        query = query.where(UsageRecord.created_at >= utcnow() - PERIODS[period])
    by_model: dict[str, dict] = {}
    by_day: dict[str, dict] = {}  # beyond the contract: the same per UTC day, for the portal's chart
    total_tokens, total_cost = 0, 0.0
    for record in query.order_by(UsageRecord.created_at):
        key = model_key(record.model)
        day = by_day.setdefault(record.created_at.date().isoformat(), {"tokens": 0, "cost": 0.0, "requests": 0,
                                                                         "by_model": {}})
        for entry in (by_model.setdefault(key, {"tokens": 0, "cost": 0.0, "requests": 0}), day,
                      day["by_model"].setdefault(key, {"tokens": 0, "cost": 0.0, "requests": 0})):
            entry["tokens"] += record.tokens
            entry["cost"] += record.cost
            entry["requests"] += 1
        total_tokens += record.tokens
        total_cost += record.cost
    for entry in [*by_model.values(), *by_day.values(), *(m for d in by_day.values() for m in d["by_model"].values())]:
        entry["cost"] = round(entry["cost"], 6)
    return {"total_tokens": total_tokens, "total_cost": round(total_cost, 6), "by_model": by_model, "period": period,
            "by_day": [{"date": date, **values} for date, values in by_day.items()]}
