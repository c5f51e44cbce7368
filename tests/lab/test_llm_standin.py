"""Tests for the lab echo model (controlplane/lab/llm.py), over real HTTP: OpenAI's Chat Completions shapes,
its key check, its validation, its deterministic reply and token counts, and its fault switches."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from controlplane.lab.llm import HELP_LINE, LabLlm, count_tokens, reply_for, truncate_tokens
from tests.loop import LoopThread

KEY = "lab-test-key-0123456789"
TIMEOUT = 10




@pytest.fixture(scope="module")
def loop_thread():
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(scope="module")
def shared_llm(loop_thread):
    llm = LabLlm(port=0, api_key=KEY)
    loop_thread.run(llm.start())
    yield llm
    loop_thread.run(llm.stop())


@pytest.fixture
def llm(shared_llm):
    shared_llm.clear_faults()
    shared_llm.models = None
    yield shared_llm
    shared_llm.clear_faults()
    shared_llm.models = None


def post(llm, body, key=KEY, **kw):
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return requests.post(f"{llm.url}/chat/completions", json=body, headers=headers, timeout=TIMEOUT, **kw)


def chat(message="Hello, can you help me?", model="gpt-4", **extra):
    return {"model": model, "messages": [{"role": "user", "content": message}], **extra}


def assert_openai_error(response, status, param=None, code=None):
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


# ---- the reply -------------------------------------------------------------------------------------------

def test_url_is_an_openai_base_url(llm):
    assert llm.url.startswith("http://127.0.0.1:") and llm.url.endswith("/v1")
    assert llm.port != 0


def test_a_chat_completion_has_openai_shape_and_a_deterministic_reply(llm):
    before = int(time.time())
    r = post(llm, chat("Hello, can you help me?", temperature=0.7, max_tokens=2000))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert before <= body["created"] <= int(time.time()) + 1
    assert body["model"] == "gpt-4"
    [choice] = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    content = choice["message"]["content"]
    assert choice["message"]["role"] == "assistant"
    assert content == ("Lab assistant (model gpt-4) received: 'Hello, can you help me?' — 5 words.\n" + HELP_LINE)
    assert content == reply_for("gpt-4", "Hello, can you help me?")
    # The lab's token count: words and punctuation marks.
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": count_tokens(content),
                             "total_tokens": 7 + count_tokens(content)}
    # Same question, same answer; a new id.
    again = post(llm, chat("Hello, can you help me?", temperature=0.7, max_tokens=2000)).json()
    assert again["choices"][0]["message"]["content"] == content and again["id"] != body["id"]


def test_token_count_is_words_and_punctuation():
    assert count_tokens("") == 0
    assert count_tokens("Hello, world!") == 4
    assert count_tokens("it's 2 o'clock") == 7  # it ' s 2 o ' clock
    assert count_tokens("  many   spaces\n") == 2
    assert truncate_tokens("Hello, world! More", 3) == "Hello, world"
    assert truncate_tokens("short", 10) == "short"


def test_the_reply_answers_the_last_user_message_and_counts_every_message(llm):
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "first question"},
                {"role": "assistant", "content": "first answer"},
                {"role": "user", "content": [{"type": "text", "text": "second"}, {"type": "text", "text": "one"}]}]
    body = post(llm, {"model": "some/other-model", "messages": messages}).json()
    content = body["choices"][0]["message"]["content"]
    assert content.startswith("Lab assistant (model some/other-model) received: 'second\none' — 2 words.")
    assert body["usage"]["prompt_tokens"] == 3 + 2 + 2 + 2
    assert body["model"] == "some/other-model"


def test_one_word_is_singular_and_no_user_message_is_empty(llm):
    assert "— 1 word." in post(llm, chat("Hi")).json()["choices"][0]["message"]["content"]
    body = post(llm, {"model": "gpt-4", "messages": [{"role": "system", "content": "x"}]}).json()
    assert "received: '' — 0 words." in body["choices"][0]["message"]["content"]


def test_max_tokens_cuts_the_reply(llm):
    for field in ("max_tokens", "max_completion_tokens"):
        body = post(llm, chat("Hello there", **{field: 5})).json()
        choice = body["choices"][0]
        assert choice["finish_reason"] == "length"
        assert choice["message"]["content"] == "Lab assistant (model gpt"
        assert body["usage"]["completion_tokens"] == 5


def test_usage_and_the_reply_model_can_be_changed(llm):
    llm.omit_usage, llm.reply_model = True, "gpt-4-0613"
    body = post(llm, chat()).json()
    assert "usage" not in body and body["model"] == "gpt-4-0613"
    llm.clear_faults()
    body = post(llm, chat()).json()
    assert "usage" in body and body["model"] == "gpt-4"


def test_models_lists_the_lab_models(llm):
    r = requests.get(f"{llm.url}/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=TIMEOUT)
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list"
    ids = [m["id"] for m in body["data"]]
    assert "gpt-4" in ids and all(m["object"] == "model" for m in body["data"])
    llm.models = {"gpt-4", "tiny"}
    r = requests.get(f"{llm.url}/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=TIMEOUT)
    assert [m["id"] for m in r.json()["data"]] == ["gpt-4", "tiny"]


def test_an_unknown_model_is_404_when_the_lab_has_a_model_list(llm):
    llm.models = {"gpt-4"}
    assert post(llm, chat(model="gpt-4")).status_code == 200
    assert_openai_error(post(llm, chat(model="gpt-5")), 404, code="model_not_found")


# ---- the key ---------------------------------------------------------------------------------------------

def test_no_key_is_401(llm):
    error = assert_openai_error(post(llm, chat(), key=None), 401)
    assert "API key" in error["message"]
    r = requests.post(f"{llm.url}/chat/completions", json=chat(), headers={"Authorization": "Basic abc"},
                      timeout=TIMEOUT)
    assert_openai_error(r, 401)


def test_a_wrong_key_is_401_and_not_echoed(llm):
    wrong = "sk-wrong-0123456789abcdef"
    error = assert_openai_error(post(llm, chat(), key=wrong), 401, code="invalid_api_key")
    assert error["type"] == "invalid_request_error"
    assert wrong not in error["message"] and KEY not in error["message"]
    assert_openai_error(requests.get(f"{llm.url}/models", headers={"Authorization": f"Bearer {wrong}"},
                                     timeout=TIMEOUT), 401)


def test_requests_are_recorded_without_the_key(llm):
    post(llm, chat("remember me"))
    assert llm.requests[-1]["messages"][0]["content"] == "remember me"
    assert KEY not in repr(list(llm.requests))


# ---- validation ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("body,param", [
    ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "", "messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "gpt-4"}, "messages"),
    ({"model": "gpt-4", "messages": []}, "messages"),
    ({"model": "gpt-4", "messages": "hello"}, "messages"),
    ({"model": "gpt-4", "messages": ["hello"]}, "messages[0]"),
    ({"model": "gpt-4", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"model": "gpt-4", "messages": [{"role": "user"}]}, "messages[0].content"),
    ({"model": "gpt-4", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"model": "gpt-4", "messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0].text"),
    (chat(temperature=2.5), "temperature"),
    (chat(temperature=-0.1), "temperature"),
    (chat(temperature="hot"), "temperature"),
    (chat(temperature=True), "temperature"),
    (chat(top_p=1.5), "top_p"),
    (chat(max_tokens=0), "max_tokens"),
    (chat(max_tokens=1.5), "max_tokens"),
    (chat(max_completion_tokens=-3), "max_completion_tokens"),
    (chat(n=2), "n"),
    (chat(stream=True), "stream"),
])
def test_bad_bodies_are_400_naming_the_parameter(llm, body, param):
    assert_openai_error(post(llm, body), 400, param=param)


def test_bad_json_is_400(llm):
    r = requests.post(f"{llm.url}/chat/completions", data="{not json", timeout=TIMEOUT,
                      headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert_openai_error(r, 400)
    assert_openai_error(post(llm, ["a", "list"]), 400)


def test_unknown_paths_and_methods_answer_openai_errors(llm):
    headers = {"Authorization": f"Bearer {KEY}"}
    assert_openai_error(requests.get(f"{llm.url}/nothing", headers=headers, timeout=TIMEOUT), 404)
    assert_openai_error(requests.get(f"{llm.url}/chat/completions", headers=headers, timeout=TIMEOUT), 405)


# ---- fault switches --------------------------------------------------------------------------------------

def test_down_answers_503(llm):
    llm.down = True
    assert_openai_error(post(llm, chat()), 503)
    llm.down = False
    assert post(llm, chat()).status_code == 200


def test_fail_answers_the_status_the_given_number_of_times(llm):
    llm.fail(429, times=2)
    first = post(llm, chat())
    assert_openai_error(first, 429, code="rate_limit_exceeded")
    assert first.headers["Retry-After"] == "1"
    assert post(llm, chat()).status_code == 429
    assert post(llm, chat()).status_code == 200


def test_fail_without_times_lasts_until_cleared_and_only_hits_its_path(llm):
    llm.fail(500)
    for _ in range(3):
        assert_openai_error(post(llm, chat()), 500)
    assert requests.get(f"{llm.url}/models", headers={"Authorization": f"Bearer {KEY}"},
                        timeout=TIMEOUT).status_code == 200
    llm.clear_faults()
    assert post(llm, chat()).status_code == 200


def test_calls_counts_every_request(llm):
    before = llm.calls
    llm.fail(500, times=1)
    post(llm, chat())
    post(llm, chat(), key="wrong-key-but-counted")
    post(llm, chat())
    assert llm.calls - before == 3


def test_delay_holds_each_request(llm):
    llm.delay_seconds = 0.4
    start = time.monotonic()
    assert post(llm, chat()).status_code == 200
    assert time.monotonic() - start >= 0.4
    with pytest.raises(requests.Timeout):
        requests.post(f"{llm.url}/chat/completions", json=chat(), headers={"Authorization": f"Bearer {KEY}"},
                      timeout=0.1)


def test_stop_does_not_wait_for_delayed_requests(loop_thread):
    llm = LabLlm(port=0, api_key=KEY)
    loop_thread.run(llm.start())
    llm.delay_seconds = 30
    result = {}

    def slow():
        try:
            result["status"] = post(llm, chat()).status_code
        except requests.RequestException as exc:
            result["error"] = exc
    thread = threading.Thread(target=slow)
    thread.start()
    deadline = time.monotonic() + 5
    while llm.calls == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    start = time.monotonic()
    loop_thread.run(llm.stop())
    thread.join(TIMEOUT)
    assert time.monotonic() - start < 5
    assert result.get("status") == 503 or "error" in result
    with pytest.raises(requests.ConnectionError):
        post(llm, chat())


def test_an_api_key_is_required():
    with pytest.raises(ValueError):
        LabLlm(port=0, api_key="")


def test_lab_services_start_the_echo_model(tmp_path):
    from controlplane.lab.services import LabConfig
    from tests.conftest import free_port, start_lab_services

    config, services = start_lab_services(lambda: LabConfig(
        state_dir=tmp_path, proxmox_host="127.0.0.1", proxmox_port=free_port(), guacamole_port=free_port(),
        llm_port=free_port(), llm_api_key=KEY))
    try:
        assert services.llm.url == f"http://127.0.0.1:{config.llm_port}/v1"
        r = post(services.llm, chat("from the lab"))
        assert r.status_code == 200 and "from the lab" in r.json()["choices"][0]["message"]["content"]
    finally:
        services.stop()
    with pytest.raises(requests.ConnectionError):
        post(services.llm, chat())
