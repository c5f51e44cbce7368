"""The lab echo model: a small stand-in for an OpenAI-compatible chat completion server.

It is the lab's, not a language model: it answers enough of OpenAI's Chat Completions API for
litellm (and any OpenAI client) to talk to it, with a deterministic reply derived from the last
user message, so that the chat engine can be run and tested without a provider or the internet.

* ``POST /v1/chat/completions``: validates the body as OpenAI does for the fields it knows
  (``model``, ``messages``, ``temperature`` 0-2, ``top_p`` 0-1, ``max_tokens`` /
  ``max_completion_tokens`` >= 1, ``n`` = 1; ``stream: true`` is refused with 400) and answers a
  ``chat.completion`` object whose content is::

      Lab assistant (model gpt-4) received: 'Hello AI!' — 2 words.
      This is the lab echo model, not a real assistant: ...

  ``max_tokens`` cuts the content at that many tokens (``finish_reason: "length"``).
* ``GET /v1/models``: the model list (``models``, or a few well-known names when any is accepted).
* ``Authorization: Bearer <api_key>`` is required; a missing or wrong key is 401 with OpenAI's error
  body ``{"error": {"message", "type", "param", "code"}}`` (the key is never echoed whole).

Token counts in ``usage`` are the lab's own deterministic count, not a real tokenizer's: every run of
letters/digits/underscores is one token and every other non-space character (punctuation) is one
token (``TOKEN_RE``); ``prompt_tokens`` sums the text of all request messages.

Fault switches for tests, like the Guacamole stand-in's: ``down`` (every request is 503),
``delay_seconds`` (each request waits that long first), ``fail(status, times)`` (the next ``times``
chat completions, or all when None, answer ``status`` with an OpenAI error body), ``models`` (a set:
other model names are 404 ``model_not_found``), ``omit_usage`` (no ``usage`` block, as some servers
answer), ``reply_model`` (the model name replies claim, as providers answer with a dated name). ``calls`` counts the HTTP requests that arrived and
``requests`` keeps the bodies of the last valid chat completions.

It runs inside whatever asyncio loop calls :meth:`LabLlm.start`; ``python -m controlplane.lab.llm``
runs it in the foreground.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import hmac
import json
import logging
import os
import re
import threading
import time
import uuid
from typing import Any

from aiohttp import web

from .http import base_url, run_in_foreground, serve, take_fault

log = logging.getLogger("controlplane.lab.llm")

#: The lab's token: a word (letters, digits, underscore) or one other non-space character.
TOKEN_RE = re.compile(r"\w+|[^\w\s]")

HELP_LINE = ("This is the lab echo model, not a real assistant: point CONTROLPLANE_LLM_* at a provider "
             "for real answers.")

#: Listed by GET /v1/models when every model name is accepted (``models`` is None).
DEFAULT_MODELS = ("gpt-4", "gpt-4o-mini", "gpt-3.5-turbo", "lab-echo")

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
ECHO_LIMIT = 500  # characters of the user's message quoted back


def count_tokens(text: str) -> int:
    """The lab's deterministic token count (see TOKEN_RE)."""
    return len(TOKEN_RE.findall(text))


def truncate_tokens(text: str, limit: int) -> str:
    """`text` cut after its `limit`-th token (as counted by count_tokens)."""
    for i, match in enumerate(TOKEN_RE.finditer(text), start=1):
        if i == limit:
            return text[:match.end()]
    return text


def reply_for(model: str, message: str) -> str:
    """The echo model's deterministic answer to `message`."""
    words = len(message.split())
    quoted = message if len(message) <= ECHO_LIMIT else message[:ECHO_LIMIT] + "…"
    return (f"Lab assistant (model {model}) received: '{quoted}' — {words} word{'' if words == 1 else 's'}.\n"
            f"{HELP_LINE}")


def _mask(key: str) -> str:
    return f"{key[:3]}{'*' * 8}{key[-2:]}" if len(key) >= 12 else "****"


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


_STATUS_ERRORS = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "model_not_found"),
    408: ("timeout_error", None),
    409: ("invalid_request_error", None),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
}


