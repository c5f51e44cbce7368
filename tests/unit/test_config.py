"""Settings (controlplane/config.py): parsing CONTROLPLANE_* variables, the round trip through to_env,
secrets() and the validation rules."""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from controlplane.config import REPO_ROOT, SECRET_FIELDS, ConfigError, Settings

GOOD_SECRET = "s" * 32


def env(**values) -> dict[str, str]:
    return {"CONTROLPLANE_" + k.upper(): v for k, v in values.items()}


# ---- from_env ----------------------------------------------------------------------------------------

def test_from_env_with_an_empty_mapping_gives_the_defaults():
    assert Settings.from_env({}) == Settings()


def test_from_env_reads_the_given_mapping_not_os_environ(monkeypatch):
    for name in [n for n in os.environ if n.startswith("CONTROLPLANE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CONTROLPLANE_PORT", "9999")
    assert Settings.from_env({}).port == 8080
    assert Settings.from_env().port == 9999  # without a mapping: os.environ


def test_from_env_converts_each_type():
    s = Settings.from_env(env(port="9000", proxmox_api_timeout="0.25", lab="true", var_dir="/srv/cp",
                              proxmox_node="pve7", jwt_secret=GOOD_SECRET))
    assert s.port == 9000 and isinstance(s.port, int)
    assert s.proxmox_api_timeout == 0.25
    assert s.lab is True
    assert s.var_dir == Path("/srv/cp") and isinstance(s.var_dir, Path)
    assert s.proxmox_node == "pve7"
    assert s.jwt_secret == GOOD_SECRET


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", "Yes", "on", " on "])
def test_true_values(raw):
    assert Settings.from_env(env(proxmox_verify_ssl=raw)).proxmox_verify_ssl is True


@pytest.mark.parametrize("raw", ["0", "false", "False", "no", "OFF", ""])
def test_false_values(raw):
    assert Settings.from_env(env(lab=raw)).lab is False


@pytest.mark.parametrize("raw", ["maybe", "2", "y", "enabled"])
def test_a_bad_bool_names_the_variable(raw):
    with pytest.raises(ConfigError, match=r"CONTROLPLANE_PROXMOX_FULL_CLONE must be true or false") as err:
        Settings.from_env(env(proxmox_full_clone=raw))
    assert repr(raw) in str(err.value)


@pytest.mark.parametrize("raw", ["abc", "1.5", "", "10k"])
def test_a_bad_int_names_the_variable(raw):
    with pytest.raises(ConfigError, match=r"CONTROLPLANE_JOB_TIMEOUT must be an integer"):
        Settings.from_env(env(job_timeout=raw))


def test_a_bad_float_names_the_variable():
    with pytest.raises(ConfigError, match=r"CONTROLPLANE_PROXMOX_API_TIMEOUT must be a number"):
        Settings.from_env(env(proxmox_api_timeout="fast"))
    with pytest.raises(ConfigError, match=r"CONTROLPLANE_LLM_TIMEOUT must be a number"):
        Settings.from_env(env(llm_timeout="1m"))


def test_llm_defaults():
    s = Settings()
    assert (s.llm_timeout, s.llm_default_model) == (60.0, "openai/gpt-4")
    assert not (s.llm_openai_api_key or s.llm_openai_base_url or s.llm_anthropic_api_key or s.llm_openrouter_api_key
                or s.llm_compat_base_url or s.llm_compat_api_key or s.llm_user_keys_secret)
    assert Settings.from_env(env(llm_timeout="2.5")).llm_timeout == 2.5


@pytest.mark.parametrize("name", ["job_timeout", "reaper_interval", "abandoned_after", "port", "proxmox_timeout"])
@pytest.mark.parametrize("raw", ["0", "-5"])
def test_durations_and_the_port_must_be_positive(name, raw):
    with pytest.raises(ConfigError, match=f"CONTROLPLANE_{name.upper()}"):
        Settings.from_env(env(**{name: raw}))


@pytest.mark.parametrize("name,raw", [
    ("ip_wait_retries", "-1"), ("ip_wait_delay", "-1"), ("max_resumes", "-1"), ("guacamole_port", "-1"),
    ("port", "65536"), ("proxmox_port", "0"), ("proxmox_port", "70000"), ("guacamole_port", "65536"),
    ("proxmox_api_timeout", "0"), ("proxmox_api_timeout", "-1"),
    ("max_request_body", "100"), ("ws_max_message", "100"), ("ws_max_message", "99999999"),
    ("ws_auth_timeout", "0"), ("ws_auth_timeout", "301"), ("ws_send_timeout", "0"),
    ("ws_max_sockets_per_user", "-1"), ("ws_message_rate", "often"),
])
def test_counts_ports_and_timeouts_out_of_range(name, raw):
    with pytest.raises(ConfigError, match=f"CONTROLPLANE_{name.upper()}"):
        Settings.from_env(env(**{name: raw}))


def test_zero_is_fine_where_it_means_none_or_default():
    s = Settings.from_env(env(max_resumes="0", guacamole_port="0", ip_wait_delay="0"))
    assert (s.max_resumes, s.guacamole_port, s.ip_wait_delay) == (0, 0, 0)
    assert s.effective_guacamole_port == 5900


def test_overrides_win_over_the_environment_and_are_validated():
    assert Settings.from_env(env(port="9000"), port=9100).port == 9100
    with pytest.raises(ConfigError, match="CONTROLPLANE_PORT"):
        Settings.from_env(env(port="9000"), port=0)


def test_extra_and_unknown_variables_are_not_read():
    s = Settings.from_env({"CONTROLPLANE_EXTRA": "{'x': 1}", "CONTROLPLANE_NO_SUCH_THING": "1", "PORT": "1"})
    assert s == Settings()


# ---- to_env round trip ------------------------------------------------------------------------------

def test_to_env_gives_strings_with_lowercase_bools():
    e = Settings(lab=True, proxmox_verify_ssl=False, port=8123).to_env()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in e.items())
    assert e["CONTROLPLANE_LAB"] == "true" and e["CONTROLPLANE_PROXMOX_VERIFY_SSL"] == "false"
    assert e["CONTROLPLANE_PORT"] == "8123"
    assert "CONTROLPLANE_EXTRA" not in e
    names = {"CONTROLPLANE_" + f.name.upper() for f in dataclasses.fields(Settings) if f.name != "extra"}
    assert set(e) == names


