"""The AI-chat engine: one chat completion through litellm, its tokens and its cost.

Model ids are ``<provider>/<model>`` (projects-api.md's ``"model": "openai/gpt-4"``):

=================================  ==========================================  =====================================
model id                           sent to                                     enabled by
=================================  ==========================================  =====================================
``openai/<model>``                 OpenAI, or CONTROLPLANE_LLM_OPENAI_BASE_URL  CONTROLPLANE_LLM_OPENAI_API_KEY
``anthropic/<model>``              Anthropic                                   CONTROLPLANE_LLM_ANTHROPIC_API_KEY
``openrouter/<vendor>/<model>``    OpenRouter                                  CONTROLPLANE_LLM_OPENROUTER_API_KEY
``compat/<model>``                 an OpenAI-compatible server (Ollama, vLLM,  CONTROLPLANE_LLM_COMPAT_BASE_URL
                                   LM Studio, a LiteLLM proxy ...) as          (+ CONTROLPLANE_LLM_COMPAT_API_KEY if
                                   litellm's ``openai/<model>``                it wants one)
=================================  ==========================================  =====================================

A user's own key (``api_key=``) replaces the server's for that call and enables openai, anthropic
and openrouter even when the server has no key of its own; ``compat`` always needs the server's base URL.

Tokens come from the provider's ``usage``; the cost from litellm's bundled, maintained price table
(``litellm.cost_per_token``). A model the table does not know, and every ``compat/`` model
(self-hosted: no list price), costs 0.0 with ``cost_known=False``.

litellm is imported lazily (it takes seconds to import; an API worker imports and warms it, :func:`warm`, before the
first call) and with ``LITELLM_LOCAL_MODEL_COST_MAP=True``, so it uses its bundled price table
instead of downloading one at import. Calls are made with ``num_retries=0`` and ``max_retries=0``:
retrying is the caller's business. Every failure is a :class:`ChatError` whose ``kind`` says what
went wrong; its message and details never contain an API key.
"""
from __future__ import annotations

import base64
import logging
import math
import os
import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import logs
from ..config import LLM_PROVIDERS

if TYPE_CHECKING:  # pragma: no cover
    from ..config import Settings

# Before litellm is imported anywhere in this process: use the price table bundled with litellm instead
# of fetching one from the internet at import (which would hang or warn on a machine without it).
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

log = logging.getLogger(__name__)

KINDS = ("invalid_model", "invalid_parameters", "auth", "rate_limited", "timeout", "unavailable", "bad_response")

#: Upper bound for max_tokens when litellm's table does not know the model's own maximum.
MAX_TOKENS_CAP = 32768
PARAMETERS = ("temperature", "max_tokens", "top_p")
ROLES = ("system", "user", "assistant")
MODEL_NAME_MAX = 200
USER_KEY_MAX = 1000

OPENAI_BASE_URL = "https://api.openai.com/v1"
# Placeholder key for an OpenAI-compatible server that wants none (the OpenAI client insists on one).
NO_KEY = "no-key"

_PROVIDER_SETTINGS = {  # provider -> (its key setting, the variable that sets it)
    "openai": ("llm_openai_api_key", "CONTROLPLANE_LLM_OPENAI_API_KEY"),
    "anthropic": ("llm_anthropic_api_key", "CONTROLPLANE_LLM_ANTHROPIC_API_KEY"),
    "openrouter": ("llm_openrouter_api_key", "CONTROLPLANE_LLM_OPENROUTER_API_KEY"),
    "compat": ("llm_compat_api_key", "CONTROLPLANE_LLM_COMPAT_API_KEY"),
}


# ---- results and errors -------------------------------------------------------------------------------

@dataclass
class ChatResult:
    content: str
    model: str  # the model id as asked for ("openai/gpt-4")
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int  # the contract's tokens_used
    cost: float  # USD; 0.0 when not cost_known
    cost_known: bool  # False: the price table has no price for this model (or it is self-hosted)