def _json(data: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(text=json.dumps(data), status=status, content_type="application/json", headers=headers)


def _error(status: int, message: str, param: str | None = None, code: str | None = None,
           type_: str | None = None, headers: dict | None = None) -> web.Response:
    default_type, default_code = _STATUS_ERRORS.get(status, ("server_error", None))
    return _json(error_body(message, type_ or default_type, param, code or default_code), status=status,
                 headers=headers)


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message, self.param = message, param


def _number(body: dict, name: str, low: float, high: float) -> None:
    if name not in body or body[name] is None:
        return
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _BadRequest(f"Invalid type for '{name}': expected a decimal, but got {type(value).__name__}.", name)
    if not low <= value <= high:
        raise _BadRequest(f"Invalid '{name}': {value} is not between {low:g} and {high:g}.", name)


def _text_of(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise _BadRequest(f"Invalid '{where}[{j}]': expected an object with a 'type'.", f"{where}[{j}]")
            if part["type"] == "text":
                if not isinstance(part.get("text"), str):
                    raise _BadRequest(f"Invalid '{where}[{j}].text': expected a string.", f"{where}[{j}].text")
                parts.append(part["text"])
        return "\n".join(parts)
    raise _BadRequest(f"Invalid type for '{where}': expected a string or an array of parts.", where)


def validate_request(body: Any) -> tuple[str, list[str], str, int | None]:
    """(model, texts of all messages, text of the last user message, max tokens) or _BadRequest."""
    if not isinstance(body, dict):
        raise _BadRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _BadRequest("You must provide a model parameter.", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("'messages' must be a non-empty array.", "messages")
    texts, last_user = [], ""
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _BadRequest(f"Invalid type for '{where}': expected an object.", where)
        role = message.get("role")
        if role not in ROLES:
            raise _BadRequest(f"Invalid value for '{where}.role': {role!r}; supported values are "
                              + ", ".join(repr(r) for r in ROLES) + ".", f"{where}.role")
        if "content" not in message and role != "assistant":
            raise _BadRequest(f"Missing required parameter: '{where}.content'.", f"{where}.content")
        text = _text_of(message.get("content"), f"{where}.content")
        texts.append(text)
        if role == "user":
            last_user = text
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    limit = None
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise _BadRequest(f"Invalid type for '{name}': expected an integer.", name)
        if value < 1:
            raise _BadRequest(f"Invalid '{name}': integer below minimum value. Expected a value >= 1, "
                              f"but got {value} instead.", name)
        limit = value if limit is None else min(limit, value)
    n = body.get("n")
    if n is not None and n != 1:
        raise _BadRequest("The lab echo model gives exactly one choice: 'n' must be 1.", "n")
    if body.get("stream"):
        raise _BadRequest("Streaming is not supported by the lab echo model; send 'stream': false.", "stream")
    return model, texts, last_user, limit


class LabLlm:
    """The lab echo model, served by aiohttp; `url` is the OpenAI-style base URL (ending in /v1)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8091, api_key: str = "lab-llm-key",
                 models: set[str] | None = None):
        if not api_key:
            raise ValueError("the lab echo model needs an API key")
        self.host = host
        self.port = port
        self.api_key = api_key
        self.models = models  # None: every model name is accepted
        # Fault switches.
        self.down = False
        self.delay_seconds = 0.0
        self.omit_usage = False  # answer without a usage block, as some servers do
        self.reply_model: str | None = None  # the model name replies claim (a provider's dated name); None: echo
        self._faults: list[dict] = []
        self._lock = threading.Lock()
        # Inspectable by tests: how many HTTP requests arrived (whatever their fate), and the bodies of the
        # last valid chat completions (never the key).
        self.calls = 0
        self.requests: collections.deque = collections.deque(maxlen=200)
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return base_url(self.host, self.port) + "/v1"

    # ------------------------------------------------------------ fault switches

    def fail(self, status: int = 500, times: int | None = None, path: str = "/v1/chat/completions") -> None:
        """Answer `status` (with an OpenAI error body) to the next `times` requests to `path`
        (None: all of them, until clear_faults())."""
        if times is not None and times <= 0:
            return
        with self._lock:
            self._faults.append({"status": int(status), "times": times, "path": path})

    def clear_faults(self) -> None:
        """Every fault switch off: no injected failures, not down, no delay."""
        with self._lock:
            self._faults.clear()
        self.down = False
        self.delay_seconds = 0.0
        self.omit_usage = False
        self.reply_model = None

    def _take_fault(self, path: str) -> dict | None:
        with self._lock:
            return take_fault(self._faults, lambda f: f["path"] == path)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._runner is not None:
            return
        self._stopping = asyncio.Event()
        app = web.Application(middlewares=[self._middleware], client_max_size=4 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_get("/v1/models", self._models)
        self._runner, self.port = await serve(app, self.host, self.port)
        log.info("lab echo model listening on %s", self.url)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if self._stopping is not None:
            self._stopping.set()  # delayed requests end now instead of holding the shutdown
        if runner is not None:
            await runner.cleanup()
            log.info("lab echo model on %s stopped", self.url)

    # ------------------------------------------------------------ HTTP

    @web.middleware
    async def _middleware(self, request: web.Request, handler):
        self.calls += 1
        if self.down:
            return _error(503, "The lab echo model is down (fault switch).", type_="server_error")
        delay = self.delay_seconds
        if delay > 0 and self._stopping is not None:
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
                return _error(503, "The lab echo model is stopping.", type_="server_error")
            except asyncio.TimeoutError:
                pass
        auth = request.headers.get("Authorization", "")
        scheme, _, key = auth.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return _error(401, "You didn't provide an API key. You need to provide your API key in an "
                               "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                          code=None)
        key = key.strip()
        if not hmac.compare_digest(key.encode(), self.api_key.encode()):
            return _error(401, f"Incorrect API key provided: {_mask(key)}. This is the lab echo model: use "
                               "the lab's key (var/lab/endpoints.json).")
        fault = self._take_fault(request.path)
        if fault is not None:
            status = fault["status"]
            headers = {"Retry-After": "1"} if status == 429 else None
            return _error(status, f"Injected failure (HTTP {status}) from the lab echo model.", headers=headers)
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status >= 400:
                return _error(exc.status, {404: "Unknown request URL.", 405: "Method not allowed."}
                              .get(exc.status, exc.reason))
            raise
        except Exception:  # pragma: no cover - a bug in the stand-in
            log.exception("%s %s failed", request.method, request.path)
            return _error(500, "Unexpected error in the lab echo model.", type_="server_error")

    async def _models(self, request: web.Request) -> web.Response:
        names = sorted(self.models) if self.models is not None else list(DEFAULT_MODELS)
        return _json({"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "lab"}
                                                 for name in names]})

    async def _chat_completions(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.text())
        except (ValueError, UnicodeDecodeError):
            return _error(400, "We could not parse the JSON body of your request.")
        try:
            model, texts, last_user, limit = validate_request(body)
        except _BadRequest as exc:
            return _error(400, exc.message, param=exc.param)
        self.requests.append(body)
        if self.models is not None and model not in self.models:
            return _error(404, f"The model `{model}` does not exist or you do not have access to it.")
        content = reply_for(model, last_user)
        finish = "stop"
        if limit is not None and count_tokens(content) > limit:
            content, finish = truncate_tokens(content, limit), "length"
        prompt_tokens = sum(count_tokens(t) for t in texts)
        completion_tokens = count_tokens(content)
        answer = {
            "id": f"chatcmpl-lab-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.reply_model or model,
            "system_fingerprint": "lab-echo",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "logprobs": None, "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }
        if self.omit_usage:
            del answer["usage"]
        return _json(answer)


# --------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m controlplane.lab.llm",
                                     description="Run the lab echo model (OpenAI-compatible) in the foreground.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8091, help="0 picks a free port")
    parser.add_argument("--api-key", default=os.environ.get("LAB_LLM_API_KEY", "lab-llm-key"),
                        help="key clients must send (default: $LAB_LLM_API_KEY or lab-llm-key)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    run_in_foreground(lambda: LabLlm(host=args.host, port=args.port, api_key=args.api_key),
                      lambda s: f"lab echo model: {s.url}  (Authorization: Bearer <the --api-key>)", args.log_level)


if __name__ == "__main__":
    main()
