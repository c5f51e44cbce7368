"""Rate limits (Flask-Limiter on the control plane's Redis), as both contracts state them:

- every API request: CONTROLPLANE_RATE_LIMIT_API per user (100/minute);
- desktop creation: CONTROLPLANE_RATE_LIMIT_DESKTOP_CREATE per user (5/hour), counting desktops
  actually created (201), not refused attempts;
- project creation: CONTROLPLANE_RATE_LIMIT_PROJECT_CREATE per user (5/hour), likewise;
- chat messages: CONTROLPLANE_RATE_LIMIT_CHAT per project (20/minute).

Every limit is counted only for requests that are authenticated and allowed to do what they ask,
so nobody can spend someone else's budget: the limits are checked in the view, after the
blueprint's authentication; the per-user ones are keyed by the verified token's user, and skip a
request without one (it is refused with 401 anyway: no budget by address); the per-project chat
limit counts, and refuses, only members whose role may chat in that project (an outsider's 404s
or a viewer's 403s do not use up the owner's 20 a minute, nor learn that it is spent). Keys hold
no user text: a user is a SHA-256 digest of their id, a project its database id.

Answers carry X-RateLimit-Limit, X-RateLimit-Remaining and X-RateLimit-Reset; a 429 is rendered in
the API's own envelope (RATE_LIMIT_EXCEEDED, rendered by api/errors.py) with Retry-After. Only a
refusal says Retry-After: Flask-Limiter puts its window's reset there on every answer, and over an
answer's own Retry-After (a model provider's wait) when its window ends later; here an answer keeps
its own, and a success has none (_own_retry_after). One Limiter per app. If Redis is down, limits
are skipped rather than failing requests.
"""
from __future__ import annotations

import hashlib

from flask import Flask, Response, g, request
from flask_limiter import Limiter

from ..config import Settings
from ..services.projects import Action, access

LIMITED_PREFIXES = ("/api/v1/desktops", "/api/projects", "/api/chat", "/api/user", "/api/invitations")


def _user_key() -> str | None:
    """The caller's budget: a digest of the user id the blueprint's authentication verified
    (g.identity), or None for a request that has none."""
    cached = g.get("rate_limit_key")
    if cached:
        return cached
    identity = g.get("identity")
    user = getattr(identity, "user_id", None)
    if not isinstance(user, str) or not user:
        return None
    digest = hashlib.sha256(user.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    g.rate_limit_key = f"user:{digest}"
    return g.rate_limit_key


def _caller() -> str:
    return _user_key() or "anonymous"  # never used: such requests are exempt (_anonymous)


def _anonymous() -> bool:
    return _user_key() is None


def _chat_project() -> int | None:
    """The database id of the project this chat message is for, if the caller may chat in it
    (the same check as the chat itself: services/projects.access with Action.CHAT); else None."""
    if "chat_project" in g:
        return g.chat_project
    g.chat_project = None
    identity = g.get("identity")
    try:
        body = request.get_json(silent=True)
    except Exception:  # an unusable body is refused by the view
        body = None
    project_id = body.get("project_id") if isinstance(body, dict) else None
    if identity is None or not isinstance(project_id, str) or not project_id or len(project_id) > 40:
        return None  # (Project.public_id holds at most 40 characters: a longer id names no project)
    try:
        project, _ = access(identity, project_id, Action.CHAT)
    except Exception:  # not found (404), not allowed (403), or a failure the view will report
        return None
    g.chat_project = project.id
    return g.chat_project


def _project_of_message() -> str:
    return f"project:{_chat_project()}"


def _may_not_chat() -> bool:
    return _chat_project() is None


def storage_uri(redis_url: str) -> str:
    return "redis+unix://" + redis_url[len("unix://"):] if redis_url.startswith("unix://") else redis_url


def _note_retry_after(response: Response) -> Response:
    """Runs before Flask-Limiter's headers: the answer's own Retry-After, if it has one."""
    g.own_retry_after = response.headers.get("Retry-After")
    return response


def _own_retry_after(response: Response) -> Response:
    """Runs after Flask-Limiter's headers: the answer's own Retry-After back; none on an answer that had
    none, unless it is the limiter's own refusal (a 429 without one of its own)."""
    own = g.get("own_retry_after")
    if own is not None:
        response.headers["Retry-After"] = own
    elif response.status_code != 429:
        response.headers.pop("Retry-After", None)
    return response


def init_limits(app: Flask, settings: Settings) -> Limiter | None:
    if not settings.rate_limits:
        return None
    # Flask runs after_request hooks last registered first: these two go around the limiter's own.
    app.after_request(_own_retry_after)
    limiter = Limiter(key_func=_caller, app=app, storage_uri=storage_uri(settings.redis_url), headers_enabled=True,
                      strategy="fixed-window", swallow_errors=True, key_prefix="controlplane:ratelimit")
    app.after_request(_note_retry_after)
    # One budget per user across every endpoint of both APIs (a limit shared by scope "api").
    api_budget = limiter.shared_limit(settings.rate_limit_api, scope="api", key_func=_caller, exempt_when=_anonymous)
    for rule in list(app.url_map.iter_rules()):
        if rule.rule.startswith(LIMITED_PREFIXES) and rule.endpoint in app.view_functions:
            app.view_functions[rule.endpoint] = api_budget(app.view_functions[rule.endpoint])
    def created(response) -> bool:  # a replayed idempotent create made nothing: it does not count
        return response.status_code == 201 and not g.get("idempotent_replay", False)
    rules = (
        ("desktops.Desktops", settings.rate_limit_desktop_create, _caller, ["POST"], created, _anonymous),
        ("projects.Projects", settings.rate_limit_project_create, _caller, ["POST"], created, _anonymous),
        # Counted before the model is called (a member's message counts whatever its answer), but
        # only for members who may chat there.
        ("chat.Chat", settings.rate_limit_chat, _project_of_message, ["POST"], None, _may_not_chat),
    )
    for endpoint, limit, key, methods, deduct, exempt in rules:
        view = app.view_functions[endpoint]
        app.view_functions[endpoint] = limiter.limit(limit, key_func=key, methods=methods, deduct_when=deduct,
                                                     exempt_when=exempt, override_defaults=False,
                                                     scope=endpoint)(view)
    return limiter
