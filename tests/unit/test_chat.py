"""The AI-chat engine (controlplane/services/chat.py) through the real litellm against the lab echo model
(a real OpenAI-compatible HTTP server on a free port): content, tokens, cost from litellm's price table,
parameter checks, model ids, provider errors mapped to ChatError kinds, no secret in any error, and users'
own keys encrypted at rest."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from controlplane.config import Settings
from controlplane.lab.llm import LabLlm, count_tokens, reply_for
from controlplane.api.errors import chat_status
from controlplane.services import chat
from controlplane.services.chat import ChatError, ChatResult
from tests.loop import LoopThread
from tests.conftest import REPO, free_port

LAB_KEY = "lab-chat-key-7f3a9c1e5b"
WRONG_KEY = "sk-wrong-5e8d2b7a1c9f"
USER_SECRET = "user-keys-secret-" + "x" * 24
TIMEOUT = 10




@pytest.fixture(scope="module")
def shared_lab():
    lt = LoopThread()
    lab = LabLlm(port=0, api_key=LAB_KEY)
    lt.run(lab.start())
    yield lab
    lt.run(lab.stop())
    lt.close()


@pytest.fixture
def lab(shared_lab):
    shared_lab.clear_faults()
    shared_lab.models = None
    yield shared_lab
    shared_lab.clear_faults()
    shared_lab.models = None


@pytest.fixture
def settings(lab):
    """OpenAI pointed at the lab (as `make lab` does), and the lab as an OpenAI-compatible server too."""
    return Settings(llm_openai_api_key=LAB_KEY, llm_openai_base_url=lab.url, llm_compat_base_url=lab.url,
                    llm_compat_api_key=LAB_KEY, llm_timeout=5.0, jwt_secret="j" * 32)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def litellm_cost(model: str, prompt: int, completion: int) -> float:
    import litellm
    p, c = litellm.cost_per_token(model=model, prompt_tokens=prompt, completion_tokens=completion,
                                  custom_llm_provider="openai")
    return p + c


def assert_no_secret(err: ChatError, *secrets: str) -> None:
    text = " ".join([str(err), err.message, repr(err), json.dumps(err.details, default=str)])
    for secret in secrets:
        assert secret not in text, f"{secret!r} leaked into {text!r}"


# ---- a completion ----------------------------------------------------------------------------------------

def test_a_completion_gives_content_tokens_and_the_price_tables_cost(settings, lab):
    before = lab.calls
    result = chat.complete(settings, "openai/gpt-4", user("Hello, can you help me?"),
                           {"temperature": 0.7, "max_tokens": 2000})
    assert isinstance(result, ChatResult)
    assert result.content == reply_for("gpt-4", "Hello, can you help me?")
    assert result.model == "openai/gpt-4"
    assert result.prompt_tokens == count_tokens("Hello, can you help me?") == 7
    assert result.completion_tokens == count_tokens(result.content)
    assert result.total_tokens == result.prompt_tokens + result.completion_tokens
    assert result.cost_known is True
    assert result.cost > 0
    assert result.cost == pytest.approx(litellm_cost("gpt-4", result.prompt_tokens, result.completion_tokens),
                                        rel=1e-12)
    # What the lab received: the model name without the provider, the parameters as given, one call.
    assert lab.calls - before == 1
    sent = lab.requests[-1]
    assert sent["model"] == "gpt-4" and sent["temperature"] == 0.7 and sent["max_tokens"] == 2000
    assert sent["messages"] == user("Hello, can you help me?")


def test_a_conversation_sends_every_message(settings, lab):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "one"},
                {"role": "assistant", "content": "two"}, {"role": "user", "content": "three four"}]
    result = chat.complete(settings, "openai/gpt-4", messages)
    assert "received: 'three four' — 2 words." in result.content
    assert result.prompt_tokens == 3 + 1 + 1 + 2  # "Be brief." is 3 tokens
    assert lab.requests[-1]["messages"] == messages
    assert "temperature" not in lab.requests[-1]


def test_price_matches_litellms_table():
    import litellm
    entry = litellm.model_cost["gpt-4"]
    cost, known = chat.price("openai/gpt-4", 1000, 500)
    assert known is True
    assert cost == pytest.approx(1000 * entry["input_cost_per_token"] + 500 * entry["output_cost_per_token"])
    assert chat.price("openai/gpt-4", 0, 0) == (0.0, True)
    assert chat.price("openai/no-such-model-here", 1000, 500) == (0.0, False)
    assert chat.price("compat/gpt-4", 1000, 500) == (0.0, False)  # self-hosted: no list price
    assert chat.price("not-a-model-id", 10, 10) == (0.0, False)


def test_an_unknown_model_at_a_compat_server_costs_nothing_known(settings, lab):
    result = chat.complete(settings, "compat/llama3.1:8b", user("Hi there"))
    assert result.content.startswith("Lab assistant (model llama3.1:8b) received: 'Hi there'")
    assert result.model == "compat/llama3.1:8b"
    assert result.total_tokens > 0
    assert (result.cost, result.cost_known) == (0.0, False)
    assert lab.requests[-1]["model"] == "llama3.1:8b"


def test_an_openai_model_missing_from_the_price_table_is_not_priced(settings):
    result = chat.complete(settings, "openai/lab-echo", user("Hi"))
    assert result.total_tokens > 0 and (result.cost, result.cost_known) == (0.0, False)


def test_a_dated_model_name_in_the_answer_is_priced(settings, lab):
    """The table does not know the asked name, but knows the one the provider answers with."""
    lab.reply_model = "gpt-4-0613"
    result = chat.complete(settings, "openai/lab-gpt4-alias", user("Hi"))
    assert result.model == "openai/lab-gpt4-alias" and result.cost_known is True
    assert result.cost == pytest.approx(litellm_cost("gpt-4-0613", result.prompt_tokens, result.completion_tokens))


def test_an_answer_without_usage_has_unknown_tokens_and_cost(settings, lab):
    lab.omit_usage = True
    result = chat.complete(settings, "openai/gpt-4", user("Hi"))
    assert result.content.startswith("Lab assistant")
    assert (result.total_tokens, result.cost, result.cost_known) == (0, 0.0, False)


def test_the_users_own_key_replaces_the_servers(settings, lab):
    no_server_key = settings.replace(llm_openai_api_key="")
    with pytest.raises(ChatError) as err:
        chat.complete(no_server_key, "openai/gpt-4", user("Hi"))
    assert err.value.kind == "invalid_model"
    result = chat.complete(no_server_key, "openai/gpt-4", user("Hi"), api_key=LAB_KEY)
    assert result.content.startswith("Lab assistant (model gpt-4)")


# ---- parameters ------------------------------------------------------------------------------------------

def test_validate_parameters_accepts_and_normalises():
    assert chat.validate_parameters(None) == {}
    assert chat.validate_parameters({}) == {}
    assert chat.validate_parameters({"temperature": 0, "max_tokens": 1, "top_p": 1}) == \
        {"temperature": 0.0, "max_tokens": 1, "top_p": 1.0}
    assert chat.validate_parameters({"temperature": 2, "max_tokens": 4000.0, "top_p": None}) == \
        {"temperature": 2.0, "max_tokens": 4000}
    assert chat.validate_parameters({"max_tokens": chat.MAX_TOKENS_CAP}) == {"max_tokens": chat.MAX_TOKENS_CAP}


def test_validate_parameters_names_every_bad_field():
    with pytest.raises(ChatError) as err:
        chat.validate_parameters({"temperature": 2.5, "max_tokens": 0, "top_p": -0.1, "presence_penalty": 1})
    e = err.value
    assert e.kind == "invalid_parameters" and chat_status(e.kind, e.details.get('key_source')) == 400
    assert set(e.details) == {"temperature", "max_tokens", "top_p", "presence_penalty"}
    assert "between 0 and 2" in e.details["temperature"]
    assert "between 1 and 32768" in e.details["max_tokens"]
    assert "between 0 and 1" in e.details["top_p"]
    assert "unknown parameter" in e.details["presence_penalty"]
    for field in e.details:
        assert field in e.message


@pytest.mark.parametrize("params,field", [
    ({"temperature": "0.7"}, "temperature"),
    ({"temperature": True}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"top_p": [1]}, "top_p"),
    ({"max_tokens": 12.5}, "max_tokens"),
    ({"max_tokens": "100"}, "max_tokens"),
    ({"max_tokens": False}, "max_tokens"),
    ({"max_tokens": chat.MAX_TOKENS_CAP + 1}, "max_tokens"),
])
def test_validate_parameters_rejects_wrong_types(params, field):
    with pytest.raises(ChatError) as err:
        chat.validate_parameters(params)
    assert list(err.value.details) == [field]


def test_validate_parameters_needs_an_object():
    with pytest.raises(ChatError) as err:
        chat.validate_parameters([("temperature", 1)])
    assert err.value.details == {"parameters": "must be an object"}


def test_max_tokens_is_capped_at_the_models_own_maximum():
    import litellm
    ceiling = litellm.get_model_info(model="gpt-4", custom_llm_provider="openai")["max_output_tokens"]
    assert chat.max_output_tokens("openai/gpt-4") == ceiling
    assert chat.validate_parameters({"max_tokens": ceiling}, model="openai/gpt-4") == {"max_tokens": ceiling}
    with pytest.raises(ChatError) as err:
        chat.validate_parameters({"max_tokens": ceiling + 1}, model="openai/gpt-4")
    assert err.value.details == {"max_tokens": f"must be between 1 and {ceiling} for openai/gpt-4, not {ceiling + 1}"}
    # Unknown and self-hosted models get the general cap.
    assert chat.max_output_tokens("compat/llama3") == chat.MAX_TOKENS_CAP
    assert chat.max_output_tokens("openai/no-such-model") == chat.MAX_TOKENS_CAP


def test_bad_parameters_never_reach_the_provider(settings, lab):
    before = lab.calls
    with pytest.raises(ChatError) as err:
        chat.complete(settings, "openai/gpt-4", user("Hi"), {"temperature": 3, "max_tokens": -1})
    assert err.value.kind == "invalid_parameters"
    assert set(err.value.details) == {"temperature", "max_tokens"}
    assert lab.calls == before


@pytest.mark.parametrize("messages,field", [
    ([], "messages"),
    ("hello", "messages"),
    ([{"role": "wizard", "content": "x"}], "messages[0].role"),
    ([{"role": "user", "content": "x"}, {"role": "user", "content": None}], "messages[1].content"),
    (["hello"], "messages[0]"),
])
def test_bad_messages_are_invalid_parameters(settings, lab, messages, field):
    before = lab.calls
    with pytest.raises(ChatError) as err:
        chat.complete(settings, "openai/gpt-4", messages)
    assert err.value.kind == "invalid_parameters" and field in err.value.details
    assert lab.calls == before


# ---- model ids -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model,expected", [
    ("openai/gpt-4", ("openai", "gpt-4")),
    ("anthropic/claude-3-opus", ("anthropic", "claude-3-opus")),
    ("openrouter/meta-llama/llama-3.1-70b-instruct", ("openrouter", "meta-llama/llama-3.1-70b-instruct")),
    ("compat/llama3.1:8b", ("compat", "llama3.1:8b")),
    ("OpenAI/gpt-4", ("openai", "gpt-4")),
    (" openai/gpt-4 ", ("openai", "gpt-4")),
])
def test_parse_model(model, expected):
    assert chat.parse_model(model) == expected


@pytest.mark.parametrize("model", ["", "gpt-4", "openai/", "/gpt-4", "mistral/large", "openai/gpt 4",
                                   "openai/" + "x" * 201, None, 42])
def test_parse_model_rejects(model):
    with pytest.raises(ChatError) as err:
        chat.parse_model(model)
    assert err.value.kind == "invalid_model" and chat_status(err.value.kind, err.value.details.get('key_source')) == 400


def test_a_provider_must_be_configured():
    only_openai = Settings(llm_openai_api_key="sk-server-key-123456")
    assert chat.configured_providers(Settings()) == []
    assert chat.configured_providers(only_openai) == ["openai"]
    assert chat.check_model(only_openai, "openai/gpt-4") == ("openai", "gpt-4")
    with pytest.raises(ChatError) as err:
        chat.check_model(only_openai, "anthropic/claude-3-opus")
    e = err.value
    assert e.kind == "invalid_model"
    assert e.details["configured_providers"] == ["openai"]
    assert "configured providers: openai" in e.message and "CONTROLPLANE_LLM_ANTHROPIC_API_KEY" in e.message
    # A user's own key enables a hosted provider, never compat (which needs the server's URL).
    assert chat.check_model(only_openai, "anthropic/claude-3-opus", user_key=True) == ("anthropic", "claude-3-opus")
    with pytest.raises(ChatError, match="CONTROLPLANE_LLM_COMPAT_BASE_URL"):
        chat.check_model(only_openai, "compat/llama3", user_key=True)
    with pytest.raises(ChatError, match="configured providers: none"):
        chat.check_model(Settings(), "openai/gpt-4")
    everything = Settings(llm_openai_api_key="a", llm_anthropic_api_key="b", llm_openrouter_api_key="c",
                          llm_compat_base_url="http://127.0.0.1:11434/v1")
    assert chat.configured_providers(everything) == ["openai", "anthropic", "openrouter", "compat"]


def test_routes_to_litellm():
    s = Settings(llm_openai_api_key="sk-o", llm_anthropic_api_key="sk-a", llm_openrouter_api_key="sk-r",
                 llm_compat_base_url="http://127.0.0.1:11434/v1/")
    r = chat._route(s, "openai/gpt-4", None)
    assert (r.litellm_model, r.api_key, r.api_base, r.key_source) == ("openai/gpt-4", "sk-o", chat.OPENAI_BASE_URL,
                                                                      "server")
    r = chat._route(s, "anthropic/claude-opus-4-5", "sk-user")
    assert (r.litellm_model, r.api_key, r.api_base, r.key_source) == ("anthropic/claude-opus-4-5", "sk-user", None,
                                                                      "user")
    r = chat._route(s, "openrouter/anthropic/claude-opus-4-5", None)
    assert (r.litellm_model, r.api_key) == ("openrouter/anthropic/claude-opus-4-5", "sk-r")
    r = chat._route(s, "compat/llama3", None)
    assert (r.litellm_model, r.api_key, r.api_base) == ("openai/llama3", chat.NO_KEY, "http://127.0.0.1:11434/v1")


# ---- provider errors -------------------------------------------------------------------------------------

def test_a_wrong_server_key_is_auth_and_leaks_no_key(settings, lab):
    bad = settings.replace(llm_openai_api_key=WRONG_KEY)
    with pytest.raises(ChatError) as err:
        chat.complete(bad, "openai/gpt-4", user("Hi"))
    e = err.value
    assert e.kind == "auth" and chat_status(e.kind, e.details.get('key_source')) == 502
    assert e.details["key_source"] == "server" and e.details["provider_status"] == 401
    assert "provider_message" in e.details  # the provider's words, redacted
    assert_no_secret(e, WRONG_KEY, WRONG_KEY[:12], LAB_KEY, "j" * 32)
    assert e.__cause__ is None and e.__suppress_context__


def test_a_wrong_user_key_is_auth_blamed_on_the_user(settings):
    with pytest.raises(ChatError) as err:
        chat.complete(settings, "openai/gpt-4", user("Hi"), api_key=WRONG_KEY)
    e = err.value
    assert e.kind == "auth" and e.details["key_source"] == "user" and chat_status(e.kind, e.details.get('key_source')) == 400
    assert "your API key" in e.message
    assert_no_secret(e, WRONG_KEY, LAB_KEY)


def test_a_provider_that_is_down_is_unavailable(settings, lab):
    lab.down = True
    with pytest.raises(ChatError) as err:
        chat.complete(settings, "openai/gpt-4", user("Hi"))
    assert err.value.kind == "unavailable" and chat_status(err.value.kind, err.value.details.get('key_source')) == 503
    assert err.value.details["provider_status"] == 503
    assert_no_secret(err.value, LAB_KEY)


def test_a_provider_that_does_not_listen_is_unavailable(settings):
    nobody = settings.replace(llm_openai_base_url=f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(ChatError) as err:
        chat.complete(nobody, "openai/gpt-4", user("Hi"))
    assert err.value.kind == "unavailable"


def test_a_slow_provider_is_a_timeout(settings, lab):
    lab.delay_seconds = 30
    start = time.monotonic()
    with pytest.raises(ChatError) as err:
        chat.complete(settings.replace(llm_timeout=0.5), "openai/gpt-4", user("Hi"))
    assert time.monotonic() - start < 20  # gave up, long before the answer (a margin for a loaded machine)
    e = err.value
    assert e.kind == "timeout" and chat_status(e.kind, e.details.get('key_source')) == 504 and "0.5 seconds" in e.message


@pytest.mark.parametrize("status,kind,http", [
    (500, "unavailable", 503),
    (502, "unavailable", 503),
    (503, "unavailable", 503),
    (429, "rate_limited", 429),
    (400, "invalid_parameters", 400),
    (401, "auth", 502),
    (403, "auth", 502),
    (408, "timeout", 504),
    (422, "invalid_parameters", 400),
    (504, "timeout", 504),  # a gateway timeout: litellm raises Timeout
    (404, "invalid_model", 400),
])
def test_provider_statuses_map_to_kinds_without_retries(settings, lab, status, kind, http):
    lab.fail(status)
    before = lab.calls
    with pytest.raises(ChatError) as err:
        chat.complete(settings, "openai/gpt-4", user("Hi"))
    assert (err.value.kind, chat_status(err.value.kind, err.value.details.get('key_source'))) == (kind, http)
    assert lab.calls - before == 1  # num_retries=0, max_retries=0: retrying is the caller's business
    assert_no_secret(err.value, LAB_KEY)


def test_a_rate_limit_carries_retry_after(settings, lab):
    lab.fail(429, times=1)
    with pytest.raises(ChatError) as err:
        chat.complete(settings, "openai/gpt-4", user("Hi"))
    assert err.value.details.get("retry_after") == 1.0
    assert chat.complete(settings, "openai/gpt-4", user("Hi")).content  # the next call goes through


def test_a_model_the_provider_does_not_know_is_invalid_model(settings, lab):
    lab.models = {"gpt-4"}
    with pytest.raises(ChatError) as err:
        chat.complete(settings, "openai/gpt-5-lab", user("Hi"))
    assert err.value.kind == "invalid_model"
    assert err.value.details["provider_status"] == 404


def test_chat_error_kinds_are_checked():
    with pytest.raises(ValueError):
        ChatError("oops", "x")
    e = ChatError("timeout", "slow")
    assert (str(e), e.details, chat_status(e.kind, e.details.get('key_source'))) == ("slow", {}, 504)


def test_redact():
    text = "Incorrect API key provided: sk-abc***********xyz. Bearer abc.def and sk-proj-abcdefghijkl, s3cr3t-value"
    out = chat.redact(text, ["s3cr3t-value"])
    for leaked in ("sk-abc", "***", "abc.def", "sk-proj-abcdefghijkl", "s3cr3t-value"):
        assert leaked not in out
    assert out.startswith("Incorrect API key provided: [redacted]")


# ---- users' own keys -------------------------------------------------------------------------------------

def test_user_keys_round_trip_encrypted():
    s = Settings(llm_user_keys_secret=USER_SECRET)
    assert chat.user_keys_enabled(s)
    token = chat.encrypt_user_key(s, "  sk-user-own-key-123456  ")
    assert "sk-user-own-key-123456" not in token and USER_SECRET not in token
    assert chat.decrypt_user_key(s, token) == "sk-user-own-key-123456"
    assert chat.encrypt_user_key(s, "sk-user-own-key-123456") != token  # Fernet: fresh IV each time


def test_user_keys_cannot_be_read_with_another_secret():
    token = chat.encrypt_user_key(Settings(llm_user_keys_secret=USER_SECRET), "sk-user-own-key-123456")
    with pytest.raises(ChatError) as err:
        chat.decrypt_user_key(Settings(llm_user_keys_secret="another-secret-" + "y" * 20), token)
    assert err.value.kind == "invalid_parameters" and "api_key" in err.value.details
    with pytest.raises(ChatError):
        chat.decrypt_user_key(Settings(llm_user_keys_secret=USER_SECRET), "not-a-token")


def test_user_keys_are_refused_without_the_secret():
    s = Settings()
    assert not chat.user_keys_enabled(s)
    with pytest.raises(ChatError) as err:
        chat.encrypt_user_key(s, "sk-user-own-key-123456")
    e = err.value
    assert e.kind == "invalid_parameters" and "CONTROLPLANE_LLM_USER_KEYS_SECRET" in e.message
    assert e.details == {"api_key": "storing provider keys is not enabled on this server"}
    assert_no_secret(e, "sk-user-own-key-123456")
    with pytest.raises(ChatError):
        chat.decrypt_user_key(s, "gAAAAA")


@pytest.mark.parametrize("key", ["", "   ", "sk with space", "x" * 1001, None])
def test_implausible_user_keys_are_refused(key):
    with pytest.raises(ChatError) as err:
        chat.encrypt_user_key(Settings(llm_user_keys_secret=USER_SECRET), key)
    assert list(err.value.details) == ["api_key"]


# ---- import: fast, no network ----------------------------------------------------------------------------

def test_importing_the_engine_leaves_litellm_out_and_litellm_never_goes_online():
    """In a fresh interpreter: importing chat does not import litellm; an API worker's start
    (gunicorn_conf.post_worker_init, which `controlplane api` gives gunicorn) imports and warms it
    before the worker serves; litellm, its warm-up and a price lookup open no socket to anywhere (its
    price table is the bundled one)."""
    script = textwrap.dedent("""
        import json, os, sys, time
        events = []
        def hook(event, args):
            if event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "urllib.Request"):
                events.append([event, repr(args)[:200]])
        sys.addaudithook(hook)
        os.environ.pop("LITELLM_LOCAL_MODEL_COST_MAP", None)
        start = time.monotonic()
        import controlplane.services.chat as chat
        imported = time.monotonic() - start
        assert "litellm" not in sys.modules, "litellm is imported eagerly"
        start = time.monotonic()
        from controlplane import gunicorn_conf
        gunicorn_conf.post_worker_init(None)
        assert "litellm" in sys.modules, "the worker's start did not import litellm"
        loaded = time.monotonic() - start
        cost = chat.price("openai/gpt-4", 100, 50)
        print(json.dumps({"import": imported, "litellm": loaded, "events": events, "cost": cost,
                          "env": os.environ.get("LITELLM_LOCAL_MODEL_COST_MAP")}))
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["events"] == [], report["events"]
    assert report["env"] == "True"
    assert report["cost"][1] is True and report["cost"][0] > 0
    assert "model cost map" not in out.stderr.lower()


def test_the_api_command_gives_gunicorn_the_hooks_that_preload_the_model_library(monkeypatch, tmp_path):
    from controlplane import cli, metrics
    ran = []
    monkeypatch.setattr(cli.os, "execv", lambda path, argv: ran.append(argv))
    # The command names the metrics folder in the environment gunicorn inherits: here, a folder of this
    # test's, taken back at its end (the other tests of this process count in memory).
    monkeypatch.setenv("CONTROLPLANE_METRICS_DIR", str(tmp_path / "metrics"))
    monkeypatch.setenv(metrics.FOLDER_VARIABLE, "")
    cli.main(["api", "--workers", "1"])
    assert os.environ[metrics.FOLDER_VARIABLE] == str(tmp_path / "metrics")
    argv = ran[0]
    assert argv[argv.index("--config") + 1] == "python:controlplane.gunicorn_conf"
    assert argv[-1] == "controlplane:create_app()"