class ChatError(Exception):
    """A chat completion that could not be made.

    kind: one of KINDS. message: for people, never containing a key. details: a JSON-able dict;
    for invalid_parameters {field: message}; for provider errors "provider", "model", "key_source"
    ("server" or "user"), "provider_status" and a redacted "provider_message" when there is one.
    """

    def __init__(self, kind: str, message: str, details: dict | None = None):
        if kind not in KINDS:
            raise ValueError(f"unknown ChatError kind {kind!r}")
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.details = details or {}

    def __repr__(self) -> str:
        return f"ChatError({self.kind!r}, {self.message!r}, {self.details!r})"


# ---- litellm, lazily ----------------------------------------------------------------------------------

_litellm_module = None
_litellm_lock = threading.Lock()


def _litellm():
    global _litellm_module
    if _litellm_module is None:
        with _litellm_lock:
            if _litellm_module is None:
                import litellm
                litellm.suppress_debug_info = True  # no "Give Feedback / Get Help" banners on stdout
                if hasattr(litellm, "telemetry"):
                    litellm.telemetry = False
                _litellm_module = litellm
    return _litellm_module


def warm() -> None:
    """Import litellm and take its completion and price paths once, offline (a mocked answer: no
    provider is called), so that a worker's first chat message finds everything loaded. An API
    worker calls it before it serves (gunicorn_conf.post_worker_init)."""
    litellm = _litellm()
    try:
        litellm.completion(model="openai/gpt-4", messages=[{"role": "user", "content": "warm-up"}],
                           mock_response="warm", api_key=NO_KEY)
    except Exception as exc:  # noqa: BLE001 - warming is best effort: a real message would report it
        log.warning("warming the model library failed: %s", exc)
    price("openai/gpt-4", 1, 1)


# ---- model ids -----------------------------------------------------------------------------------------

def parse_model(model: str) -> tuple[str, str]:
    """("openai", "gpt-4") from "openai/gpt-4"; the provider is lower-cased, the name kept as given.
    Raises ChatError invalid_model for anything else."""
    if not isinstance(model, str) or not model.strip():
        raise ChatError("invalid_model", "A model is required, as <provider>/<model> (e.g. openai/gpt-4).",
                        {"model": "required"})
    provider, sep, name = model.strip().partition("/")
    provider = provider.lower()
    if not sep or not provider or not name:
        raise ChatError("invalid_model", f"Model {model!r} is not of the form <provider>/<model> "
                        f"(providers: {', '.join(LLM_PROVIDERS)}).", {"model": model})
    if provider not in LLM_PROVIDERS:
        raise ChatError("invalid_model", f"Unknown model provider {provider!r}: use one of "
                        f"{', '.join(LLM_PROVIDERS)}.", {"model": model, "providers": list(LLM_PROVIDERS)})
    if len(name) > MODEL_NAME_MAX or any(c.isspace() or not c.isprintable() for c in name):
        raise ChatError("invalid_model", f"Model name {name[:MODEL_NAME_MAX]!r} is not valid (at most "
                        f"{MODEL_NAME_MAX} characters, no spaces).", {"model": model[:MODEL_NAME_MAX + 20]})
    return provider, name


def configured_providers(settings: "Settings") -> list[str]:
    """Providers this server can call with its own configuration."""
    found = [p for p in ("openai", "anthropic", "openrouter") if getattr(settings, _PROVIDER_SETTINGS[p][0])]
    if settings.llm_compat_base_url:
        found.append("compat")
    return found


