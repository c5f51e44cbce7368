"""One error handler per API, each rendering its contract's envelope.

/api/v1/... (the Desktop API): {"success": false, "error", "message", "details"?, "path", "timestamp"}.
/api/... and /ws (the projects API): {"error": {"code", "message", "details"?}}.
Views never build error JSON: they raise controlplane.errors.ApiError subclasses, and HTTP errors
from routing, webargs validation and Werkzeug are translated here.
"""
from __future__ import annotations

import logging

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from .. import errors
from .common import now_iso
from .limits import RateLimited

log = logging.getLogger(__name__)

# Validation messages per field, as the contract words them, keyed by the field's data key.
BODY_KEY = "body"


# The projects contract's codes, by HTTP status (its table has no code for 405, 409 or 413: those
# are invalid requests too, with their own status).
PROJECT_CODES = {400: "INVALID_REQUEST", 401: "UNAUTHORIZED", 403: "FORBIDDEN", 404: "NOT_FOUND",
                 405: "INVALID_REQUEST", 409: "INVALID_REQUEST", 413: "INVALID_REQUEST", 415: "INVALID_REQUEST",
                 429: "RATE_LIMIT_EXCEEDED", 500: "INTERNAL_ERROR", 502: "SERVICE_UNAVAILABLE",
                 503: "SERVICE_UNAVAILABLE", 504: "SERVICE_UNAVAILABLE"}


def is_projects_api(path: str) -> bool:
    return (path.startswith("/api/") and not path.startswith("/api/v1/")) or path == "/ws"


def project_error_body(exc: errors.ApiError) -> dict:
    code = PROJECT_CODES.get(exc.status, "INTERNAL_ERROR")
    error = {"code": code, "message": exc.message}
    if exc.details:
        error["details"] = exc.details
    return {"error": error}


def render_error(exc: errors.ApiError):
    if is_projects_api(request.path):
        response = jsonify(project_error_body(exc))
    else:
        body = {"success": False, "error": exc.code, "message": exc.message}
        if exc.details:
            body["details"] = exc.details
        body["path"] = request.path
        body["timestamp"] = now_iso()
        response = jsonify(body)
    for name, value in (getattr(exc, "headers", None) or {}).items():
        response.headers[name] = value
    return response, exc.status


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


def _from_http(exc: HTTPException) -> errors.ApiError:
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
        error = errors.MethodNotAllowed(f"Method {request.method} is not allowed on {request.path}")
        if getattr(exc, "valid_methods", None):  # a 405 must say what is allowed (RFC 9110, 15.5.6)
            error.headers = {"Allow": ", ".join(sorted(exc.valid_methods))}
        return error
    if exc.code == 413:
        return errors.PayloadTooLarge()
    if exc.code == 429:  # Flask-Limiter's RateLimitExceeded: its description is the limit
        return RateLimited(f"Rate limit exceeded: {exc.description}", details={"limit": str(exc.description)})
    if exc.code == 415:
        return errors.ValidationFailed(details={BODY_KEY: "Content-Type must be application/json"})
    generic = errors.ApiError(exc.description or exc.name)
    generic.status, generic.code = exc.code or 500, (exc.name or "ERROR").upper().replace(" ", "_")
    return generic


def init_error_handlers(app: Flask) -> None:
    @app.errorhandler(errors.ApiError)
    def _domain(exc: errors.ApiError):
        return render_error(exc)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        return render_error(_from_http(exc))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return render_error(errors.ApiError())
