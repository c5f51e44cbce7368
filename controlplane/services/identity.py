"""Who is asking: the caller of an API request or a WebSocket, as the token proved it (auth.py
makes it; every service that decides what a caller may see or do takes it)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Identity:
    user_id: str
    is_admin: bool = False
    email: str | None = None  # verified (the token's email_verified is true), else None: it proves who the caller is
    name: str | None = None
    email_unverified: bool = False  # the token carried an email its identity provider had not verified