def check_model(settings: "Settings", model: str, user_key: bool = False) -> tuple[str, str]:
    """parse_model(model), and a ChatError invalid_model unless its provider can be called: configured on
    this server, or (user_key=True) one that works with the user's own key."""
    provider, name = parse_model(model)
    configured = configured_providers(settings)
    if provider in configured or (user_key and provider != "compat"):
        return provider, name
    if provider == "compat":
        why = "CONTROLPLANE_LLM_COMPAT_BASE_URL is not set"
    else:
        why = f"{_PROVIDER_SETTINGS[provider][1]} is not set and no key of your own was given"
    listed = ", ".join(configured) if configured else "none"
    raise ChatError("invalid_model", f"Provider {provider!r} is not configured on this server ({why}); "
                    f"configured providers: {listed}.",
                    {"model": model, "provider": provider, "configured_providers": configured})


@dataclass(frozen=True)
class _Route:
    model: str  # "openai/gpt-4"
    provider: str
    name: str
    litellm_model: str
    api_key: str
    api_base: str | None
    key_source: str  # "server" or "user"


def _route(settings: "Settings", model: str, api_key: str | None) -> _Route:
    user_key = (api_key or "").strip()
    provider, name = check_model(settings, model, user_key=bool(user_key))
    server_key = getattr(settings, _PROVIDER_SETTINGS[provider][0])
    key = user_key or server_key
    source = "user" if user_key else "server"
    if provider == "compat":
        return _Route(f"{provider}/{name}", provider, name, f"openai/{name}", key or NO_KEY,
                      settings.llm_compat_base_url.rstrip("/"), source)
    # openai: always an explicit base, so OPENAI_BASE_URL in the environment cannot redirect our keys.
    base = (settings.llm_openai_base_url.rstrip("/") or OPENAI_BASE_URL) if provider == "openai" else None
    return _Route(f"{provider}/{name}", provider, name, f"{provider}/{name}", key, base, source)


# ---- parameters and messages ---------------------------------------------------------------------------

