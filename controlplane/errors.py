"""Domain errors. Services raise them; each API's error handler renders its own envelope.

`code` is the desktop contract's error code; the projects API maps the status to its own codes
(api/errors.py, PROJECT_CODES).
"""
from __future__ import annotations


class ApiError(Exception):
    status = 500
    code = "INTERNAL_SERVER_ERROR"
    default_message = "Unexpected server error"

    def __init__(self, message: str | None = None, details: dict | None = None):
        super().__init__(message or self.default_message)
        self.message = message or self.default_message
        self.details = details


class ValidationFailed(ApiError):
    status, code = 400, "VALIDATION_ERROR"
    default_message = "Invalid request parameters"


class InvalidOperation(ApiError):
    status, code = 400, "INVALID_OPERATION"


class DesktopNotReady(ApiError):
    status, code = 400, "DESKTOP_NOT_READY"


class Unauthorized(ApiError):
    status, code = 401, "UNAUTHORIZED"
    default_message = "Missing or invalid bearer token"


class Forbidden(ApiError):
    status, code = 403, "FORBIDDEN"
    default_message = "You may only access your own desktops"


class NotFound(ApiError):
    status, code = 404, "NOT_FOUND"
    default_message = "Resource not found"


class DesktopNotFound(NotFound):
    code = "DESKTOP_NOT_FOUND"

    def __init__(self, desktop_id=None, message: str | None = None):
        super().__init__(message or f"Desktop with ID {desktop_id} not found")


class MethodNotAllowed(ApiError):
    status, code = 405, "METHOD_NOT_ALLOWED"
    default_message = "Method not allowed"


class DesktopAlreadyExists(ApiError):
    status, code = 409, "DESKTOP_ALREADY_EXISTS"
    default_message = "User already has an active desktop"


class PayloadTooLarge(ApiError):
    status, code = 413, "PAYLOAD_TOO_LARGE"
    default_message = "Request body is too large"


class ProvisioningFailed(ApiError):
    status, code = 500, "PROVISIONING_FAILED"


class InfrastructureError(ApiError):
    status, code = 500, "INFRASTRUCTURE_ERROR"
    default_message = "Proxmox or Guacamole communication error"