def test_round_trip_of_the_defaults():
    s = Settings()
    assert Settings.from_env(s.to_env()) == s


def test_round_trip_of_every_field_changed(tmp_path):
    plans = tmp_path / "plans.yml"
    plans.write_text("{}\n")
    changed = {}
    for f in dataclasses.fields(Settings):
        value = getattr(Settings(), f.name)
        if f.name == "extra":
            continue
        if isinstance(value, bool):
            changed[f.name] = not value
        elif isinstance(value, int):
            changed[f.name] = value + 7
        elif isinstance(value, float):
            changed[f.name] = value + 0.5
        elif isinstance(value, Path):
            changed[f.name] = tmp_path / f.name
        else:
            changed[f.name] = f"{value}x" if value else f"value-of-{f.name}"
    changed.update(plans_file=plans, timezone="Asia/Kolkata", guacamole_protocol="rdp", jwt_secret=GOOD_SECRET,
                   jwt_jwks_url="", jwt_public_key="", vmid_min=20000, vmid_max=20999,
                   llm_default_model="anthropic/claude-opus-4-5", llm_openai_base_url="http://llm.example/v1",
                   llm_compat_base_url="http://127.0.0.1:11434/v1", llm_user_keys_secret="k" * 32, rate_limit_api="7/second",
                   rate_limit_desktop_create="3/day", rate_limit_project_create="2/day", rate_limit_chat="9/hour",
                   shares_secret="h" * 32, shares_public_url="https://files.example/shares", retry_backoff="2,3",
                   guacamole_json_secret="ab" * 16, connect_mode="json", oidc_issuer="https://sso.example/realms/r")
    changed["ws_message_rate"] = "9/second"  # a rate, as the rate limits
    s = Settings(**changed)
    s.validate()
    assert all(getattr(s, k) != getattr(Settings(), k) for k in changed if k not in ("jwt_jwks_url", "jwt_public_key"))
    assert Settings.from_env(s.to_env()) == s


def test_round_trip_keeps_secrets():
    s = Settings(jwt_secret=GOOD_SECRET, proxmox_password="p w=d;'\"$", guacamole_vnc_password="vnc")
    back = Settings.from_env(s.to_env())
    assert back.secrets() == s.secrets() == [GOOD_SECRET, "p w=d;'\"$", "vnc"]


