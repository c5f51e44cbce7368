"""One error handler per API, each rendering its contract's envelope.

/api/v1/... (the Desktop API): {"success": false, "error", "message", "details"?, "path", "timestamp"}.
/api/... and /ws (the projects API): {"error": {"code", "message", "details"?}}.
Views never build error JSON: services and views raise controlplane.errors.DomainError subclasses,
which say nothing of HTTP; each one's status is decided here (STATUS, chat_status), and HTTP errors
from routing, webargs validation and Werkzeug are translated here too.
"""
from __future__ import annotations

import logging

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from .. import errors
from .common import now_iso

log = logging.getLogger(__name__)

# Validation messages per field, as the contract words them, keyed by the field's data key.
BODY_KEY = "body"


# Each domain error's HTTP status, by its code (the Desktop API's table; the projects API answers the
# same statuses with its own codes, PROJECT_CODES). Unknown codes are 500s.
STATUS = {"VALIDATION_ERROR": 400, "INVALID_OPERATION": 400, "DESKTOP_NOT_READY": 400, "UNAUTHORIZED": 401,
          "FORBIDDEN": 403, "NOT_FOUND": 404, "DESKTOP_NOT_FOUND": 404,
          "DESKTOP_ALREADY_EXISTS": 409, "POLICY_RUNNING": 409, "PAYLOAD_TOO_LARGE": 413,
          "RATE_LIMIT_EXCEEDED": 429, "PROVISIONING_FAILED": 500, "INFRASTRUCTURE_ERROR": 500,
          "SERVICE_UNAVAILABLE": 503}

# A model provider's failure (errors.ChatFailed), by its kind (services/chat.py KINDS): 400 for the
# request's own faults (a refused key of the user's own too), 429 for the provider's rate limit,
# 502/503/504 for the provider's failures.
CHAT_STATUS = {"invalid_model": 400, "invalid_parameters": 400, "auth": 502, "rate_limited": 429, "timeout": 504,
               "unavailable": 503, "bad_response": 502}


class HttpError(errors.DomainError):
    """An HTTP error Werkzeug raised that no domain error stands for (405, 406, 501...): its own status,
    and the headers it must carry (a 405's Allow)."""

    def __init__(self, message: str, status: int, code: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.headers = status, code, headers or {}


def headers_of(exc: errors.DomainError) -> dict[str, str]:
    """What the answer to `exc` carries besides its body: an HTTP error's own headers, a rate limit's
    wait (api/limits.py), and the model provider's wait after its rate limit (Retry-After)."""
    if isinstance(exc, HttpError):
        return exc.headers
    if isinstance(exc, errors.RateLimited) and exc.retry_after:
        return {"Retry-After": str(exc.retry_after)}
    if isinstance(exc, errors.ChatFailed) and exc.chat_kind == "rate_limited" and (exc.details or {}).get("retry_after"):
        return {"Retry-After": str(int(float(exc.details["retry_after"])) or 1)}
    return {}


def chat_status(kind: str, key_source: str | None = None) -> int:
    if kind == "auth" and key_source == "user":
        return 400
    return CHAT_STATUS[kind]


def status_of(exc: errors.DomainError) -> int:
    if isinstance(exc, HttpError):
        return exc.status
    if isinstance(exc, errors.ChatFailed):
        return chat_status(exc.chat_kind, exc.key_source)
    return STATUS.get(exc.code, 500)


# The projects contract's codes, by HTTP status (its table has no code for 405, 409 or 413: those
# are invalid requests too, with their own status).
PROJECT_CODES = {400: "INVALID_REQUEST", 401: "UNAUTHORIZED", 403: "FORBIDDEN", 404: "NOT_FOUND",
                 405: "INVALID_REQUEST", 409: "INVALID_REQUEST", 413: "INVALID_REQUEST", 415: "INVALID_REQUEST",
                 429: "RATE_LIMIT_EXCEEDED", 500: "INTERNAL_ERROR", 502: "SERVICE_UNAVAILABLE",
                 503: "SERVICE_UNAVAILABLE", 504: "SERVICE_UNAVAILABLE"}


def is_projects_api(path: str) -> bool:
    return (path.startswith("/api/") and not path.startswith("/api/v1/")) or path == "/ws"


def project_error_body(exc: errors.DomainError) -> dict:
    code = PROJECT_CODES.get(status_of(exc), "INTERNAL_ERROR")
    error = {"code": code, "message": exc.message}
    if exc.details:
        error["details"] = exc.details
    return {"error": error}


def render_error(exc: errors.DomainError):
    if is_projects_api(request.path):
        response = jsonify(project_error_body(exc))
    else:
        body = {"success": False, "error": exc.code, "message": exc.message}
        if exc.details:
            body["details"] = exc.details
        body["path"] = request.path
        body["timestamp"] = now_iso()
        response = jsonify(body)
    for name, value in headers_of(exc).items():
        response.headers[name] = value
    return response, status_of(exc)


def _flatten(messages) -> dict[str, str]:
    """webargs' {"json": {"userId": ["..."]}} -> {"userId": "..."}."""
    details: dict[str, str] = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for key, sub in value.items():
                key = str(key)
                if key == "_schema":
                    walk(prefix, sub)
                else:
                    walk(f"{prefix}.{key}" if prefix else key, sub)
        elif isinstance(value, (list, tuple)):
            texts = [v for v in value if isinstance(v, str)]
            if texts:
                details[prefix or BODY_KEY] = "; ".join(texts)
            for v in value:
                if not isinstance(v, str):
                    walk(prefix, v)
        elif value is not None:
            details[prefix or BODY_KEY] = str(value)

    for fields in (messages or {}).values():
        walk("", fields)
    return details


def _from_http(exc: HTTPException) -> errors.DomainError:
    data = getattr(exc, "data", None) or {}
    if exc.code in (400, 422) and "messages" in data:
        details = _flatten(data["messages"])
        if details.get(BODY_KEY) == "Invalid JSON body.":
            details[BODY_KEY] = "Request body is not valid JSON"
        elif details.get(BODY_KEY) == "Invalid input type.":
            details[BODY_KEY] = "Request body must be a JSON object"
        return errors.ValidationFailed(details=details)
    if exc.code == 400:
        return errors.ValidationFailed(details={BODY_KEY: exc.description or "Bad request"})
    if exc.code == 404:
        return errors.NotFound(f"No such endpoint: {request.method} {request.path}")
    if exc.code == 405:
        allowed = getattr(exc, "valid_methods", None)  # a 405 must say what is allowed (RFC 9110, 15.5.6)
        return HttpError(f"Method {request.method} is not allowed on {request.path}", 405, "METHOD_NOT_ALLOWED",
                         headers={"Allow": ", ".join(sorted(allowed))} if allowed else None)
    if exc.code == 413:
        return errors.PayloadTooLarge()
    if exc.code == 429:  # a 429 raised by Werkzeug (the limits raise RateLimited themselves)
        return errors.RateLimited(exc.description or None)
    if exc.code == 415:
        return errors.ValidationFailed(details={BODY_KEY: "Content-Type must be application/json"})
    return HttpError(exc.description or exc.name, exc.code or 500, (exc.name or "ERROR").upper().replace(" ", "_"))


def init_error_handlers(app: Flask) -> None:
    @app.errorhandler(errors.DomainError)
    def _domain(exc: errors.DomainError):
        return render_error(exc)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        return render_error(_from_http(exc))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return render_error(errors.DomainError())
