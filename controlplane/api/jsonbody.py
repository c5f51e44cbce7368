"""The one JSON parse of what clients send: request bodies of every API (through the app's JSON
provider, so `request.get_json()` and webargs read the same result) and the WebSocket's messages.

Python's json module takes more than the contracts can hold, and some of it failed later as a 500:
nesting deep enough to exhaust the recursion limit (RecursionError is no ValueError), integers
longer than Python's 4300 digits (ValueError outside json's own errors), NaN and Infinity (not
JSON), and strings with an unpaired UTF-16 surrogate ("\\ud800": the str cannot be encoded as
UTF-8, so the database, Redis and the logs raise). Each is refused here as InvalidJson (a
ValueError), which the APIs answer with a 400 in their own envelope.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

from flask import Request
from flask.json.provider import DefaultJSONProvider

from ..errors import ValidationFailed

MAX_DEPTH = 32  # arrays and objects inside each other; the contracts' bodies need 3
MAX_INT_DIGITS = 40  # a 128-bit integer has 39; Python refuses more than 4300 with a ValueError
NOT_JSON = "Request body is not valid JSON"
SURROGATES = re.compile("[\ud800-\udfff]")
UNPAIRED_SURROGATE = "Must not contain unpaired surrogates (\\ud800 to \\udfff)"


class InvalidJson(ValueError):
    """`message` says what is wrong; `field` is the top-level member it is in, or None."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message, self.field = message, field


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise InvalidJson(f"Integers must have at most {MAX_INT_DIGITS} digits")
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999
        raise InvalidJson("Numbers must be finite")
    return value


def _constant(name: str):
    raise InvalidJson(f"{name} is not JSON")


def loads(data: str | bytes | bytearray) -> Any:
    """Parse JSON text (UTF-8 if bytes) or raise InvalidJson."""
    if isinstance(data, (bytes, bytearray)):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidJson(NOT_JSON) from None  # JSON is exchanged as UTF-8 (RFC 8259)
    try:
        value = json.loads(data, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except InvalidJson:
        raise
    except RecursionError:
        raise InvalidJson(f"JSON must not be nested more than {MAX_DEPTH} levels deep") from None
    except ValueError:
        raise InvalidJson(NOT_JSON) from None
    check(value)
    return value


def check(value: Any) -> None:
    """Refuse nesting deeper than MAX_DEPTH and unpaired surrogates in keys and strings, naming the
    top-level member they are in. Iterative: a deep document cannot exhaust the stack here."""
    stack: list[tuple[Any, int, str | None]] = [(value, 0, None)]
    while stack:
        item, depth, field = stack.pop()
        if isinstance(item, str):
            if SURROGATES.search(item):
                raise InvalidJson(UNPAIRED_SURROGATE, field)
        elif isinstance(item, (dict, list)):
            if depth >= MAX_DEPTH:
                raise InvalidJson(f"JSON must not be nested more than {MAX_DEPTH} levels deep", field)
            if isinstance(item, dict):
                for key, sub in item.items():
                    name = field if depth else key
                    if SURROGATES.search(key):
                        raise InvalidJson(UNPAIRED_SURROGATE, None if depth == 0 else field)
                    stack.append((sub, depth + 1, name))
            else:
                stack.extend((sub, depth + 1, field) for sub in item)


class JsonProvider(DefaultJSONProvider):
    """Flask's JSON, reading with loads() above (`request.get_json()`, `response.get_json()`)."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return loads(s)


class JsonRequest(Request):
    """A body loads() refuses is a validation error naming the member (400 in the API's envelope),
    not Flask's bare 400."""

    def on_json_loading_failed(self, e: ValueError | None) -> Any:
        if isinstance(e, InvalidJson):
            raise ValidationFailed(details={e.field or "body": e.message})
        return super().on_json_loading_failed(e)
