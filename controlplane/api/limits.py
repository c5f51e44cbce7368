"""Rate limits (Flask-Limiter on the control plane's Redis), as both contracts state them:

- every API request: CONTROLPLANE_RATE_LIMIT_API per user (100/minute);
- desktop creation: CONTROLPLANE_RATE_LIMIT_DESKTOP_CREATE per user (5/hour), counting desktops
  actually created (201), not refused attempts;
- project creation: CONTROLPLANE_RATE_LIMIT_PROJECT_CREATE per user (5/hour), likewise;
- chat messages: CONTROLPLANE_RATE_LIMIT_CHAT per project (20/minute).

Answers carry X-RateLimit-Limit, X-RateLimit-Remaining and X-RateLimit-Reset; a 429 is rendered in
the API's own envelope (RATE_LIMIT_EXCEEDED, rendered by api/errors.py) with Retry-After. One
Limiter per app. If Redis is down, limits are skipped rather than failing requests.
"""
from __future__ import annotations

from flask import Flask, g, request
from flask_limiter import Limiter

from ..config import Settings
from ..errors import ApiError

LIMITED_PREFIXES = ("/api/v1/desktops", "/api/projects", "/api/chat", "/api/user", "/api/invitations")


class RateLimited(ApiError):
    status, code, kind = 429, "RATE_LIMIT_EXCEEDED", "rate_limited"
    default_message = "Too many requests"


def _caller(settings: Settings):
    def key() -> str:
        cached = g.get("rate_limit_key")
        if cached:
            return cached
        try:
            claims = g.get("verified_claims")  # the view's auth verified the token already
            if not claims:
                from ..auth import verified_claims
                claims = g.verified_claims = verified_claims()
            user = claims.get(settings.jwt_user_claim)
        except Exception:  # a bad token is refused by the view itself; count it by address
            user = None
        g.rate_limit_key = f"user:{user}" if user else f"addr:{request.remote_addr}"
        return g.rate_limit_key
    return key


def _project_of_message() -> str:
    body = request.get_json(silent=True)
    project = body.get("project_id") if isinstance(body, dict) else None
    return f"project:{project}" if isinstance(project, str) else f"addr:{request.remote_addr}"


def storage_uri(redis_url: str) -> str:
    return "redis+unix://" + redis_url[len("unix://"):] if redis_url.startswith("unix://") else redis_url


def init_limits(app: Flask, settings: Settings) -> Limiter | None:
    if not settings.rate_limits:
        return None
    caller = _caller(settings)

    limiter = Limiter(key_func=caller, app=app, storage_uri=storage_uri(settings.redis_url), headers_enabled=True,
                      strategy="fixed-window", swallow_errors=True, key_prefix="controlplane:ratelimit")
    # One budget per user across every endpoint of both APIs (a limit shared by scope "api").
    api_budget = limiter.shared_limit(settings.rate_limit_api, scope="api", key_func=caller)
    for rule in list(app.url_map.iter_rules()):
        if rule.rule.startswith(LIMITED_PREFIXES) and rule.endpoint in app.view_functions:
            app.view_functions[rule.endpoint] = api_budget(app.view_functions[rule.endpoint])
    def created(response) -> bool:  # a replayed idempotent create made nothing: it does not count
        return response.status_code == 201 and not g.get("idempotent_replay", False)
    rules = (
        ("desktops.Desktops", settings.rate_limit_desktop_create, caller, ["POST"], created),
        ("projects.Projects", settings.rate_limit_project_create, caller, ["POST"], created),
        ("chat.Chat", settings.rate_limit_chat, _project_of_message, ["POST"], None),
    )
    for endpoint, limit, key, methods, deduct in rules:
        view = app.view_functions[endpoint]
        app.view_functions[endpoint] = limiter.limit(limit, key_func=key, methods=methods, deduct_when=deduct,
                                                     override_defaults=False, scope=endpoint)(view)
    return limiter
