"""Secret redaction in logs (controlplane/logs.py)."""
from __future__ import annotations

import io
import logging

import pytest

from controlplane.config import Settings
from controlplane.logs import REDACTED, RedactSecrets, configure_logging, redact

SECRET = "pve-Secret-42"
OTHER = "guac-Other-99"


def record(msg, *args, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("controlplane.test", logging.INFO, __file__, 1, msg, args or None, exc_info)


def formatted(filter_: RedactSecrets, rec: logging.LogRecord) -> str:
    assert filter_.filter(rec) is True  # redaction never drops a record
    return logging.Formatter("%(message)s").format(rec)


# ---- redact() -----------------------------------------------------------------------------------

def test_redact_replaces_every_occurrence_of_every_secret():
    text = f"user=root pass={SECRET} again {SECRET} guac={OTHER}"
    assert redact(text, [SECRET, OTHER]) == f"user=root pass={REDACTED} again {REDACTED} guac={REDACTED}"


def test_redact_leaves_text_without_secrets_alone():
    assert redact("nothing to hide", [SECRET]) == "nothing to hide"
    assert redact("nothing to hide", []) == "nothing to hide"
    assert redact("", [SECRET]) == ""


def test_redact_ignores_empty_secrets():
    assert redact("abc", [""]) == "abc"


def test_redact_hides_a_secret_that_contains_another_one_completely():
    # proxmox_password is a prefix of guacamole_password: the longer one must not leak its tail
    short, long = "hunter22", "hunter22-and-more"
    for order in ([short, long], [long, short]):
        out = redact(f"a={long} b={short}", order)
        assert "and-more" not in out and "hunter" not in out, (order, out)


# ---- the RedactSecrets filter -----------------------------------------------------------------------

def test_filter_redacts_the_message_itself():
    f = RedactSecrets([SECRET])
    assert formatted(f, record(f"logging in with {SECRET}")) == f"logging in with {REDACTED}"


def test_filter_redacts_secrets_passed_as_args():
    f = RedactSecrets([SECRET, OTHER])
    rec = record("connect %s with password %s and %r", "pve1", SECRET, {"pw": OTHER})
    out = formatted(f, rec)
    assert SECRET not in out and OTHER not in out
    assert out == f"connect pve1 with password {REDACTED} and {{'pw': '{REDACTED}'}}"
    # the args are consumed, so no later formatting can bring the secret back
    assert rec.args == () and SECRET not in str(rec.msg)


def test_filter_keeps_clean_records_untouched():
    f = RedactSecrets([SECRET])
    rec = record("vm %s is %s", 10001, "running")
    assert formatted(f, rec) == "vm 10001 is running"
    assert rec.msg == "vm %s is %s" and rec.args == (10001, "running")  # lazy formatting kept


def test_filter_ignores_empty_and_very_short_secrets():
    f = RedactSecrets(["", "ab", "xyz", SECRET])
    assert f.secrets == [SECRET]
    assert formatted(f, record("ab xyz stay")) == "ab xyz stay"


def test_filter_prefers_the_longest_secret():
    short, long = "hunter22", "hunter22-and-more"
    f = RedactSecrets([short, long])
    assert formatted(f, record("%s / %s", long, short)) == f"{REDACTED} / {REDACTED}"


def test_filter_redacts_exception_text():
    f = RedactSecrets([SECRET])
    try:
        raise RuntimeError(f"login failed for password {SECRET}")
    except RuntimeError:
        import sys
        rec = record("refresh failed", exc_info=sys.exc_info())
    out = formatted(f, rec)
    assert "login failed for password" in out  # the traceback is still there ...
    assert SECRET not in out  # ... without the secret


# ---- configure_logging -----------------------------------------------------------------------------

@pytest.fixture
def root_stream():
    """One stream handler of our own on the root logger; handlers, filters and level restored afterwards."""
    root = logging.getLogger()
    saved_filters, saved_level = {h: h.filters[:] for h in root.handlers}, root.level
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    try:
        yield stream, handler
    finally:
        root.removeHandler(handler)
        for h, filters in saved_filters.items():
            h.filters[:] = filters
        root.setLevel(saved_level)


def test_configure_logging_redacts_the_settings_secrets(root_stream):
    stream, handler = root_stream
    settings = Settings(proxmox_password=SECRET, guacamole_password=OTHER, jwt_secret="j" * 40)
    configure_logging(settings)
    logging.getLogger("controlplane.anything").info("pve=%s guac=%s jwt=%s", SECRET, OTHER, "j" * 40)
    out = stream.getvalue()
    assert SECRET not in out and OTHER not in out and "j" * 40 not in out
    assert out.count(REDACTED) == 3


def test_configure_logging_replaces_its_filter_instead_of_stacking(root_stream):
    stream, handler = root_stream
    configure_logging(Settings(proxmox_password=SECRET))
    configure_logging(Settings(proxmox_password=OTHER))
    filters = [f for f in handler.filters if isinstance(f, RedactSecrets)]
    assert len(filters) == 1 and filters[0].secrets == [OTHER]
    plain = [h for h in logging.getLogger().handlers if type(h) is logging.StreamHandler]
    assert plain == [handler]  # a stream handler existed: no second one added


def test_user_text_cannot_forge_a_log_line_or_a_terminal_sequence():
    filter_ = RedactSecrets([SECRET])
    path = "/api/v1/desktops/x\r\n2026-12-04 INFO controlplane: admin logged in\x1b[2J\u2028\ud800"
    text = formatted(filter_, record("unhandled error on %s %s", "GET", path))
    assert "\n" not in text and "\r" not in text and "\x1b" not in text and "\u2028" not in text
    assert "\\x0d\\x0a2026-12-04 INFO" in text and "\\x1b[2J" in text and "\\u2028\\ud800" in text
    # still redacted, and a record without secrets configured is defused too
    assert REDACTED in formatted(filter_, record("token %s\n", SECRET))
    assert formatted(RedactSecrets([]), record("id %s", "a\nb")) == "id a\\x0ab"