# ---- secrets() --------------------------------------------------------------------------------------

def test_secrets_lists_only_the_non_empty_secret_values():
    assert Settings().secrets() == []
    s = Settings(jwt_secret=GOOD_SECRET, proxmox_password="pw1", proxmox_token_secret="tok",
                 guacamole_password="gpw", guacamole_vnc_password="vnc", proxmox_user="root@pam",
                 guacamole_username="guacadmin", proxmox_token_id="root@pam!cp")
    assert s.secrets() == [GOOD_SECRET, "pw1", "tok", "gpw", "vnc"]
    assert "root@pam" not in s.secrets() and "guacadmin" not in s.secrets()
    assert Settings(shares_secret="h" * 32, shares_public_url="http://x/shares").secrets() == ["h" * 32]
    llm = Settings(llm_openai_api_key="sk-o", llm_anthropic_api_key="sk-a", llm_openrouter_api_key="sk-r",
                   llm_compat_api_key="ck", llm_user_keys_secret="u" * 32, llm_openai_base_url="http://h/v1")
    assert llm.secrets() == ["sk-o", "sk-a", "sk-r", "ck", "u" * 32]


def test_every_password_secret_or_api_key_field_is_a_secret():
    suspicious = {f.name for f in dataclasses.fields(Settings)
                  if any(word in f.name for word in ("password", "secret", "api_key"))}
    assert suspicious == set(SECRET_FIELDS)


def test_playbook_env_is_all_strings_and_carries_the_connection_settings():
    s = Settings(proxmox_password="pw", guacamole_protocol="rdp", proxmox_verify_ssl=True)
    penv = s.playbook_env("desktop_create.yml")
    assert all(isinstance(v, str) for v in penv.values())
    assert penv["CONTROLPLANE_PROXMOX_PASSWORD"] == "pw"
    assert penv["CONTROLPLANE_PROXMOX_VERIFY_SSL"] == "true"
    assert penv["CONTROLPLANE_GUACAMOLE_PORT"] == "3389"


# ---- derived values -----------------------------------------------------------------------------------

def test_derived_values(tmp_path):
    s = Settings(var_dir=tmp_path, guacamole_url="http://g:8080/guacamole/")
    assert s.effective_database_url == f"sqlite:///{tmp_path / 'controlplane.db'}"
    assert s.replace(database_url="postgresql://x/y").effective_database_url == "postgresql://x/y"
    assert s.effective_guacamole_public_url == "http://g:8080/guacamole"
    assert s.replace(guacamole_public_url="https://desk.example/").effective_guacamole_public_url == \
        "https://desk.example"
    assert s.effective_guacamole_port == 5900
    assert s.replace(guacamole_protocol="rdp").effective_guacamole_port == 3389
    assert s.replace(guacamole_port=5901).effective_guacamole_port == 5901
    assert s.inventory_path == REPO_ROOT / "inventory" / "lab"
    assert s.replace(inventory=str(tmp_path / "inv")).inventory_path == tmp_path / "inv"
    assert str(s.replace(timezone="Asia/Kolkata").tz) == "Asia/Kolkata"


def test_shares_derived_values(tmp_path):
    s = Settings(var_dir=tmp_path, host="10.0.0.5", port=8123)
    assert s.effective_shares_dir == tmp_path / "shares"
    assert s.replace(shares_dir="/srv/shares").effective_shares_dir == Path("/srv/shares")
    assert s.effective_shares_url == "http://10.0.0.5:8123/shares"
    assert s.replace(host="::1").effective_shares_url == "http://[::1]:8123/shares"
    assert s.replace(shares_public_url="https://files.example/dav/").effective_shares_url == \
        "https://files.example/dav"
    # The share passwords' key: its own secret, else the JWT secret, else none (shares disabled).
    assert s.effective_shares_secret == ""
    assert s.replace(jwt_secret=GOOD_SECRET).effective_shares_secret == GOOD_SECRET
    assert s.replace(jwt_secret=GOOD_SECRET, shares_secret="h" * 32).effective_shares_secret == "h" * 32


def test_replace_returns_a_new_settings():
    s = Settings()
    t = s.replace(port=1234)
    assert t.port == 1234 and s.port == 8080
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.port = 1  # type: ignore[misc]


# ---- validate() -------------------------------------------------------------------------------------

