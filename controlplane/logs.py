"""Logging with secrets redacted and user text defused: any configured secret value is replaced before a
record is written, and control characters in a message (a request path's %0a, an id's CR) are written as
escapes, so nobody can forge a log line or a terminal sequence through text we log."""
from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import re
from typing import Iterator

from .config import Settings

REDACTED = "********"


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def defuse(text: str) -> str:
    """`text` with every control character (newlines included), line separator and lone surrogate
    written as a \\xNN / \\uNNNN escape: one record stays one line."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}",
                        text)


class RedactSecrets(logging.Filter):
    """Redacts the configured secrets and defuses control characters in every record it passes."""

    def __init__(self, secrets: list[str]):
        super().__init__()
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # arguments that do not fit the format: logging reports it when it formats
            return True
        cleaned = defuse(redact(message, self.secrets) if self.secrets else message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        if self.secrets:
            if record.exc_info and not record.exc_text:
                record.exc_text = _formatter.formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = redact(record.exc_text, self.secrets)
            if record.stack_info:
                record.stack_info = redact(record.stack_info, self.secrets)
        return True


_formatter = logging.Formatter()


def redact(text: str, secrets, marker: str = REDACTED) -> str:
    """`text` with every one of `secrets` replaced by `marker` (the one redactor: logs, playbook
    output, and the chat's provider messages, services/chat.py)."""
    for secret in sorted(secrets, key=len, reverse=True):  # a secret containing another one: longest first
        if secret and secret in text:
            text = text.replace(secret, marker)
    return text


# ---- the request id: one id for a request and everything it caused ---------------------------------

# The id of the API request being served, or of the request whose job a worker runs (its meta's
# request_id): every record logged meanwhile carries it, so one id finds a create's request, its job,
# its playbook run and its task events.
_context: contextvars.ContextVar[dict | None] = contextvars.ContextVar("controlplane_log_context", default=None)


def _values() -> dict:
    return _context.get() or {}


@contextlib.contextmanager
def context(**values) -> Iterator[None]:
    """Records logged inside carry these values (request_id, job_id); None values are left out."""
    token = _context.set({**_values(), **{k: v for k, v in values.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def enter(**values) -> contextvars.Token:
    """As context(), until leave(token): for a context that opens and closes in two places (an API
    request: before_request and teardown_request)."""
    return _context.set({**_values(), **{k: v for k, v in values.items() if v is not None}})


def leave(token: contextvars.Token) -> None:
    _context.reset(token)


def current_context() -> dict:
    return dict(_values())


class AddContext(logging.Filter):
    """Puts the current context's values on every record (record.request_id, record.job_id)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _values().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class JsonLines(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, the context's values
    (request_id, job_id) and the exception, if any. It reads what RedactSecrets left: the message and the
    exception text with secrets redacted."""

    FIELDS = ("request_id", "job_id")

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
                 "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        for key in self.FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, ensure_ascii=False, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(settings: Settings, level: int = logging.INFO) -> None:
    """The root logger writes to stderr (a handler of ours, unless the process has one already: a test
    runner's), as text or JSON lines (`log_format`), with the context's values and secrets redacted."""
    root = logging.getLogger()
    if not any(isinstance(h, logging.StreamHandler) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.controlplane = True
        root.addHandler(handler)
    root.setLevel(level)
    for handler in root.handlers:
        if getattr(handler, "controlplane", False):
            handler.setFormatter(JsonLines() if settings.log_format == "json" else logging.Formatter(TEXT_FORMAT))
        for f in [f for f in handler.filters if isinstance(f, (RedactSecrets, AddContext))]:
            handler.removeFilter(f)
        handler.addFilter(AddContext())
        handler.addFilter(RedactSecrets(settings.secrets()))
