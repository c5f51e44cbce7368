"""Logging with secrets redacted and user text defused: any configured secret value is replaced before a
record is written, and control characters in a message (a request path's %0a, an id's CR) are written as
escapes, so nobody can forge a log line or a terminal sequence through text we log."""
from __future__ import annotations

import logging
import re

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


def configure_logging(settings: Settings, level: int = logging.INFO) -> None:
    root = logging.getLogger()
    if not any(isinstance(h, logging.StreamHandler) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level)
    for handler in root.handlers:
        for f in [f for f in handler.filters if isinstance(f, RedactSecrets)]:
            handler.removeFilter(f)
        handler.addFilter(RedactSecrets(settings.secrets()))
