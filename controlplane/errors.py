"""Domain errors. Services raise them; they say what went wrong (a code from the contracts'
vocabulary, a message, details), never how HTTP answers it: each API's error handler maps a code to
its own envelope and status (api/errors.py, STATUS and PROJECT_CODES).
"""
from __future__ import annotations


class DomainError(Exception):
    code = "INTERNAL_SERVER_ERROR"
    default_message = "Unexpected server error"

    def __init__(self, message: str | None = None, details: dict | None = None):
        super().__init__(message or self.default_message)
        self.message = message or self.default_message
        self.details = details


class ValidationFailed(DomainError):
    code = "VALIDATION_ERROR"
    default_message = "Invalid request parameters"


class InvalidOperation(DomainError):
    code = "INVALID_OPERATION"


class DesktopNotReady(DomainError):
    code = "DESKTOP_NOT_READY"


class Unauthorized(DomainError):
    code = "UNAUTHORIZED"
    default_message = "Missing or invalid bearer token"


class Forbidden(DomainError):
    code = "FORBIDDEN"
    default_message = "You may only access your own desktops"


class NotFound(DomainError):
    code = "NOT_FOUND"
    default_message = "Resource not found"


class DesktopNotFound(NotFound):
    code = "DESKTOP_NOT_FOUND"

    def __init__(self, desktop_id=None, message: str | None = None):
        super().__init__(message or f"Desktop with ID {desktop_id} not found")


class DesktopAlreadyExists(DomainError):
    code = "DESKTOP_ALREADY_EXISTS"
    default_message = "User already has an active desktop"


class Busy(DomainError):
    """One at a time: another run of the same thing holds its lock (a policy pass, a drain)."""
    code = "POLICY_RUNNING"
    default_message = "This policy is already running"


class PayloadTooLarge(DomainError):
    code = "PAYLOAD_TOO_LARGE"
    default_message = "Request body is too large"


class RateLimited(DomainError):
    code = "RATE_LIMIT_EXCEEDED"
    default_message = "Too many requests"

    def __init__(self, message: str | None = None, details: dict | None = None, retry_after: int | None = None):
        super().__init__(message, details)
        self.retry_after = retry_after  # seconds until the limit's window ends


class ProvisioningFailed(DomainError):
    code = "PROVISIONING_FAILED"


class InfrastructureError(DomainError):
    """Proxmox, Guacamole or our own queue could not do it now (the desktop contract's code)."""
    code = "INFRASTRUCTURE_ERROR"
    default_message = "Proxmox or Guacamole communication error"


class Unavailable(DomainError):
    """The same for the projects API, whose contract calls it SERVICE_UNAVAILABLE."""
    code = "SERVICE_UNAVAILABLE"
    default_message = "Service temporarily unavailable"


class ChatFailed(DomainError):
    """A model provider's failure (services/chat.py ChatError): `chat_kind` says which, and
    `key_source` whose key it was; the projects API picks the status."""
    code = "CHAT_FAILED"

    def __init__(self, message: str, details: dict | None, chat_kind: str, key_source: str | None = None):
        super().__init__(message, details)
        self.chat_kind, self.key_source = chat_kind, key_source
