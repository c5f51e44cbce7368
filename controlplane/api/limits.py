"""Rate limits on the control plane's Redis, as both contracts state them:

- every API request: CONTROLPLANE_RATE_LIMIT_API per user (100/minute);
- desktop creation: CONTROLPLANE_RATE_LIMIT_DESKTOP_CREATE per user (5/hour), counting desktops
  actually created (201, not a replayed idempotent create), not refused attempts;
- project creation: CONTROLPLANE_RATE_LIMIT_PROJECT_CREATE per user (5/hour), likewise;
- chat messages: CONTROLPLANE_RATE_LIMIT_CHAT per project (20/minute).

Every limit is counted only for requests that are authenticated and allowed to do what they ask,
so nobody can spend someone else's budget: the limits are checked in the view, after the
blueprint's authentication; the per-user ones are keyed by the verified token's user, and skip a
request without one (it is refused with 401 anyway: no budget by address); the per-project chat
limit counts, and refuses, only members whose role may chat in that project (an outsider's 404s
or a viewer's 403s do not use up the owner's 20 a minute, nor learn that it is spent). Keys hold
no user text: a user is a SHA-256 digest of their id, a project its database id.

Fixed windows (a window starts with its first request), one Redis round trip per request: one Lua
script counts the request against the per-user budget and reads (or, for chat, counts) the
endpoint's limit, and answers each count with its window's time left. A create is counted after
its answer, only when it made something. Answers carry X-RateLimit-Limit, X-RateLimit-Remaining
and X-RateLimit-Reset (epoch seconds) of the tightest limit; a refusal is RATE_LIMIT_EXCEEDED in
the API's own envelope (api/errors.py) with Retry-After, and only a refusal says Retry-After. If
Redis does not answer, the limits are skipped rather than failing requests.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import math
import time
from dataclasses import dataclass

import redis
from flask import Flask, Response, current_app, g, request

from ..config import Rate, Settings, parse_rate
from ..errors import RateLimited
from ..services.projects import Action, access
from ..services.queue import get_redis

log = logging.getLogger(__name__)

LIMITED_PREFIXES = ("/api/v1/desktops", "/api/projects", "/api/chat", "/api/user", "/api/invitations")
KEY_PREFIX = "controlplane:ratelimit"
EXTENSION = "controlplane_limits"

# KEYS: the windows' keys. ARGV: for each key, its window in milliseconds and whether to count this
# request (1) or only read (0). Answers, for each key, the count and the window's milliseconds left.
_SCRIPT = """
local answer = {}
for i, key in ipairs(KEYS) do
  local window, count = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local seen
  if count == 1 then
    seen = redis.call('INCR', key)
    if seen == 1 then redis.call('PEXPIRE', key, window) end
  else
    seen = tonumber(redis.call('GET', key) or '0')
  end
  local left = redis.call('PTTL', key)
  if left < 0 then left = window end
  answer[2 * i - 1], answer[2 * i] = seen, left
end
return answer
"""


@dataclass(frozen=True)
class Check:
    """One limit applied to one request: its Redis key, and whether the request counts now
    ("hit": it is refused past the limit) or only after its answer ("deduct": refused when the
    limit is already spent)."""
    rate: Rate
    key: str
    hit: bool


class Limits:
    def __init__(self, settings: Settings):
        self.connection = get_redis(settings.redis_url)
        self.script = self.connection.register_script(_SCRIPT)
        self.api = parse_rate(settings.rate_limit_api)
        self.desktop_create = parse_rate(settings.rate_limit_desktop_create)
        self.project_create = parse_rate(settings.rate_limit_project_create)
        self.chat = parse_rate(settings.rate_limit_chat)

    def apply(self, checks: list[Check]) -> None:
        """Count and check this request (one round trip); raise RateLimited past a limit. Notes the
        tightest limit's headers for the answer (g.rate_limit_headers)."""
        keys = [c.key for c in checks]
        args = [x for c in checks for x in (c.rate.seconds * 1000, 1 if c.hit else 0)]
        try:
            answer = self.script(keys=keys, args=args)
        except redis.RedisError as exc:
            log.warning("rate limits skipped: Redis did not answer (%s)", type(exc).__name__)
            return
        now = time.time()
        tightest = None
        for i, check in enumerate(checks):
            seen, left_ms = int(answer[2 * i]), int(answer[2 * i + 1])
            used = seen if check.hit else seen + 1  # with this request
            remaining = max(check.rate.amount - used, 0)
            reset = now + left_ms / 1000
            if tightest is None or remaining < tightest[1]:
                tightest = (check.rate, remaining, reset)
            if used > check.rate.amount:
                g.rate_limit_headers = _headers(check.rate, 0, reset)
                raise RateLimited(f"Rate limit exceeded: {check.rate.text}", details={"limit": check.rate.text},
                                  retry_after=max(math.ceil(left_ms / 1000), 1))
        g.rate_limit_headers = _headers(*tightest)

    def deduct(self, check: Check) -> None:
        """Count a request after its answer (a create that made something)."""
        try:
            self.script(keys=[check.key], args=[check.rate.seconds * 1000, 1])
        except redis.RedisError as exc:
            log.warning("rate limit not counted: Redis did not answer (%s)", type(exc).__name__)


