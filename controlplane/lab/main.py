"""`controlplane lab` (make lab): the whole system on one machine, in the foreground.

Starts a private Redis (unless CONTROLPLANE_REDIS_URL is set), fakepve with the lab's templates
and guest agents, the Guacamole stand-in, the lab echo model (answers openai/<model> chats), RQ
workers and the API under gunicorn; writes var/lab/endpoints.json and var/lab/lab.env; Ctrl-C
stops everything. State (database, Redis, Proxmox VMs, Guacamole connections) is kept in var/lab
for the next run.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from .. import metrics
from ..config import REPO_ROOT
from ..processes import stop_all
from .layout import endpoints_file, lab_dir, lab_env_file


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def _secret(directory: Path, name: str = "jwt-secret", make=lambda: secrets.token_urlsafe(48)) -> str:
    """A secret of the lab, made on its first run and kept (mode 0600) with its state."""
    path = directory / name
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(make())
    return path.read_text().strip()


def with_users_settings(lab_defaults: dict[str, str], environ) -> dict[str, str]:
    """The settings the lab's API and workers get: the lab's defaults, then the user's own CONTROLPLANE_*
    over them (a real Guacamole or another Proxmox, say: the lab's stand-ins still run, unused). Not
    CONTROLPLANE_LAB (this is the lab) nor CONTROLPLANE_REDIS_URL (read before: the lab starts a Redis
    only without one)."""
    mine = {k: v for k, v in environ.items()
            if k.startswith("CONTROLPLANE_") and k not in ("CONTROLPLANE_LAB", "CONTROLPLANE_REDIS_URL")}
    return {**lab_defaults, **mine}


def _write_private(path: Path, text: str) -> None:
    path.touch(mode=0o600)
    os.chmod(path, 0o600)
    path.write_text(text)


def _say(text: str = "") -> None:
    print(text, flush=True)


def run_lab(workers: int = 2) -> int:  # noqa: C901 - starts and stops each part of the lab in order
    from .redis_server import PrivateRedis
    from .services import LabConfig, LabServices

    directory = lab_dir()
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    api_host, api_port = _env("CONTROLPLANE_HOST", "127.0.0.1"), int(_env("CONTROLPLANE_PORT", "8080"))
    config = LabConfig(
        state_dir=directory,
        proxmox_host=_env("CONTROLPLANE_LAB_PROXMOX_HOST", "127.0.0.2"),
        proxmox_port=int(_env("CONTROLPLANE_LAB_PROXMOX_PORT", "8006")),
        time_scale=float(_env("CONTROLPLANE_LAB_TIME_SCALE", "0.05")),
        agent_delay=float(_env("CONTROLPLANE_LAB_AGENT_DELAY", "3")),
        guacamole_port=int(_env("CONTROLPLANE_LAB_GUACAMOLE_PORT", "8090")),
        llm_port=int(_env("CONTROLPLANE_LAB_LLM_PORT", "8091")),
        # the control plane signs in to the Proxmox stand-in with an API token, as production should
        proxmox_token_name="controlplane",
        proxmox_token_secret=_secret(directory, "proxmox-token-secret", lambda: str(uuid.uuid4())),
        # /connect answers expiring auth-json links, which the stand-in checks as Guacamole does
        guacamole_json_secret=_env("CONTROLPLANE_GUACAMOLE_JSON_SECRET", "")
        or _secret(directory, "guacamole-json-secret", lambda: secrets.token_hex(16)),
        # a real screen per running VM when the machine has Xvfb, x11vnc, xterm and noVNC (lab/screens.py)
        screens=_env("CONTROLPLANE_LAB_SCREENS", "true").lower() not in ("0", "false", "no", "off"),
        # their VNC servers' password, which /connect's connections carry (as a guest image's would)
        vnc_password=_env("CONTROLPLANE_GUACAMOLE_VNC_PASSWORD", "")
        or _secret(directory, "vnc-password", lambda: secrets.token_urlsafe(6)),
    )
    for name, host, port in (("API", api_host, api_port), ("Proxmox stand-in", config.proxmox_host, config.proxmox_port),
                             ("Guacamole stand-in", config.guacamole_host, config.guacamole_port),
                             ("lab echo model", config.llm_host, config.llm_port)):
        if not _port_free(host, port):
            _say(f"lab: {host}:{port} for the {name} is in use (another lab running?). Stop it, or change the "
                 "port (CONTROLPLANE_PORT, CONTROLPLANE_LAB_PROXMOX_PORT, CONTROLPLANE_LAB_GUACAMOLE_PORT, "
                 "CONTROLPLANE_LAB_LLM_PORT).")
            return 1

    children: list[subprocess.Popen] = []
    private_redis = None
    services = None
    stopping = False

    def _stop(signum, frame):
        nonlocal stopping
        stopping = True
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)

    try:
        redis_url = os.environ.get("CONTROLPLANE_REDIS_URL", "")
        if not redis_url:
            private_redis = PrivateRedis(directory / "redis").start()
            redis_url = private_redis.url
        services = LabServices(config).start()
        guacamole_url = services.guacamole.url
        env = {
            "CONTROLPLANE_LAB": "true",
            "CONTROLPLANE_VAR_DIR": str(directory),
            "CONTROLPLANE_DATABASE_URL": _env("CONTROLPLANE_DATABASE_URL", f"sqlite:///{directory / 'controlplane.db'}"),
            "CONTROLPLANE_REDIS_URL": redis_url,
            "CONTROLPLANE_JWT_SECRET": _secret(directory),
            "CONTROLPLANE_HOST": api_host,
            "CONTROLPLANE_PORT": str(api_port),
            "CONTROLPLANE_INVENTORY": "inventory/lab",
            "CONTROLPLANE_PROXMOX_HOST": config.proxmox_host,
            "CONTROLPLANE_PROXMOX_PORT": str(config.proxmox_port),
            "CONTROLPLANE_PROXMOX_USER": config.proxmox_user,
            "CONTROLPLANE_PROXMOX_PASSWORD": config.proxmox_password,
            "CONTROLPLANE_PROXMOX_TOKEN_ID": config.proxmox_token_name,
            "CONTROLPLANE_PROXMOX_TOKEN_SECRET": config.proxmox_token_secret,
            "CONTROLPLANE_PROXMOX_VERIFY_SSL": "false",  # fakepve: a self-signed certificate
            "CONTROLPLANE_PROXMOX_NODE": "pve1",
            "CONTROLPLANE_GUACAMOLE_URL": guacamole_url,
            "CONTROLPLANE_GUACAMOLE_USERNAME": config.guacamole_username,
            "CONTROLPLANE_GUACAMOLE_PASSWORD": config.guacamole_password,
            "CONTROLPLANE_GUACAMOLE_DATA_SOURCE": config.guacamole_data_source,
            "CONTROLPLANE_GUACAMOLE_JSON_SECRET": config.guacamole_json_secret,
            "CONTROLPLANE_GUACAMOLE_VNC_PASSWORD": config.vnc_password,
            "CONTROLPLANE_METRICS_TOKEN": _secret(directory, "metrics-token"),  # GET /metrics (endpoints.json)
        }
        if not any(os.environ.get(k) for k in ("CONTROLPLANE_LLM_OPENAI_API_KEY", "CONTROLPLANE_LLM_OPENAI_BASE_URL")):
            # openai/<model> chats go to the lab echo model unless the user configured OpenAI
            env["CONTROLPLANE_LLM_OPENAI_BASE_URL"] = services.llm.url
            env["CONTROLPLANE_LLM_OPENAI_API_KEY"] = config.llm_api_key
        env = with_users_settings(env, os.environ)
        guacamole_url = env["CONTROLPLANE_GUACAMOLE_URL"]  # the stand-in's, unless the user named another
        _write_private(lab_env_file(), "# written by `controlplane lab`; read by `controlplane token`\n" +
                       "".join(f"{k}={v}\n" for k, v in sorted(env.items())))
        api_url = f"http://{api_host}:{api_port}"
        endpoints = {
            "api": api_url,
            "proxmox": {"url": f"https://{env['CONTROLPLANE_PROXMOX_HOST']}:{env['CONTROLPLANE_PROXMOX_PORT']}",
                        "user": env["CONTROLPLANE_PROXMOX_USER"], "password": env["CONTROLPLANE_PROXMOX_PASSWORD"],
                        "tokenId": f"{env['CONTROLPLANE_PROXMOX_USER']}!{env['CONTROLPLANE_PROXMOX_TOKEN_ID']}",
                        "tokenSecret": env["CONTROLPLANE_PROXMOX_TOKEN_SECRET"]},
            "guacamole": {"url": guacamole_url, "dataSource": env["CONTROLPLANE_GUACAMOLE_DATA_SOURCE"],
                          "username": env["CONTROLPLANE_GUACAMOLE_USERNAME"],
                          "password": env["CONTROLPLANE_GUACAMOLE_PASSWORD"]},
            "redis": redis_url,
            "llm": {"url": services.llm.url, "apiKey": config.llm_api_key},
            "metrics": {"url": f"{api_url}/metrics", "token": env["CONTROLPLANE_METRICS_TOKEN"]},
        }
        _write_private(endpoints_file(), json.dumps(endpoints, indent=2) + "\n")

        # The API's and the workers' processes count into one folder, emptied as the lab starts (metrics.py).
        metrics.use_folder(directory / "metrics", fresh=True)
        child_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}

        def spawn_worker(n: int) -> subprocess.Popen:
            return subprocess.Popen([sys.executable, "-m", "controlplane.cli", "worker", "--name",
                                     f"lab-worker-{n}-{os.getpid()}"], env=child_env, cwd=REPO_ROOT)

        worker_procs = {n: spawn_worker(n) for n in range(1, workers + 1)}
        started = {n: time.monotonic() for n in worker_procs}
        backoff = {n: 0.0 for n in worker_procs}  # seconds before the next start of a worker that keeps dying
        due: dict[int, float] = {}  # worker -> when it starts again
        api = subprocess.Popen([sys.executable, "-m", "gunicorn", "--bind", f"{api_host}:{api_port}", "--workers", "2",
                                "--threads", "8", "--graceful-timeout", "5", "--log-level", "warning",
                                "--config", "python:controlplane.gunicorn_conf",  # as `controlplane api`
                                "controlplane:create_app()"], env=child_env, cwd=REPO_ROOT)
        children.extend([api, *worker_procs.values()])
        _wait_for_api(api_url, api)
        _banner(endpoints, directory, workers, private_redis is not None, _screens_line(config, services))

        while not stopping:
            time.sleep(0.5)
            if api.poll() is not None:
                _say(f"lab: the API exited with {api.returncode}; stopping the lab")
                return 1
            for n, proc in list(worker_procs.items()):
                if stopping or proc.poll() is None:
                    continue
                now = time.monotonic()
                if n not in due:
                    # Under its own name again (a dead worker's registration does not refuse it:
                    # tasks/worker.py); one that dies within 10 s of starting waits 1, 2, 4 … 30 s.
                    backoff[n] = min(max(backoff[n] * 2, 1.0), 30.0) if now - started[n] < 10 else 0.0
                    due[n] = now + backoff[n]
                    _say(f"lab: worker {n} exited with {proc.returncode}; starting it again"
                         + (f" in {backoff[n]:g} s" if backoff[n] else ""))
                if now >= due[n]:
                    del due[n]
                    worker_procs[n] = spawn_worker(n)
                    started[n] = time.monotonic()
                    children.append(worker_procs[n])
        _say("\nlab: stopping ...")
        return 0
    finally:
        stop_all(children, timeout=15)
        if services is not None:
            services.stop()
        if private_redis is not None:
            private_redis.stop()
        if stopping:
            _say("lab: stopped; state kept in " + str(directory))


def _wait_for_api(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    import requests
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the API failed to start (see the messages above)")
        try:
            requests.get(url + "/api/v1/health", timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.2)
    raise RuntimeError("the API did not answer within three minutes")


def _screens_line(config, services) -> str:
    from .screens import missing
    if services.screens is not None:
        return "real: each running VM has an X display (Xvfb) with a terminal, shown by noVNC on \"Open\""
    if not config.screens:
        return "off (CONTROLPLANE_LAB_SCREENS=false): \"Open\" shows the stand-in's plain page"
    return (f"plain stand-in page: this machine lacks {', '.join(missing())} "
            "(Debian: apt-get install xvfb x11vnc xterm novnc; make lab installs them as root)")


def _banner(endpoints: dict, directory: Path, workers: int, own_redis: bool, screens: str = "") -> None:
    api = endpoints["api"]
    rel = os.path.relpath(directory, Path.cwd())
    if rel.startswith(".."):
        rel = str(directory)
    _say(f"""
Cloud Desktop Service lab is running (Ctrl-C stops it; state is kept in {rel}/)

  Portal           {api}/   open it in a browser: sign in with any user name, create a desktop, open it
  API              {api}/api/v1/desktops
  API docs         {api}/api/v1/docs   (OpenAPI: {api}/api/v1/openapi.json)
  Health           {api}/api/v1/health
  Proxmox (fake)   {endpoints['proxmox']['url']}   user {endpoints['proxmox']['user']} / {endpoints['proxmox']['password']}
  Guacamole (lab)  {endpoints['guacamole']['url']}/   user {endpoints['guacamole']['username']}
  LLM (lab echo)   {endpoints['llm']['url']}   key {endpoints['llm']['apiKey']}   (answers openai/<model> chats)
  Redis            {endpoints['redis']}{'  (private to the lab)' if own_redis else ''}
  Workers          {workers}
  VM screens       {screens}
  Endpoints file   {rel}/endpoints.json

Or from the command line: get a token and create a desktop:
  TOKEN=$(.venv/bin/controlplane token user_12345)          # --admin for an admin token
  curl -s -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \\
       -d '{{"userId": "user_12345", "plan": "STANDARD"}}' {api}/api/v1/desktops
""")