def max_output_tokens(model: str) -> int:
    """The model's own max_tokens ceiling from litellm's table, else MAX_TOKENS_CAP."""
    try:
        provider, name = parse_model(model)
    except ChatError:
        return MAX_TOKENS_CAP
    if provider == "compat":
        return MAX_TOKENS_CAP
    try:
        info = _litellm().get_model_info(model=name, custom_llm_provider=provider)
    except Exception:
        return MAX_TOKENS_CAP
    value = info.get("max_output_tokens") or info.get("max_tokens")
    return int(value) if isinstance(value, (int, float)) and value >= 1 else MAX_TOKENS_CAP


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_parameters(params: dict | None, model: str | None = None) -> dict:
    """The model parameters, checked: temperature 0-2, max_tokens 1-<the model's maximum> (MAX_TOKENS_CAP
    when the model is not given or not in litellm's table), top_p 0-1; null values are left out.
    Returns a new dict with only the given parameters; raises ChatError invalid_parameters with
    details {field: message} naming every bad field."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ChatError("invalid_parameters", "Model parameters must be an object.",
                        {"parameters": "must be an object"})
    errors: dict[str, str] = {}
    clean: dict = {}
    for field in sorted(set(params) - set(PARAMETERS), key=str):
        errors[str(field)] = f"unknown parameter; the supported ones are {', '.join(PARAMETERS)}"
    for field, low, high in (("temperature", 0, 2), ("top_p", 0, 1)):
        value = params.get(field)
        if value is None:
            continue
        if not _is_number(value):
            errors[field] = f"must be a number between {low} and {high}"
        elif not low <= value <= high:
            errors[field] = f"must be between {low} and {high}, not {value}"
        else:
            clean[field] = float(value)
    value = params.get("max_tokens")
    if value is not None:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            errors["max_tokens"] = "must be a whole number of tokens"
        else:
            ceiling = max_output_tokens(model) if model else MAX_TOKENS_CAP
            if not 1 <= value <= ceiling:
                errors["max_tokens"] = f"must be between 1 and {ceiling}" + (f" for {model}" if model else "") \
                    + f", not {value}"
            else:
                clean["max_tokens"] = value
    if errors:
        names = ", ".join(errors)
        raise ChatError("invalid_parameters", f"Invalid model parameters: {names}.", errors)
    return clean


def validate_messages(messages: Any) -> list[dict]:
    """[{"role": system|user|assistant, "content": str}, ...], at least one; a copy with only those keys."""
    if not isinstance(messages, list) or not messages:
        raise ChatError("invalid_parameters", "At least one message is required.",
                        {"messages": "must be a non-empty list"})
    errors: dict[str, str] = {}
    clean = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            errors[f"messages[{i}]"] = "must be an object with role and content"
            continue
        if message.get("role") not in ROLES:
            errors[f"messages[{i}].role"] = f"must be one of {', '.join(ROLES)}"
        if not isinstance(message.get("content"), str):
            errors[f"messages[{i}].content"] = "must be a string"
        clean.append({"role": message.get("role"), "content": message.get("content")})
    if errors:
        raise ChatError("invalid_parameters", "Invalid messages.", errors)
    return clean


# ---- prices ---------------------------------------------------------------------------------------------

def price(model: str, prompt_tokens: int, completion_tokens: int) -> tuple[float, bool]:
    """(cost in USD, known) of that many tokens with `model` ("<provider>/<model>") from litellm's bundled
    price table; (0.0, False) for a model the table does not know and for compat/ (self-hosted) models."""
    try:
        provider, name = parse_model(model)
    except ChatError:
        return 0.0, False
    if provider == "compat":
        return 0.0, False
    try:
        prompt_cost, completion_cost = _litellm().cost_per_token(
            model=name, prompt_tokens=int(prompt_tokens), completion_tokens=int(completion_tokens),
            custom_llm_provider=provider)
    except Exception:  # litellm raises (ModelNotMappedError, ...) for models it has no price for
        return 0.0, False
    cost = float(prompt_cost) + float(completion_cost)
    if not math.isfinite(cost) or cost < 0:
        return 0.0, False
    return cost, True


# ---- the call -------------------------------------------------------------------------------------------

def complete(settings: "Settings", model: str, messages: list[dict], parameters: dict | None = None,
             api_key: str | None = None) -> ChatResult:
    """One chat completion of `messages` with `model`; `api_key` is the user's own provider key (else the
    server's). Raises ChatError (see KINDS) for anything that does not give an answer."""
    route = _route(settings, model, api_key)
    params = validate_parameters(parameters, model=route.model)
    clean_messages = validate_messages(messages)
    litellm = _litellm()
    secrets = [s for s in (route.api_key, *settings.secrets()) if s and s != NO_KEY]
    try:
        response = litellm.completion(
            model=route.litellm_model, messages=clean_messages, api_key=route.api_key, api_base=route.api_base,
            timeout=settings.llm_timeout, num_retries=0, max_retries=0, **params)
    except ChatError:
        raise
    except Exception as exc:  # noqa: BLE001 - every litellm failure becomes a ChatError
        error = _map_error(exc, route, settings, secrets)
        log.warning("chat completion with %s failed: %s (%s)", route.model, error.kind,
                    error.details.get("provider_message", error.message))
        raise error from None  # the provider's exception is not chained: its text is only kept redacted
    return _result(route, response, secrets)


