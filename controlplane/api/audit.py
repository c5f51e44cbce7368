"""Request ids and the audit log.

Every request gets an id: the caller's `X-Request-ID` when it is a sensible one (1 to 128 of
letters, digits and . _ : @ -), else a new one; the answer carries it back in `X-Request-ID`.
Every request under /api that asks for a change (POST, PUT, PATCH, DELETE) is recorded, whatever
came of it: who (the token's user, or none), what (the endpoint), on what (the desktop, project,
node, ...), the HTTP status and the result (ok, or the error code), and the request id, which
also keys idempotent desktop creates. Admins read it at GET /api/v1/admin/audit.
"""
from __future__ import annotations

import logging
import re
import uuid

from flask import Flask, g, request

from .. import logs
from ..extensions import db
from ..models import AuditEntry

log = logging.getLogger(__name__)

REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")
CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
TARGETS = (("desktop_id", "desktop"), ("project_id", "project"), ("invitation_id", "invitation"),
           ("node", "node"), ("name", "policy"))


def caller_request_id() -> str | None:
    """The X-Request-ID the caller sent, if it is a usable one (an idempotency key)."""
    return g.get("request_id") if g.get("request_id_given") else None


def _target(response) -> str:
    args = request.view_args or {}
    parts = [f"{label} {args[key]}" for key, label in TARGETS if key in args]
    if "user_id" in args and "project_id" in args:
        parts.append(f"user {args['user_id']}")
    if not parts and response.status_code == 201 and response.is_json:
        body = response.get_json(silent=True) or {}
        data = body.get("data") if isinstance(body.get("data"), dict) else {}
        if "id" in data and request.path.startswith("/api/v1/desktops"):
            parts.append(f"desktop {data['id']}")
        elif "project_id" in body:
            parts.append(f"project {body['project_id']}")
        elif "invitation_id" in body:
            parts.append(f"invitation {body['invitation_id']}")
    return ", ".join(parts)[:255]


def _result(response) -> str:
    if response.status_code < 400:
        return "ok"
    body = response.get_json(silent=True) if response.is_json else None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, str):
            return error[:64]
        if isinstance(error, dict) and isinstance(error.get("code"), str):
            return error["code"][:64]
    return f"HTTP {response.status_code}"


def _text(value: str | None) -> str | None:
    """What a text column can hold: a NUL (refused by PostgreSQL) is written as \\x00."""
    return None if value is None else value.replace("\x00", "\\x00")


def init_audit(app: Flask) -> None:
    @app.before_request
    def _request_id():
        given = request.headers.get("X-Request-ID", "")
        g.request_id_given = bool(REQUEST_ID.match(given))
        g.request_id = given if g.request_id_given else uuid.uuid4().hex
        g.log_context = logs.enter(request_id=g.request_id)  # every record of this request carries it

    @app.teardown_request
    def _end_log_context(_exc):
        token = g.pop("log_context", None)
        if token is not None:
            try:
                logs.leave(token)
            except ValueError:  # made in another context (a test client's, say): nothing of ours to undo
                pass

    @app.after_request
    def _record(response):
        request_id = g.get("request_id") or uuid.uuid4().hex
        response.headers["X-Request-ID"] = request_id
        if request.method in CHANGES and request.path.startswith("/api/"):
            identity = g.get("identity")
            try:
                with db.connection_context():
                    AuditEntry.create(request_id=request_id, user_id=_text(getattr(identity, "user_id", None)),
                                      is_admin=bool(getattr(identity, "is_admin", False)), method=request.method,
                                      path=_text(request.path)[:512], action=(request.endpoint or "unknown")[:64],
                                      target=_text(_target(response)), status=response.status_code,
                                      result=_result(response))
            except Exception:  # the audit must never turn an answer into an error; it is logged
                log.exception("could not record the audit entry of request %s", request_id)
        return response