def _headers(rate: Rate, remaining: int, reset: float) -> dict[str, str]:
    return {"X-RateLimit-Limit": str(rate.amount), "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": str(math.ceil(reset))}


def _key(scope: str, rate: Rate, who: str) -> str:
    return f"{KEY_PREFIX}:{scope}:{rate.amount}-{rate.seconds}:{who}"


def _user_key() -> str | None:
    """The caller's budget: a digest of the user id the blueprint's authentication verified
    (g.identity), or None for a request that has none."""
    identity = g.get("identity")
    user = getattr(identity, "user_id", None)
    if not isinstance(user, str) or not user:
        return None
    return "user:" + hashlib.sha256(user.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _chat_project() -> int | None:
    """The database id of the project this chat message is for, if the caller may chat in it
    (the same check as the chat itself: services/projects.access with Action.CHAT); else None."""
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
    return project.id


def _created(response: Response) -> bool:
    """A create that made something (a replayed idempotent create made nothing)."""
    return response.status_code == 201 and not g.get("idempotent_replay", False)


def _limited(view, endpoint: str):
    """The view, counted against the caller's budget and the endpoint's own limit first."""
    @functools.wraps(view)
    def limited(*args, **kwargs):
        limits: Limits = current_app.extensions[EXTENSION]
        user = _user_key()
        if user is None:  # refused with 401 by the view; no budget by address
            return view(*args, **kwargs)
        checks = [Check(limits.api, _key("api", limits.api, user), hit=True)]
        after = None
        if request.method == "POST" and endpoint in ("desktops.Desktops", "projects.Projects"):
            rate = limits.desktop_create if endpoint == "desktops.Desktops" else limits.project_create
            after = Check(rate, _key(endpoint, rate, user), hit=False)
            checks.append(after)
        elif request.method == "POST" and endpoint == "chat.Chat":
            project = _chat_project()
            if project is not None:  # counted before the model is called, whatever its answer
                checks.append(Check(limits.chat, _key(endpoint, limits.chat, f"project:{project}"), hit=True))
        limits.apply(checks)
        if after is None:
            return view(*args, **kwargs)
        response = current_app.make_response(view(*args, **kwargs))
        if _created(response):
            limits.deduct(after)
        return response
    return limited


def _add_headers(response: Response) -> Response:
    for name, value in g.get("rate_limit_headers", {}).items():
        response.headers[name] = value
    return response


def init_limits(app: Flask, settings: Settings) -> Limits | None:
    if not settings.rate_limits:
        return None
    app.extensions[EXTENSION] = limits = Limits(settings)
    app.after_request(_add_headers)
    endpoints = {rule.endpoint for rule in app.url_map.iter_rules()
                 if rule.rule.startswith(LIMITED_PREFIXES) and rule.endpoint in app.view_functions}
    for endpoint in endpoints:  # once each, whatever number of URL rules it has
        app.view_functions[endpoint] = _limited(app.view_functions[endpoint], endpoint)
    return limits