def _result(route: _Route, response: Any, secrets: list[str]) -> ChatResult:
    try:
        choice = response.choices[0]
        content = choice.message.content
    except (AttributeError, IndexError, TypeError, KeyError):
        raise ChatError("bad_response", f"The provider's answer for {route.model} has no message.",
                        _provider_details(route)) from None
    if content is None:
        reason = getattr(choice, "finish_reason", None)
        raise ChatError("bad_response", f"The provider's answer for {route.model} has no text"
                        + (f" (finish reason {reason})." if reason else "."),
                        {**_provider_details(route), "finish_reason": reason})
    usage = getattr(response, "usage", None)

    def tokens(name: str) -> int:
        value = getattr(usage, name, None) if usage is not None else None
        return int(value) if isinstance(value, (int, float)) and value >= 0 else 0
    prompt, completion = tokens("prompt_tokens"), tokens("completion_tokens")
    total = tokens("total_tokens") or prompt + completion
    if total == 0:
        # No usage from the provider (litellm then reports zeros): the tokens, hence the cost, are unknown.
        return ChatResult(content=content, model=route.model, prompt_tokens=0, completion_tokens=0, total_tokens=0,
                          cost=0.0, cost_known=False)
    cost, known = price(route.model, prompt, completion)
    if not known and route.provider != "compat":
        # The provider may answer with a dated name the table knows ("gpt-4-0613" for "gpt-4").
        answered = getattr(response, "model", None)
        if isinstance(answered, str) and answered and answered != route.name:
            answered = answered.split("/", 1)[1] if answered.startswith(route.provider + "/") else answered
            cost, known = price(f"{route.provider}/{answered}", prompt, completion)
    return ChatResult(content=content, model=route.model, prompt_tokens=prompt, completion_tokens=completion,
                      total_tokens=total, cost=cost, cost_known=known)


# ---- errors ---------------------------------------------------------------------------------------------

_KEYLIKE = re.compile(r"(?i)\b(?:bearer\s+\S+|(?:sk|rk|pk)-[A-Za-z0-9_\-]{6,})|\S{0,8}\*{3,}\S{0,8}")


def redact(text: str, secrets: list[str] | tuple[str, ...] = ()) -> str:
    """`text` with every given secret, and anything that looks like a (masked) key, replaced."""
    text = logs.redact(text, [s for s in secrets if s and len(s) >= 4], marker="[redacted]")
    return _KEYLIKE.sub("[redacted]", text)


def _provider_details(route: _Route) -> dict:
    return {"provider": route.provider, "model": route.model, "key_source": route.key_source}


# Complexity above 15 (C901): one branch per error kind of the model library.
def _map_error(exc: Exception, route: _Route, settings: "Settings", secrets: list[str]) -> ChatError:  # noqa: C901
    ex = _litellm().exceptions

    def cls(*names: str) -> tuple[type, ...]:
        return tuple(c for c in (getattr(ex, n, None) for n in names) if isinstance(c, type))

    details = _provider_details(route)
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        details["provider_status"] = status
    text = redact(str(exc), secrets).strip()
    if text:
        details["provider_message"] = text[:500]
    who = "your" if route.key_source == "user" else "the server's"
    provider, model = route.provider, route.model

    if isinstance(exc, cls("Timeout")):
        return ChatError("timeout", f"{provider} did not answer within {settings.llm_timeout:g} seconds.", details)
    if isinstance(exc, cls("AuthenticationError", "PermissionDeniedError")):
        return ChatError("auth", f"{provider} refused {who} API key for {model}.", details)
    if isinstance(exc, cls("PaymentRequiredError")):
        return ChatError("auth", f"{provider} refused the request: the account behind {who} API key needs "
                         "payment or credit.", details)
    if isinstance(exc, cls("RateLimitError")):
        retry_after = _retry_after(exc)
        if retry_after is not None:
            details["retry_after"] = retry_after
        return ChatError("rate_limited", f"{provider} is rate-limiting requests; try again later.", details)
    if isinstance(exc, cls("ContextWindowExceededError")):
        return ChatError("invalid_parameters", f"The conversation is too long for {model}.",
                         {**details, "messages": "longer than the model's context window"})
    if isinstance(exc, cls("ContentPolicyViolationError")):
        return ChatError("invalid_parameters", f"{provider} refused the message under its content policy.",
                         {**details, "messages": "refused by the provider's content policy"})
    if isinstance(exc, cls("NotFoundError")):
        return ChatError("invalid_model", f"{provider} does not know the model {route.name!r} "
                         "(or its address on this server is wrong).", details)
    if isinstance(exc, cls("BadRequestError", "UnprocessableEntityError")):
        return ChatError("invalid_parameters", f"{provider} refused the request for {model}.",
                         {**details, "parameters": text[:500] or "refused by the provider"})
    if isinstance(exc, cls("ServiceUnavailableError", "InternalServerError", "BadGatewayError",
                           "APIConnectionError")):
        return ChatError("unavailable", f"{provider} is unavailable (could not get an answer for {model}).",
                         details)
    if isinstance(exc, cls("APIResponseValidationError")):
        return ChatError("bad_response", f"{provider} gave an answer for {model} that could not be read.",
                         details)
    # litellm wraps some statuses (403 from OpenAI-compatible servers, ...) in a plain APIError.
    if status in (401, 403):
        return ChatError("auth", f"{provider} refused {who} API key for {model} (HTTP {status}).", details)
    if status == 429:
        return ChatError("rate_limited", f"{provider} is rate-limiting requests; try again later.", details)
    if status == 408:
        return ChatError("timeout", f"{provider} timed out (HTTP 408).", details)
    if status == 404:
        return ChatError("invalid_model", f"{provider} does not know the model {route.name!r} "
                         "(or its address on this server is wrong).", details)
    if status in (400, 422):
        return ChatError("invalid_parameters", f"{provider} refused the request for {model}.",
                         {**details, "parameters": text[:500] or "refused by the provider"})
    if isinstance(status, int) and status >= 500:
        return ChatError("unavailable", f"{provider} failed (HTTP {status}).", details)
    details.setdefault("error_type", type(exc).__name__)
    return ChatError("bad_response", f"The call to {provider} for {model} failed unexpectedly.", details)


