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

Fixed windows (a window starts with its first request). One Lua script counts requests against
the per-user budget and reads (or, for chat, counts) the endpoint's limit, and answers each count
with its window's time left. A create is counted after its answer, only when it made something.
Answers carry X-RateLimit-Limit, X-RateLimit-Remaining and X-RateLimit-Reset (epoch seconds) of the
tightest limit; a refusal is RATE_LIMIT_EXCEEDED in the API's own envelope (api/errors.py) with
Retry-After, and only a refusal says Retry-After. If Redis does not answer, the limits are skipped
rather than failing requests.

The per-user budget of a plain request (a read, an update: everything but a create or a chat
message) is counted in the API process while its first half lasts, and reaches Redis in one script
call for all users every `rate_limit_sync` seconds (0.05; Kong's `sync_rate`): such a request
makes no round trip of its own. The second half of a budget is counted in Redis request by
request, so the refusal comes exactly at the limit; a user past it is refused by the process
without asking Redis until the window ends. What this costs: a user who sends more than half a
budget within one sync interval, across several API processes, may get a few requests past the
limit (at most what the other processes let through in that interval), and X-RateLimit-Remaining
in the first half is this process's count, behind the others' by up to that interval.
`rate_limit_sync: 0` counts every request in Redis as it comes.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import threading
import time
import weakref
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
SYNCER_IDLE_SECONDS = 2.0  # an API process's syncer ends after this long with nothing to send

# KEYS: the windows' keys. ARGV: for each key, its window in milliseconds and how many requests to
# count (0: only read). Answers, for each key, the count and the window's milliseconds left.
_SCRIPT = """
local answer = {}
for i, key in ipairs(KEYS) do
  local window, count = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local seen
  if count > 0 then
    seen = redis.call('INCRBY', key, count)
  else
    seen = tonumber(redis.call('GET', key) or '0')
  end
  local left = redis.call('PTTL', key)
  if left < 0 then
    if count > 0 then redis.call('PEXPIRE', key, window) end
    left = window
  end
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


@dataclass
class _Count:
    """This process's view of one budget's window."""
    window_ms: int
    ends: float  # when the window ends (epoch seconds): Redis's word once it answered, until then a guess
    seen: int = 0  # Redis's count at its last answer
    pending: int = 0  # requests counted here that Redis has not been told of yet
    sending: int = 0  # requests counted here on their way to Redis (in a call not answered yet)
    answered: bool = False  # `seen` and `ends` are Redis's


class Limits:
    def __init__(self, settings: Settings):
        self.connection = get_redis(settings.redis_url)
        self.script = self.connection.register_script(_SCRIPT)
        self.api = parse_rate(settings.rate_limit_api)
        self.desktop_create = parse_rate(settings.rate_limit_desktop_create)
        self.project_create = parse_rate(settings.rate_limit_project_create)
        self.chat = parse_rate(settings.rate_limit_chat)
        self.sync_interval = settings.rate_limit_sync
        self._start(None)

    def _start(self, pid: int | None) -> None:
        """This process's counts, empty (and, after a fork, nothing of the parent's: its locks may
        have been held by a thread the child does not have)."""
        self._pid = pid
        self._counts: dict[str, _Count] = {}
        self._lock = threading.Lock()  # the counts
        self._redis_lock = threading.Lock()  # a sync, or a request counted in Redis: one at a time
        self._syncer: threading.Thread | None = None

    def apply(self, checks: list[Check]) -> None:
        """Count and check this request; raise RateLimited past a limit. Notes the tightest limit's
        headers for the answer (g.rate_limit_headers). A plain request (the per-user budget alone)
        is counted here while its budget's first half lasts; anything else in Redis (one round trip)."""
        if self._pid != os.getpid():
            self._start(os.getpid())
        if self.sync_interval > 0 and len(checks) == 1 and checks[0].hit and self._apply_here(checks[0]):
            return
        self._apply_in_redis(checks)

    def _apply_here(self, check: Check) -> bool:
        """Count the request in this process (True) while its budget is in its first half, or refuse
        it when Redis said the budget is spent; False: it is counted in Redis."""
        amount = check.rate.amount
        now = time.time()
        with self._lock:
            count = self._counts.get(check.key)
            if count is None or now >= count.ends:  # a new window (what is pending goes into it)
                count = self._counts[check.key] = _Count(check.rate.seconds * 1000, now + check.rate.seconds,
                                                         pending=count.pending if count else 0)
            spent = count.answered and count.seen + count.sending + count.pending >= amount
            used = count.seen + count.sending + count.pending + 1
            here = not spent and used <= amount // 2
            if here:
                count.pending += 1
            ends = count.ends
        if spent:
            _refuse(check.rate, ends - now)
        if here:
            g.rate_limit_headers = _headers(check.rate, amount - used, ends)
            if self._syncer is None:
                self._start_syncer()
        return here

    def _apply_in_redis(self, checks: list[Check]) -> None:
        """One round trip: the request counted (with what this process counted of its budget and has
        not told Redis yet) or the limit read."""
        with self._redis_lock:
            with self._lock:
                extra = {c.key: self._take_pending(c.key) for c in checks if c.hit}
            keys = [c.key for c in checks]
            args = [x for c in checks for x in (c.rate.seconds * 1000, 1 + extra[c.key] if c.hit else 0)]
            try:
                answer = self.script(keys=keys, args=args)
            except redis.RedisError as exc:
                log.warning("rate limits skipped: Redis did not answer (%s)", type(exc).__name__)
                with self._lock:
                    for key, sent in extra.items():
                        self._answered(key, None, None, 0, sent)
                return
            now = time.time()
            with self._lock:
                for i, check in enumerate(checks):
                    if check.rate is self.api and check.key not in self._counts and self.sync_interval > 0:
                        # known from now on: once spent, refused here without a round trip
                        self._counts[check.key] = _Count(check.rate.seconds * 1000, now)
                    self._answered(check.key, int(answer[2 * i]), int(answer[2 * i + 1]), now, extra.get(check.key, 0))
        if self._counts and self._syncer is None:
            self._start_syncer()  # it also forgets the windows that are over
        tightest = None
        for i, check in enumerate(checks):
            seen, left_ms = int(answer[2 * i]), int(answer[2 * i + 1])
            used = seen if check.hit else seen + 1  # with this request
            remaining = max(check.rate.amount - used, 0)
            reset = now + left_ms / 1000
            if tightest is None or remaining < tightest[1]:
                tightest = (check.rate, remaining, reset)
            if used > check.rate.amount:
                _refuse(check.rate, left_ms / 1000)
        g.rate_limit_headers = _headers(*tightest)

    def _take_pending(self, key: str) -> int:
        """What is pending of budget `key`, now on its way to Redis."""
        count = self._counts.get(key)
        if count is None:
            return 0
        pending, count.pending = count.pending, 0
        count.sending += pending
        return pending

    def _answered(self, key: str, seen: int | None, left_ms: int | None, now: float, sent: int) -> None:
        """Redis's answer for budget `key` (None: no answer), to a call that carried `sent` of its requests."""
        count = self._counts.get(key)
        if count is None:
            return
        count.sending = max(count.sending - sent, 0)
        if seen is not None:
            count.seen, count.ends, count.answered = seen, now + left_ms / 1000, True

    def sync(self) -> int:
        """Tell Redis what this process counted (one script call for every budget), and learn each
        budget's count across all processes. Returns the number of budgets sent."""
        with self._redis_lock:
            now = time.time()
            with self._lock:
                for key in [k for k, c in self._counts.items() if not c.pending and now >= c.ends]:
                    del self._counts[key]  # its window is over and nothing of it is left to send
                batch = [(key, c.window_ms, self._take_pending(key)) for key, c in self._counts.items() if c.pending]
            if not batch:
                return 0
            try:
                answer = self.script(keys=[key for key, _, _ in batch],
                                     args=[x for _, window, pending in batch for x in (window, pending)])
            except redis.RedisError as exc:
                log.warning("rate limits: %d budgets not counted: Redis did not answer (%s)", len(batch),
                            type(exc).__name__)
                answer = None
            now = time.time()
            with self._lock:
                for i, (key, _, sent) in enumerate(batch):
                    if answer is None:
                        self._answered(key, None, None, now, sent)
                    else:
                        self._answered(key, int(answer[2 * i]), int(answer[2 * i + 1]), now, sent)
            return len(batch) if answer is not None else 0

    def _start_syncer(self) -> None:
        with self._lock:
            if self._syncer is not None:
                return
            self._syncer = threading.Thread(target=_sync_loop, args=(weakref.ref(self), os.getpid()),
                                            name="rate-limit-sync", daemon=True)
        self._syncer.start()

    def _idle(self) -> bool:
        """Whether nothing is left to send (then the syncer ends; the next request counted here starts
        one, and its first sync forgets the windows that are over)."""
        with self._lock:
            if any(count.pending for count in self._counts.values()):
                return False
            self._syncer = None
            return True

    def deduct(self, check: Check) -> None:
        """Count a request after its answer (a create that made something)."""
        try:
            self.script(keys=[check.key], args=[check.rate.seconds * 1000, 1])
        except redis.RedisError as exc:
            log.warning("rate limit not counted: Redis did not answer (%s)", type(exc).__name__)


def _sync_loop(limits_ref, pid: int) -> None:
    """The syncer thread of an API process: until its Limits are gone (an app dropped), the process
    forked, or every window it counted in is over."""
    quiet = 0  # syncs in a row that had nothing to send
    while True:
        limits = limits_ref()
        if limits is None or limits._pid != pid:
            return
        interval = limits.sync_interval
        del limits
        time.sleep(interval)
        limits = limits_ref()
        if limits is None or limits._pid != pid:
            return
        try:
            quiet = 0 if limits.sync() else quiet + 1
        except Exception:  # noqa: BLE001 - the next interval tries again; counting must not stop
            log.exception("rate limits: a sync failed")
        if quiet * interval >= SYNCER_IDLE_SECONDS and limits._idle():
            return
        del limits


def _refuse(rate: Rate, left: float) -> None:
    """Refuse the request: `rate` is spent for another `left` seconds (its headers, and Retry-After)."""
    g.rate_limit_headers = _headers(rate, 0, time.time() + left)
    raise RateLimited(f"Rate limit exceeded: {rate.text}", details={"limit": rate.text},
                      retry_after=max(math.ceil(left), 1))


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
