"""Typed settings, validated once, failing fast. Each knob has one default: the field's, below.

Two kinds of knob, two places (README.md, "Configuration"):
- ENVIRONMENT: what a deployment must say about itself (where its database, Redis, Proxmox and
  Guacamole are, how tokens are checked) and every secret. Set as CONTROLPLANE_<NAME> variables;
  README.md's table lists exactly these.
- every other field is a tuning knob, in the YAML file CONTROLPLANE_SETTINGS_FILE
  (config/settings.yml, where each is listed with its default and what it does). A variable
  CONTROLPLANE_<NAME> still wins over the file (how the lab and the tests hand settings to the
  processes they start).
What only the playbooks use (storage, clone mode, Ansible's waits) lives in the inventory's
group_vars; what only the lab uses is read by controlplane/lab. `Settings.from_env()` is the only
place that reads os.environ or the file for the control plane's own configuration.
"""
from __future__ import annotations

import dataclasses
import os
import re
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A setting has a value the control plane cannot run with."""


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name} must be true or false, not {raw!r}")


def _int(name: str, raw: str, minimum: int | None = None) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, not {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, not {value}")
    return value


def _float(name: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, not {raw!r}") from None


# Settings whose values are secrets: never logged, never returned, redacted from messages.
SECRET_FIELDS = ("jwt_secret", "proxmox_password", "proxmox_token_secret", "guacamole_password",
                 "guacamole_vnc_password", "llm_openai_api_key", "llm_anthropic_api_key", "llm_openrouter_api_key",
                 "llm_compat_api_key", "llm_user_keys_secret", "shares_secret", "guacamole_json_secret", "metrics_token")

# The settings a deployment gives in its environment (README.md's table); the rest are tuning knobs
# (config/settings.yml). Secrets are all here: the settings file never holds one.
ENVIRONMENT = ("var_dir", "database_url", "redis_url", "host", "port", "settings_file", "jwt_secret", "jwt_jwks_url",
               "jwt_public_key", "jwt_issuer", "jwt_audience", "jwt_client_id", "inventory", "proxmox_host",
               "proxmox_verify_ssl", "proxmox_user", "proxmox_password", "proxmox_token_id", "proxmox_token_secret", "guacamole_url",
               "guacamole_public_url", "guacamole_username", "guacamole_password", "guacamole_vnc_password",
               "guacamole_json_secret", "shares_secret", "llm_openai_api_key", "llm_anthropic_api_key",
               "llm_openrouter_api_key", "llm_compat_api_key", "llm_user_keys_secret", "metrics_token", "lab")

# The playbooks the worker runs that talk to Guacamole (roles/guacamole_connection): only they are
# given its passwords (Settings.playbook_env); tests/unit/test_runner_secrets.py checks the list.
GUACAMOLE_PLAYBOOKS = frozenset({"desktop_create.yml", "desktop_start.yml", "desktop_delete.yml",
                                 "project_create.yml", "project_start.yml", "project_delete.yml",
                                 "remove_orphans.yml"})

# Rates ("100/minute", "5/hour", "20 per 2 minutes"): the rate limits (api/limits.py) and the WebSocket's.
_RATE = re.compile(r"^\s*(\d+)\s*(?:/|per)\s*(\d*)\s*(second|minute|hour|day)s?\s*$", re.I)
_RATE_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


@dataclass(frozen=True)
class Rate:
    amount: int
    seconds: int  # the window
    text: str  # as people read it: "5 per 1 hour"


def parse_rate(value: str) -> Rate:
    """A rate setting; ValueError when it does not look like "100/minute"."""
    found = _RATE.match(value or "")
    if not found or int(found.group(1)) < 1 or (found.group(2) and int(found.group(2)) < 1):
        raise ValueError(f"not a rate: {value!r}")
    count, unit = int(found.group(2) or 1), found.group(3).lower()
    text = f"{int(found.group(1))} per {count} {unit}{'s' if count > 1 else ''}"
    return Rate(int(found.group(1)), count * _RATE_SECONDS[unit], text)


# AI chat providers: model ids are "<provider>/<model>" (controlplane/services/chat.py).
LLM_PROVIDERS = ("openai", "anthropic", "openrouter", "compat")




def parse_backoff(text: str) -> tuple[float, ...]:
    """'1,2,4,8' → (1.0, 2.0, 4.0, 8.0); '' → () (no retries). Raises ValueError."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    delays = tuple(float(p) for p in parts)
    if any(d < 0 or d != d for d in delays):
        raise ValueError("delays must be numbers >= 0")
    return delays