def _retry_after(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    try:
        value = headers.get("retry-after")
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


# ---- users' own provider keys, encrypted at rest --------------------------------------------------------

def user_keys_enabled(settings: "Settings") -> bool:
    return bool(settings.llm_user_keys_secret)


def _fernet(settings: "Settings"):
    if not settings.llm_user_keys_secret:
        raise ChatError("invalid_parameters", "This server does not store users' own provider keys "
                        "(CONTROLPLANE_LLM_USER_KEYS_SECRET is not set).",
                        {"api_key": "storing provider keys is not enabled on this server"})
    from cryptography.fernet import Fernet
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"controlplane/llm-user-keys",
               info=b"fernet v1").derive(settings.llm_user_keys_secret.encode())
    return Fernet(base64.urlsafe_b64encode(key))


def encrypt_user_key(settings: "Settings", api_key: str) -> str:
    """A user's provider key encrypted (Fernet, key derived with HKDF-SHA256 from
    CONTROLPLANE_LLM_USER_KEYS_SECRET) for storing; ChatError invalid_parameters when user keys are not
    enabled or the key is not plausible."""
    fernet = _fernet(settings)
    if not isinstance(api_key, str) or not api_key.strip():
        raise ChatError("invalid_parameters", "The provider key is empty.", {"api_key": "required"})
    api_key = api_key.strip()
    if len(api_key) > USER_KEY_MAX or any(c.isspace() or not c.isprintable() for c in api_key):
        raise ChatError("invalid_parameters", "The provider key is not valid.",
                        {"api_key": f"at most {USER_KEY_MAX} printable characters, no spaces"})
    return fernet.encrypt(api_key.encode()).decode("ascii")


def decrypt_user_key(settings: "Settings", token: str) -> str:
    """The provider key from encrypt_user_key's token; ChatError invalid_parameters when user keys are not
    enabled or the token cannot be read (e.g. CONTROLPLANE_LLM_USER_KEYS_SECRET changed)."""
    from cryptography.fernet import InvalidToken
    fernet = _fernet(settings)
    try:
        return fernet.decrypt(token.encode("ascii") if isinstance(token, str) else token).decode()
    except (InvalidToken, UnicodeError, TypeError, ValueError):
        raise ChatError("invalid_parameters", "The stored provider key can no longer be read (the server's "
                        "key secret changed?); set it again.",
                        {"api_key": "stored key cannot be decrypted; set it again"}) from None
