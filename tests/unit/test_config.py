"""Settings (controlplane/config.py): parsing CONTROLPLANE_* variables, the round trip through to_env,
secrets() and the validation rules."""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest
import yaml

from controlplane.config import ENVIRONMENT, REPO_ROOT, SECRET_FIELDS, ConfigError, Settings, knobs, tuning_knobs

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
    with pytest.raises(ConfigError, match=r"CONTROLPLANE_PROXMOX_SHARED_STORAGE must be true or false") as err:
        Settings.from_env(env(proxmox_shared_storage=raw))
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


@pytest.mark.parametrize("name", ["job_timeout", "reaper_interval", "abandoned_after", "port", "shares_lock_timeout_max"])
@pytest.mark.parametrize("raw", ["0", "-5"])
def test_durations_and_the_port_must_be_positive(name, raw):
    with pytest.raises(ConfigError, match=f"CONTROLPLANE_{name.upper()}"):
        Settings.from_env(env(**{name: raw}))


@pytest.mark.parametrize("name,raw", [
    ("pool_retry_after", "-1"), ("expiry_grace", "-1"), ("max_resumes", "-1"), ("guacamole_port", "-1"),
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
    s = Settings.from_env(env(max_resumes="0", guacamole_port="0", pool_retry_after="0"))
    assert (s.max_resumes, s.guacamole_port, s.pool_retry_after) == (0, 0, 0)
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
    names = {"CONTROLPLANE_" + f.name.upper() for f in knobs()}
    assert set(e) == names


def test_round_trip_of_the_defaults():
    s = Settings()
    assert Settings.from_env(s.to_env()) == s


def test_round_trip_of_every_field_changed(tmp_path):
    plans = tmp_path / "plans.yml"
    plans.write_text("{}\n")
    changed = {}
    for f in knobs():
        value = getattr(Settings(), f.name)
        if isinstance(value, bool):
            changed[f.name] = not value
        elif isinstance(value, int):
            changed[f.name] = value + 7
        elif isinstance(value, float):
            changed[f.name] = value + 0.5
        elif isinstance(value, Path):
            changed[f.name] = tmp_path / f.name
            changed[f.name].write_text("{}\n")
        else:
            changed[f.name] = f"{value}x" if value else f"value-of-{f.name}"
    changed.update(plans_file=plans, timezone="Asia/Kolkata", guacamole_protocol="rdp", jwt_secret=GOOD_SECRET,
                   jwt_jwks_url="", jwt_public_key="", vmid_min=20000, vmid_max=20999,
                   llm_default_model="anthropic/claude-opus-4-5", llm_openai_base_url="http://llm.example/v1",
                   llm_compat_base_url="http://127.0.0.1:11434/v1", llm_user_keys_secret="k" * 32, rate_limit_api="7/second",
                   rate_limit_desktop_create="3/day", rate_limit_project_create="2/day", rate_limit_chat="9/hour",
                   shares_secret="h" * 32, shares_public_url="https://files.example/shares", retry_backoff="2,3",
                   guacamole_json_secret="ab" * 16, connect_mode="json", log_format="json", oidc_issuer="https://sso.example/realms/r")
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
                  if any(word in f.name for word in ("password", "secret", "api_key", "token"))
                  and f.name != "proxmox_token_id"}  # the token's name, not its secret
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
    ({"vmid_min": 99}, "CONTROLPLANE_VMID_MIN and CONTROLPLANE_VMID_MAX must"),
    ({"vmid_min": 20000, "vmid_max": 19999}, "CONTROLPLANE_VMID_MIN"),
    ({"vmid_max": 1_000_000_000}, "CONTROLPLANE_VMID_MIN"),
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


# ---- the settings file (config/settings.yml) ---------------------------------------------------------

def write_settings(tmp_path, text: str | None) -> dict[str, str]:
    """CONTROLPLANE_SETTINGS_FILE naming a file holding `text` (None: a file that does not exist)."""
    path = tmp_path / "settings.yml"
    if text is not None:
        path.write_text(text)
    return {"CONTROLPLANE_SETTINGS_FILE": str(path)}


def test_the_settings_file_sets_tuning_knobs_and_the_environment_wins(tmp_path):
    given = write_settings(tmp_path, "job_timeout: 900\nwarm_ansible: false\nrate_limit_api: 7/second\n"
                                     "retry_backoff: ''\nprojects_file: config/projects.yml\n")
    s = Settings.from_env(given)
    assert (s.job_timeout, s.warm_ansible, s.rate_limit_api, s.retry_backoff) == (900, False, "7/second", "")
    assert s.projects_file == REPO_ROOT / "config" / "projects.yml"  # relative to the repository
    assert Settings.from_env({**given, **env(job_timeout="600")}).job_timeout == 600
    assert Settings.from_env(given, job_timeout=300).job_timeout == 300
    assert s.replace(job_timeout=1800, warm_ansible=True, rate_limit_api="100/minute", retry_backoff="1,2,4,8",
                     settings_file=Settings().settings_file) == Settings()  # nothing else changed


def test_without_a_settings_file_the_defaults_apply(tmp_path):
    assert Settings.from_env({}) == Settings()  # the shipped file sets nothing
    given = write_settings(tmp_path, "# nothing set\n")
    assert Settings.from_env(given) == Settings(settings_file=Path(given["CONTROLPLANE_SETTINGS_FILE"]))


@pytest.mark.parametrize("text,message", [
    ("job_timeout: soon\n", "settings.yml: job_timeout must be an integer, not 'soon'"),
    ("job_timeout: 0\n", "settings.yml: job_timeout must be positive"),
    ("timezone: Nowhere/Land\n", "settings.yml: timezone is not a known time zone"),
    ("warm_ansible: maybe\n", "settings.yml: warm_ansible must be true or false"),
    ("jwt_secret: " + GOOD_SECRET + "\n", "jwt_secret is set in the environment (CONTROLPLANE_JWT_SECRET)"),
    ("redis_url: redis://x\n", "redis_url is set in the environment"),
    ("job_timeuot: 5\n", "unknown setting 'job_timeuot'"),
    ("job_timeout:\n", "job_timeout must be a single value"),
    ("rate_limit_api: [1, 2]\n", "rate_limit_api must be a single value"),
    ("- job_timeout\n", "must be a mapping"),
    ("job_timeout: [\n", "cannot read"),
    (None, "CONTROLPLANE_SETTINGS_FILE: "),
])
def test_a_bad_settings_file_is_refused_naming_the_file_and_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        Settings.from_env(write_settings(tmp_path, text))


def test_a_value_from_the_environment_is_named_by_its_variable_even_with_a_file(tmp_path):
    with pytest.raises(ConfigError, match="^CONTROLPLANE_JOB_TIMEOUT must be positive"):
        Settings.from_env({**write_settings(tmp_path, "job_timeout: 5\n"), **env(job_timeout="0")})


def test_the_shipped_settings_file_lists_every_tuning_knob_with_its_default_and_sets_none():
    """config/settings.yml is the page of tuning knobs: each appears once, commented, with the one
    default (the field's); nothing else appears, and the file sets nothing."""
    text = (REPO_ROOT / "config" / "settings.yml").read_text()
    assert yaml.safe_load(text) is None
    listed = dict(re.findall(r"^# ([a-z_]+): (.*)$", text, re.M))
    defaults = Settings()
    expected = {}
    for f in tuning_knobs():
        value = getattr(defaults, f.name)
        if isinstance(value, Path):
            value = value.relative_to(REPO_ROOT).as_posix() if value != REPO_ROOT else "."
        expected[f.name] = value
    assert set(listed) == set(expected)
    for name, shown in listed.items():
        assert yaml.safe_load(shown) == expected[name] or (shown == "''" and expected[name] == ""), name


def test_the_readme_table_lists_exactly_the_settings_of_the_environment():
    readme = (REPO_ROOT / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n\n| Variable |", 1)[1].split("\n\n", 1)[0]
    named = set(re.findall(r"`CONTROLPLANE_([A-Z_]+)`", "\n".join(row.split("|")[1] for row in table.splitlines()[2:])))
    assert named == {name.upper() for name in ENVIRONMENT}
    assert set(ENVIRONMENT) >= set(SECRET_FIELDS)  # no secret in the settings file


def test_each_roles_documented_defaults_are_its_defaults():
    """One default per knob in the roles too: meta/argument_specs.yml documents defaults/main.yml's."""
    for role in sorted((REPO_ROOT / "roles").iterdir()):
        specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]
        defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text()) or {}
        for name, option in specs["options"].items():
            if "default" in option:
                assert name in defaults and option["default"] == defaults[name], (role.name, name)
