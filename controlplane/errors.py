"""Domain errors. Services raise them; each API's error handler renders its own envelope.

`kind` is API-neutral (the projects API maps kinds to its own codes); `code` is the desktop
contract's error code.
"""
from __future__ import annotations


class ApiError(Exception):
    status = 500
    code = "INTERNAL_SERVER_ERROR"
    kind = "internal"
    default_message = "Unexpected server error"

    def __init__(self, message: str | None = None, details: dict | None = None):
        super().__init__(message or self.default_message)
        self.message = message or self.default_message
        self.details = details


class ValidationFailed(ApiError):
    status, code, kind = 400, "VALIDATION_ERROR", "validation"
    default_message = "Invalid request parameters"


class InvalidOperation(ApiError):
    status, code, kind = 400, "INVALID_OPERATION", "invalid_state"


class DesktopNotReady(ApiError):
    status, code, kind = 400, "DESKTOP_NOT_READY", "invalid_state"


class Unauthorized(ApiError):
    status, code, kind = 401, "UNAUTHORIZED", "unauthorized"
    default_message = "Missing or invalid bearer token"


class Forbidden(ApiError):
    status, code, kind = 403, "FORBIDDEN", "forbidden"
    default_message = "You may only access your own desktops"


class NotFound(ApiError):
    status, code, kind = 404, "NOT_FOUND", "not_found"
    default_message = "Resource not found"


class DesktopNotFound(NotFound):
    code = "DESKTOP_NOT_FOUND"

    def __init__(self, desktop_id=None, message: str | None = None):
        super().__init__(message or f"Desktop with ID {desktop_id} not found")


class MethodNotAllowed(ApiError):
    status, code, kind = 405, "METHOD_NOT_ALLOWED", "validation"
    default_message = "Method not allowed"


class DesktopAlreadyExists(ApiError):
    status, code, kind = 409, "DESKTOP_ALREADY_EXISTS", "conflict"
    default_message = "User already has an active desktop"


class PayloadTooLarge(ApiError):
    status, code, kind = 413, "PAYLOAD_TOO_LARGE", "validation"
    default_message = "Request body is too large"


class ProvisioningFailed(ApiError):
    status, code, kind = 500, "PROVISIONING_FAILED", "infrastructure"


class InfrastructureError(ApiError):
    status, code, kind = 500, "INFRASTRUCTURE_ERROR", "infrastructure"
    default_message = "Proxmox or Guacamole communication error"