def knobs() -> list[dataclasses.Field]:
    """The settings' fields that are configuration (not `extra` or `origin`)."""
    return [f for f in dataclasses.fields(Settings) if f.name not in ("extra", "origin")]


def tuning_knobs() -> list[dataclasses.Field]:
    """The knobs of the settings file (config/settings.yml): every one not in ENVIRONMENT."""
    return [f for f in knobs() if f.name not in ENVIRONMENT]


def _text(value) -> str:
    """A setting's value as a CONTROLPLANE_* variable says it (bools in lower case)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _parse(f: dataclasses.Field, name: str, raw: str):
    """The text `raw` of setting `f` as its type; `name` (the variable, or the file and key) in errors."""
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    if kind == "bool":
        return _bool(name, raw)
    if kind == "int":
        return _int(name, raw)
    if kind == "float":
        return _float(name, raw)
    if kind == "Path":
        return Path(raw)
    return raw


def _read_settings_file(path: Path) -> dict[str, str]:
    """The tuning knobs set in the YAML file `path`, as text; {} if there is none. Refuses what
    is not a tuning knob (a secret or a deployment's address belongs in the environment)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:  # the default file, left out of an installation
        return {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"CONTROLPLANE_SETTINGS_FILE: cannot read {path}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a mapping of setting names to values")
    tuning = {f.name for f in tuning_knobs()}
    found = {}
    for name, value in data.items():
        if name in ENVIRONMENT:
            raise ConfigError(f"{path}: {name} is set in the environment (CONTROLPLANE_{str(name).upper()}), "
                              "not in the settings file")
        if name not in tuning:
            raise ConfigError(f"{path}: unknown setting {name!r} (the settings are listed in config/settings.yml)")
        if value is None or isinstance(value, (dict, list)):
            raise ConfigError(f"{path}: {name} must be a single value")
        found[name] = _text(value)
    return found


@dataclass(frozen=True)
class Settings:
    # Where state lives
    var_dir: Path = REPO_ROOT / "var"
    database_url: str = ""  # default: sqlite in var_dir
    redis_url: str = ""  # required outside the lab
    settings_file: Path = REPO_ROOT / "config" / "settings.yml"  # the tuning knobs
    # HTTP
    host: str = "127.0.0.1"
    port: int = 8080
    timezone: str = "UTC"
    log_format: str = "text"  # text (one line a record) or json (JSON lines with the request id: logs.py)
    # Prometheus (metrics.py): GET /metrics answers only a bearer of this token (none set: 404)
    metrics_token: str = ""
    metrics_dir: str = ""  # where the API's and workers' processes count (multiprocess); default: <var_dir>/metrics
    # Auth
    jwt_secret: str = ""  # HS256 (the lab's); mutually exclusive with the RS256 settings
    jwt_jwks_url: str = ""  # RS256 from a JWKS (Keycloak: {issuer}/protocol/openid-connect/certs)
    jwt_public_key: str = ""  # RS256 from a PEM public key
    jwt_issuer: str = ""
    jwt_audience: str = ""
    jwt_user_claim: str = "sub"
    jwt_admin_role: str = "admin"
    jwt_client_id: str = ""  # Keycloak client whose resource_access roles count too
    # Desktops
    plans_file: Path = REPO_ROOT / "config" / "plans.yml"
    projects_file: Path = REPO_ROOT / "config" / "projects.yml"  # os → template, network pool, sizes
    shares_dir: str = ""  # one folder per project, served over WebDAV; default: <var_dir>/shares
    shares_public_url: str = ""  # what project VMs and users open; default: http://<host>:<port>/shares
    shares_secret: str = ""  # derives each project's share password (HMAC); default: jwt_secret; neither: no shares
    shares_max_file_bytes: int = 100 * 1024 * 1024  # largest file one WebDAV PUT may write (413 beyond)
    shares_quota_bytes: int = 1024 * 1024 * 1024  # bytes of files in one project's folder (507 beyond)
    shares_lock_timeout_max: int = 3600  # seconds a WebDAV lock lives at most ("Infinite" included)
    vmid_min: int = 10000
    vmid_max: int = 99999
    # Ansible
    ansible_dir: Path = REPO_ROOT
    inventory: str = "inventory/lab"
    job_timeout: int = 1800
    reaper_interval: int = 30
    warm_ansible: bool = True  # each worker keeps an Ansible process that runs are forked from (runner/warm.py)
    abandoned_after: int = 60  # seconds a desktop may sit in a transition with no live job
    max_resumes: int = 1  # how often an abandoned job is resumed before the desktop is FAILED
    # Retries inside a job (services/failures.py), after the contract's retry guidance
    retry_backoff: str = "1,2,4,8"  # seconds before each rerun after an infrastructure error
    provisioning_attempts: int = 3  # runs of a create whose step failed otherwise (its rescue cleaned up)
    provisioning_retry_delay: float = 30.0  # seconds between those runs
    # Warm pool (services/pool.py); each plan's size is in plans_file or set by an admin
    pool_max_size: int = 50  # the largest size an admin may give one plan's pool
    pool_fill_parallel: int = 4  # pool VMs of one plan being made at once
    pool_retry_after: int = 60  # seconds a plan's pool waits after a failed fill before trying again
    pool_niceness: int = 10  # how much lower a pool fill's or removal's CPU priority is than a user's job (0-19)
    # Lifecycle policies (services/policies.py); per-plan expiry and idle limits are in plans_file
    policy_interval: int = 300  # seconds between the periodic policy and reconciliation job; 0: off
    expiry_grace: int = 86400  # an expired desktop is stopped, then deleted this many seconds later
    stuck_after: int = 0  # seconds in a transition before a desktop counts as stuck; 0: job_timeout + 10 min
    failed_retention: int = 7 * 86400  # FAILED desktops are deleted after this many seconds; 0: kept
    audit_retention_days: int = 365  # audit entries and policy runs older than this are pruned; 0: kept
    # Proxmox (used by the playbooks via environment, and by ?refresh=true via proxmoxer)
    proxmox_host: str = "127.0.0.2"
    proxmox_port: int = 8006
    proxmox_user: str = "root@pam"
    proxmox_password: str = ""
    proxmox_token_id: str = ""
    proxmox_token_secret: str = ""
    proxmox_verify_ssl: bool = True  # the lab sets false (fakepve's certificate is self-signed)
    proxmox_node: str = "pve1"  # where VMs go when the cluster cannot be read; the lab's node
    proxmox_nodes: str = ""  # nodes new VMs may go to, comma-separated; empty: every online node
    proxmox_shared_storage: bool = False  # templates on shared storage: clones may go to any node
    proxmox_api_timeout: float = 2.0  # per HTTP call from the API process (refresh)
    # (storage, Proxmox pool, clone mode and the playbooks' waits: the inventory's group_vars)
    # Guacamole
    guacamole_url: str = "http://127.0.0.1:8090/guacamole"  # REST API base used by the role
    guacamole_public_url: str = ""  # what browsers open; defaults to guacamole_url
    guacamole_username: str = "guacadmin"
    guacamole_password: str = ""
    guacamole_data_source: str = "postgresql"
    guacamole_protocol: str = "vnc"
    guacamole_port: int = 0  # 0: 5900 for vnc, 3389 for rdp
    guacamole_vnc_password: str = ""
    # /connect (services/guacamole_json.py): auth-json links that log the browser in and expire
    guacamole_json_secret: str = ""  # Guacamole's json-secret-key, 32 hex digits
    connect_mode: str = "auto"  # auto: auth-json where the secret is set, else connection; json; connection
    connect_ttl: int = 300  # seconds an auth-json link is valid
    connect_single_use: bool = True  # an auth-json link logs in once
    # AI chat (litellm; controlplane/services/chat.py). Provider keys are server configuration.
    llm_timeout: float = 60.0  # seconds for one provider call
    llm_default_model: str = "openai/gpt-4"  # "<provider>/<model>", provider one of LLM_PROVIDERS
    llm_openai_api_key: str = ""  # enables openai/<model>
    llm_openai_base_url: str = ""  # empty: https://api.openai.com/v1 (the lab points it at its echo model)
    llm_anthropic_api_key: str = ""  # enables anthropic/<model>
    llm_openrouter_api_key: str = ""  # enables openrouter/<vendor>/<model>
    llm_compat_base_url: str = ""  # an OpenAI-compatible server (Ollama, vLLM, ...): enables compat/<model>
    llm_compat_api_key: str = ""  # its key, if it wants one
    llm_user_keys_secret: str = ""  # encrypts users' own provider keys at rest; empty: they are not stored
    # Rate limits (both contracts' numbers); "N/second|minute|hour|day"
    rate_limits: bool = True
    rate_limit_api: str = "100/minute"  # every API request, per user
    rate_limit_desktop_create: str = "5/hour"  # desktops created, per user
    rate_limit_project_create: str = "5/hour"  # projects created, per user
    rate_limit_chat: str = "20/minute"  # chat messages, per project
    rate_limit_sync: float = 0.05  # seconds between an API process's counts reaching Redis; 0: each request
    # Bounds on what clients send (api/wsserver.py, api/ws.py, api/bodies.py; /shares has its own)
    max_request_body: int = 64 * 1024  # bytes of an HTTP request body of either API (413 beyond)
    ws_max_message: int = 16 * 1024  # bytes of one WebSocket message, refused (1009) from its frame headers
    ws_auth_timeout: float = 5.0  # seconds a WebSocket may stay open before its auth message is verified
    ws_message_rate: str = "120/minute"  # messages one signed-in socket may send ("N/period", a burst of N)
    ws_max_sockets_per_user: int = 8  # WebSockets one user may have open, across API processes; 0: no cap
    ws_send_timeout: float = 30.0  # seconds a send to a client that stopped reading may wait; then it is cut
    # The web portal at / (controlplane/portal): Keycloak sign-in by OpenID Connect (authorization code
    # with PKCE, a public client); empty issuer: jwt_issuer; empty client: jwt_client_id
    portal: bool = True
    oidc_issuer: str = ""
    oidc_client_id: str = ""
    oidc_scope: str = "openid profile email"
    # Lab
    lab: bool = False
    extra: dict = field(default_factory=dict)
    # Where each value that is not a default came from, for error messages: {name: "<file>: name"}
    origin: dict = field(default_factory=dict, compare=False, repr=False)

    # ---- derived -------------------------------------------------------------------------
    @property
    def effective_stuck_after(self) -> int:
        return self.stuck_after or self.job_timeout + 600

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.var_dir / 'controlplane.db'}"

    @property
    def effective_shares_dir(self) -> Path:
        return Path(self.shares_dir) if self.shares_dir else self.var_dir / "shares"

    @property
    def effective_shares_url(self) -> str:
        """The base URL of the project shares (a project's folder is <base>/<project id>/)."""
        if self.shares_public_url:
            return self.shares_public_url.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/shares"

    @property
    def effective_shares_secret(self) -> str:
        """The key of the share passwords; empty: shares are disabled."""
        return self.shares_secret or self.jwt_secret

    @property
    def effective_guacamole_public_url(self) -> str:
        return (self.guacamole_public_url or self.guacamole_url).rstrip("/")

    @property
    def effective_connect_mode(self) -> str:
        """json (expiring auth-json links) or connection (the database connection's plain URL)."""
        if self.connect_mode == "auto":
            return "json" if self.guacamole_json_secret else "connection"
        return self.connect_mode

    @property
    def effective_guacamole_port(self) -> int:
        if self.guacamole_port:
            return self.guacamole_port
        return 3389 if self.guacamole_protocol == "rdp" else 5900

    @property
    def effective_metrics_dir(self) -> Path:
        return Path(self.metrics_dir) if self.metrics_dir else Path(self.var_dir) / "metrics"

    @property
    def worker_heartbeat(self) -> int:
        """Seconds between a busy worker's heartbeats (RQ's job_monitoring_interval, 30 by
        default): a fraction of abandoned_after, so that the reaper can tell a live worker from a
        dead one (worker_stale_after)."""
        return max(1, min(30, self.abandoned_after // 4))

    @property
    def worker_stale_after(self) -> int:
        """Seconds without a heartbeat after which a worker counts as dead: several beats."""
        return max(self.abandoned_after, 3 * self.worker_heartbeat)

    @property
    def proxmox_node_list(self) -> list[str]:
        return [n.strip() for n in self.proxmox_nodes.split(",") if n.strip()]

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    @property
    def inventory_path(self) -> Path:
        path = Path(self.inventory)
        return path if path.is_absolute() else self.ansible_dir / path

    def __repr__(self) -> str:  # secrets masked: a Settings in a traceback or a log line shows none
        shown = ", ".join(f"{f.name}={'***' if f.name in SECRET_FIELDS and getattr(self, f.name) else repr(getattr(self, f.name))}"
                          for f in knobs())
        return f"Settings({shown})"

    def secrets(self) -> list[str]:
        """The configured secret values (non-empty), for redaction."""
        return [v for v in (getattr(self, f) for f in SECRET_FIELDS) if v]

    def playbook_env(self, playbook: str) -> dict[str, str]:
        """Environment the playbook `playbook` (a file name in playbooks/) reads its connection
        settings from (inventory group_vars): every setting, and of the secrets only those it uses:
        the Proxmox credential in use (the token's secret with a token id, else the password), and
        Guacamole's passwords only for GUACAMOLE_PLAYBOOKS. The worker's other secrets never reach a
        playbook (runner/ansible.py gives it only this and an allow-list of its environment)."""
        env = {
            "CONTROLPLANE_PROXMOX_HOST": self.proxmox_host,
            "CONTROLPLANE_PROXMOX_PORT": str(self.proxmox_port),
            "CONTROLPLANE_PROXMOX_USER": self.proxmox_user,
            "CONTROLPLANE_PROXMOX_PASSWORD": self.proxmox_password,
            "CONTROLPLANE_PROXMOX_TOKEN_ID": self.proxmox_token_id,
            "CONTROLPLANE_PROXMOX_TOKEN_SECRET": self.proxmox_token_secret,
            "CONTROLPLANE_PROXMOX_VERIFY_SSL": str(self.proxmox_verify_ssl).lower(),
            "CONTROLPLANE_PROXMOX_NODE": self.proxmox_node,
            "CONTROLPLANE_GUACAMOLE_URL": self.guacamole_url,
            "CONTROLPLANE_GUACAMOLE_USERNAME": self.guacamole_username,
            "CONTROLPLANE_GUACAMOLE_PASSWORD": self.guacamole_password,
            "CONTROLPLANE_GUACAMOLE_DATA_SOURCE": self.guacamole_data_source,
            "CONTROLPLANE_GUACAMOLE_PROTOCOL": self.guacamole_protocol,
            "CONTROLPLANE_GUACAMOLE_PORT": str(self.effective_guacamole_port),
            "CONTROLPLANE_GUACAMOLE_VNC_PASSWORD": self.guacamole_vnc_password,
        }
        env.pop("CONTROLPLANE_PROXMOX_PASSWORD" if self.proxmox_token_id else "CONTROLPLANE_PROXMOX_TOKEN_SECRET")
        if playbook not in GUACAMOLE_PLAYBOOKS:
            env.pop("CONTROLPLANE_GUACAMOLE_PASSWORD")
            env.pop("CONTROLPLANE_GUACAMOLE_VNC_PASSWORD")
        return env

    def to_env(self) -> dict[str, str]:
        """These settings as CONTROLPLANE_* variables (for a worker or API child process)."""
        return {"CONTROLPLANE_" + f.name.upper(): _text(getattr(self, f.name)) for f in knobs()}

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)

    # ---- loading -------------------------------------------------------------------------
    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides) -> "Settings":
        """The defaults, then the settings file's tuning knobs, then CONTROLPLANE_* variables, then
        `overrides`; validated."""
        env = os.environ if environ is None else environ
        values: dict = {}
        origin: dict = {}
        by_name = {f.name: f for f in knobs()}
        named = env.get("CONTROLPLANE_SETTINGS_FILE") or overrides.get("settings_file")
        settings_file = Path(named or cls.settings_file)
        if named and not settings_file.is_file():
            raise ConfigError(f"CONTROLPLANE_SETTINGS_FILE: {settings_file} does not exist")
        for name, raw in _read_settings_file(settings_file).items():
            origin[name] = f"{settings_file}: {name}"
            values[name] = _parse(by_name[name], origin[name], raw)
            if isinstance(values[name], Path):  # relative to the repository, as the defaults
                values[name] = REPO_ROOT / values[name]
        for f in knobs():
            key = "CONTROLPLANE_" + f.name.upper()
            if key in env:
                values[f.name] = _parse(f, key, env[key])
                origin.pop(f.name, None)
        for name in overrides:
            origin.pop(name, None)
        settings = cls(**{**values, **overrides, "origin": origin})
        settings.validate()
        return settings

    # What validate() checks, setting by setting (names without CONTROLPLANE_), as tables.
    _POSITIVE = ("job_timeout", "reaper_interval", "abandoned_after", "port", "proxmox_api_timeout", "llm_timeout",
                 "shares_max_file_bytes", "shares_quota_bytes", "shares_lock_timeout_max", "ws_send_timeout")
    _NOT_NEGATIVE = ("max_resumes", "policy_interval", "expiry_grace", "stuck_after", "failed_retention",
                     "audit_retention_days", "pool_max_size", "pool_retry_after", "provisioning_retry_delay",
                     "ws_max_sockets_per_user")
    _AT_LEAST_ONE = ("pool_fill_parallel", "provisioning_attempts")
    _PORTS = (("port", 1), ("proxmox_port", 1), ("guacamole_port", 0))
    _CHOICES = (("connect_mode", ("auto", "json", "connection"), ""), ("log_format", ("text", "json"), ""),
                ("guacamole_protocol", ("vnc", "rdp"), " (Guacamole has no SPICE)"))
    _BETWEEN = (("connect_ttl", 10, 86400, "seconds"), ("rate_limit_sync", 0, 10, "seconds"), ("pool_niceness", 0, 19, "(a niceness)"), ("ws_max_message", 1024, 16 * 1024 * 1024, "bytes"),
                ("max_request_body", 1024, None, "bytes"))
    _URLS = ("llm_openai_base_url", "llm_compat_base_url", "shares_public_url")
    _LONG_SECRETS = ("jwt_secret", "llm_user_keys_secret", "shares_secret")  # at least 32 characters
    _RATES = ("rate_limit_api", "rate_limit_desktop_create", "rate_limit_project_create", "rate_limit_chat",
              "ws_message_rate")

    def label(self, name: str) -> str:
        """How an error names setting `name`: "<file>: <name>" when the settings file gave its
        value, else its variable CONTROLPLANE_<NAME>."""
        return self.origin.get(name) or f"CONTROLPLANE_{name.upper()}"

    def _refuse(self, name: str, what: str):
        raise ConfigError(f"{self.label(name)} {what}")

    def validate(self) -> None:
        """Refuse settings that cannot work, naming the variable (ConfigError)."""
        self._validate_numbers()
        self._validate_texts()
        self._validate_together()

    def _validate_numbers(self) -> None:
        for name in self._POSITIVE:
            if getattr(self, name) <= 0:
                self._refuse(name, "must be positive")
        for name in self._NOT_NEGATIVE:
            if getattr(self, name) < 0:
                self._refuse(name, "must not be negative")
        for name in self._AT_LEAST_ONE:
            if getattr(self, name) < 1:
                self._refuse(name, "must be at least 1")
        for name, lowest in self._PORTS:
            if not lowest <= getattr(self, name) <= 65535:
                self._refuse(name, f"must be a port number ({lowest}-65535)")
        for name, lowest, highest, unit in self._BETWEEN:
            value = getattr(self, name)
            if value < lowest or (highest is not None and value > highest):
                self._refuse(name, f"must be between {lowest} and {highest} {unit}" if highest is not None
                       else f"must be at least {lowest} {unit}")

    def _validate_texts(self) -> None:
        for name, allowed, note in self._CHOICES:
            if getattr(self, name) not in allowed:
                self._refuse(name, f"must be {', '.join(allowed[:-1])} or {allowed[-1]}{note}")
        for name in self._URLS:
            value = getattr(self, name)
            if value and not value.startswith(("http://", "https://")):
                self._refuse(name, f"must be an http:// or https:// URL, not {value!r}")
        for name in self._LONG_SECRETS:
            if getattr(self, name) and len(getattr(self, name)) < 32:
                self._refuse(name, "must be at least 32 characters")
        for name in self._RATES:
            try:
                parse_rate(getattr(self, name))
            except ValueError:
                self._refuse(name, f"must look like 100/minute, not {getattr(self, name)!r}")

    def _validate_together(self) -> None:
        """The checks that read more than one setting, or a file, a zone or a list."""
        try:
            _ = self.tz  # the property loads the zone
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            self._refuse("timezone", f"is not a known time zone: {self.timezone!r}")
        if not (100 <= self.vmid_min <= self.vmid_max <= 999_999_999):
            self._refuse("vmid_min", f"and {self.label('vmid_max')} must satisfy 100 <= min <= max <= 999999999")
        if self.guacamole_json_secret and not re.match(r"^[0-9a-fA-F]{32}$", self.guacamole_json_secret):
            raise ConfigError("CONTROLPLANE_GUACAMOLE_JSON_SECRET must be 32 hexadecimal digits (Guacamole's "
                              "json-secret-key, e.g. `openssl rand -hex 16`)")
        if self.connect_mode == "json" and not self.guacamole_json_secret:
            self._refuse("connect_mode", "json needs CONTROLPLANE_GUACAMOLE_JSON_SECRET")
        if self.jwt_secret and (self.jwt_jwks_url or self.jwt_public_key):
            raise ConfigError("Set either CONTROLPLANE_JWT_SECRET (HS256) or CONTROLPLANE_JWT_JWKS_URL/"
                              "CONTROLPLANE_JWT_PUBLIC_KEY (RS256), not both")
        try:
            parse_backoff(self.retry_backoff)
        except ValueError:
            self._refuse("retry_backoff", f"must be seconds separated by commas (1,2,4,8) or empty, "
                         f"not {self.retry_backoff!r}")
        if not 0 < self.ws_auth_timeout <= 300:
            self._refuse("ws_auth_timeout", "must be more than 0 and at most 300 seconds")
        provider, _, name = self.llm_default_model.partition("/")
        if provider not in LLM_PROVIDERS or not name.strip() or any(c.isspace() for c in self.llm_default_model):
            self._refuse("llm_default_model", f"must be <provider>/<model> with provider one of "
                         f"{', '.join(LLM_PROVIDERS)}, not {self.llm_default_model!r}")
        if not self.plans_file.is_file():
            self._refuse("plans_file", f"names {self.plans_file}, which does not exist")

    def require_auth(self) -> None:
        if not (self.jwt_secret or self.jwt_jwks_url or self.jwt_public_key):
            raise ConfigError("No token validation configured: set CONTROLPLANE_JWT_SECRET (HS256) or "
                              "CONTROLPLANE_JWT_JWKS_URL / CONTROLPLANE_JWT_PUBLIC_KEY (RS256)")

    def require_redis(self) -> None:
        if not self.redis_url:
            raise ConfigError("CONTROLPLANE_REDIS_URL is not set (make lab starts a private Redis)")