@pytest.mark.parametrize("changes,names", [
    ({"timezone": "Nowhere/Land"}, "CONTROLPLANE_TIMEZONE"),
    ({"timezone": ""}, "CONTROLPLANE_TIMEZONE"),
    ({"timezone": "../../etc/passwd"}, "CONTROLPLANE_TIMEZONE"),
    ({"vmid_min": 99}, "CONTROLPLANE_VMID_MIN/MAX"),
    ({"vmid_min": 20000, "vmid_max": 19999}, "CONTROLPLANE_VMID_MIN/MAX"),
    ({"vmid_max": 1_000_000_000}, "CONTROLPLANE_VMID_MIN/MAX"),
    ({"guacamole_protocol": "spice"}, "CONTROLPLANE_GUACAMOLE_PROTOCOL"),
    ({"jwt_secret": GOOD_SECRET, "jwt_jwks_url": "https://kc/certs"}, "CONTROLPLANE_JWT_SECRET"),
    ({"jwt_secret": GOOD_SECRET, "jwt_public_key": "-----BEGIN PUBLIC KEY-----"}, "CONTROLPLANE_JWT_SECRET"),
    ({"jwt_secret": "s" * 31}, "CONTROLPLANE_JWT_SECRET must be at least 32"),
    ({"plans_file": Path("/nonexistent/plans.yml")}, "CONTROLPLANE_PLANS_FILE"),
    ({"llm_timeout": 0.0}, "CONTROLPLANE_LLM_TIMEOUT must be positive"),
    ({"llm_timeout": -1.0}, "CONTROLPLANE_LLM_TIMEOUT must be positive"),
    ({"llm_default_model": "gpt-4"}, "CONTROLPLANE_LLM_DEFAULT_MODEL"),
    ({"llm_default_model": "mistral/large"}, "CONTROLPLANE_LLM_DEFAULT_MODEL"),
    ({"llm_default_model": "openai/"}, "CONTROLPLANE_LLM_DEFAULT_MODEL"),
    ({"llm_default_model": "openai/gpt 4"}, "CONTROLPLANE_LLM_DEFAULT_MODEL"),
    ({"llm_openai_base_url": "api.openai.com/v1"}, "CONTROLPLANE_LLM_OPENAI_BASE_URL"),
    ({"llm_compat_base_url": "ftp://ollama:11434"}, "CONTROLPLANE_LLM_COMPAT_BASE_URL"),
    ({"llm_user_keys_secret": "k" * 31}, "CONTROLPLANE_LLM_USER_KEYS_SECRET must be at least 32"),
    ({"shares_secret": "h" * 31}, "CONTROLPLANE_SHARES_SECRET must be at least 32"),
    ({"shares_public_url": "files.example/shares"}, "CONTROLPLANE_SHARES_PUBLIC_URL"),
])
def test_validate_rejects(changes, names):
    with pytest.raises(ConfigError, match=re.escape(names)):
        Settings(**changes).validate()


@pytest.mark.parametrize("changes", [
    {},
    {"vmid_min": 100, "vmid_max": 100},
    {"vmid_min": 100, "vmid_max": 999_999_999},
    {"jwt_secret": GOOD_SECRET},
    {"jwt_jwks_url": "https://kc/certs", "jwt_public_key": "-----BEGIN PUBLIC KEY-----"},
    {"guacamole_protocol": "rdp", "timezone": "Europe/Berlin"},
    {"llm_default_model": "openrouter/anthropic/claude-opus-4-5", "llm_timeout": 0.5},
    {"llm_default_model": "compat/llama3.1:8b", "llm_compat_base_url": "http://127.0.0.1:11434/v1"},
    {"llm_openai_base_url": "https://gateway.example/openai/v1", "llm_user_keys_secret": "k" * 32},
])
def test_validate_accepts(changes):
    Settings(**changes).validate()


def test_require_auth_and_redis():
    with pytest.raises(ConfigError, match="CONTROLPLANE_JWT_SECRET"):
        Settings().require_auth()
    for ok in ({"jwt_secret": GOOD_SECRET}, {"jwt_jwks_url": "https://kc/certs"}, {"jwt_public_key": "pem"}):
        Settings(**ok).require_auth()
    with pytest.raises(ConfigError, match="CONTROLPLANE_REDIS_URL"):
        Settings().require_redis()
    Settings(redis_url="redis://127.0.0.1:6379/0").require_redis()
