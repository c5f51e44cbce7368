"""`controlplane lab` (what `make lab` runs) as a user runs it: a foreground process that starts
everything, writes endpoints.json, accepts `controlplane token`, stops cleanly on Ctrl-C and keeps
its state for the next run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from ..conftest import REPO, free_port
from .helpers import Api

pytestmark = [pytest.mark.playbooks, pytest.mark.timeout(300)]  # `make lab` itself, on its own SQLite


def start_lab(env: dict, log_path) -> subprocess.Popen:
    log = open(log_path, "ab")
    return subprocess.Popen([sys.executable, "-m", "controlplane.cli", "lab", "--workers", "1"], env=env, cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT)


def wait_healthy(lab_dir, proc, log_path, timeout=240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the lab exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}"
        endpoints_file = lab_dir / "endpoints.json"
        if endpoints_file.exists():
            endpoints = json.loads(endpoints_file.read_text())
            try:
                if requests.get(endpoints["api"] + "/api/v1/health", timeout=2).status_code == 200:
                    return endpoints
            except requests.RequestException:
                pass
        time.sleep(0.3)
    raise AssertionError(f"the lab did not become healthy:\n{log_path.read_text()[-4000:]}")


def interrupt(proc, log_path) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        assert proc.wait(60) == 0, log_path.read_text()[-4000:]
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("the lab did not stop within 60 s of Ctrl-C") from None


def token(env: dict, user: str, *extra: str) -> str:
    out = subprocess.run([sys.executable, "-m", "controlplane.cli", "token", user, *extra], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_lab_runs_everything_stops_cleanly_and_keeps_state(tmp_path):
    lab_dir = tmp_path / "lab"
    log_path = tmp_path / "lab.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROLPLANE_")}
    env.update({
        "CONTROLPLANE_LAB_DIR": str(lab_dir), "CONTROLPLANE_PORT": str(free_port()),
        "CONTROLPLANE_LAB_PROXMOX_HOST": "127.0.0.1", "CONTROLPLANE_LAB_PROXMOX_PORT": str(free_port()),
        "CONTROLPLANE_LAB_GUACAMOLE_PORT": str(free_port()), "CONTROLPLANE_LAB_LLM_PORT": str(free_port()),
        "CONTROLPLANE_LAB_TIME_SCALE": "0.01",
        "CONTROLPLANE_LAB_AGENT_DELAY": "0.5", "PYTHONUNBUFFERED": "1",
        "CONTROLPLANE_RATE_LIMIT_API": "100000/minute",  # the test polls fast
    })
    proc = start_lab(env, log_path)
    try:
        endpoints = wait_healthy(lab_dir, proc, log_path)
        assert set(endpoints) == {"api", "proxmox", "guacamole", "redis", "llm", "metrics"}
        assert set(endpoints["llm"]) == {"url", "apiKey"} and endpoints["llm"]["url"].endswith("/v1")
        assert set(endpoints["proxmox"]) == {"url", "user", "password", "tokenId", "tokenSecret"}
        assert set(endpoints["guacamole"]) == {"url", "dataSource", "username", "password"}
        assert endpoints["redis"].startswith("unix://" + str(lab_dir))  # its own Redis: none was configured
        assert oct((lab_dir / "endpoints.json").stat().st_mode & 0o777) == "0o600"
        deadline = time.monotonic() + 30  # the banner follows the first healthy answer
        while "controlplane token" not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        banner = log_path.read_text()
        assert endpoints["api"] in banner and "controlplane token" in banner

        user_token = token(env, "user_12345")
        api = Api(endpoints["api"], user_token)
        created = api.create("user_12345", plan="STANDARD", name="kept")
        assert created.status_code == 201, created.text
        desktop_id = created.json()["data"]["id"]
        assert api.wait_settled(desktop_id, timeout=120)["status"] == "RUNNING"
        link = api.connect(desktop_id).json()["data"]
        # The lab's /connect answers an expiring auth-json link (the lab makes the secret).
        assert link["connectionUrl"].startswith(endpoints["guacamole"]["url"] + "/?data=") and link["expiresAt"]
        assert "VM screens" in banner
        connection_url = api.get(desktop_id).json()["data"]["connectionUrl"]  # the registered connection's
        assert connection_url.startswith(endpoints["guacamole"]["url"] + "/#/client/")

        # The Proxmox stand-in answers the real API with the lab's credentials.
        login = requests.post(endpoints["proxmox"]["url"] + "/api2/json/access/ticket", verify=False, timeout=5,
                              data={"username": endpoints["proxmox"]["user"],
                                    "password": endpoints["proxmox"]["password"]})
        assert login.status_code == 200 and login.json()["data"]["ticket"]
        # ... and the control plane's API token, which the lab's workers and API use.
        lab_env = (lab_dir / "lab.env").read_text()
        assert "CONTROLPLANE_PROXMOX_TOKEN_ID=controlplane\n" in lab_env
        assert endpoints["proxmox"]["tokenId"] == endpoints["proxmox"]["user"] + "!controlplane"
        auth = f"PVEAPIToken={endpoints['proxmox']['tokenId']}={endpoints['proxmox']['tokenSecret']}"
        for header, code in ((auth, 200), (auth + "x", 401)):
            version = requests.get(endpoints["proxmox"]["url"] + "/api2/json/version", verify=False, timeout=5,
                                   headers={"Authorization": header})
            assert version.status_code == code, version.text

        admin = Api(endpoints["api"], token(env, "ops", "--admin"))
        assert admin.session.get(admin.base, timeout=5).json()["data"]["total"] == 1

        # Prometheus's view: what the API's two gunicorn workers and the worker's job (a work horse) counted,
        # added up from the lab's metrics folder, for the token in endpoints.json only.
        from prometheus_client.parser import text_string_to_metric_families
        assert requests.get(endpoints["metrics"]["url"], timeout=5).status_code == 404
        scraped = requests.get(endpoints["metrics"]["url"], timeout=10,
                               headers={"Authorization": "Bearer " + endpoints["metrics"]["token"]})
        assert scraped.status_code == 200, scraped.text
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for f in text_string_to_metric_families(scraped.text) for s in f.samples}
        assert samples[("cds_jobs_total", (("outcome", "succeeded"), ("playbook", "desktop_create.yml")))] == 1
        assert samples[("cds_desktops", (("status", "RUNNING"),))] == 1
        assert samples[("cds_http_requests_total", (("endpoint", "/api/v1/desktops"), ("method", "POST"),
                                                    ("status", "201")))] == 1
    finally:
        interrupt(proc, log_path)
    assert "stopped; state kept" in log_path.read_text()

    # Run it again: the desktop, its VM and its connection are still there.
    proc = start_lab(env, log_path)
    try:
        endpoints = wait_healthy(lab_dir, proc, log_path)
        api = Api(endpoints["api"], token(env, "user_12345"))
        again = api.get(desktop_id).json()["data"]
        assert again["name"] == "kept" and again["status"] == "RUNNING"
        assert api.status(desktop_id, refresh=True).json()["data"]["status"] == "RUNNING"
        guac = requests.get(endpoints["guacamole"]["url"] + "/_lab/client/" + connection_url.rsplit("/", 1)[1],
                            timeout=5)
        assert guac.status_code == 200 and guac.json()["hostname"] == again["ipAddress"]

        # Its one worker, killed outright, is back under its own name (the dead one's registration
        # does not refuse it) and does the next job.
        import redis as redis_lib
        from rq import Worker
        conn = redis_lib.Redis.from_url(endpoints["redis"])
        (killed,) = [w for w in Worker.all(connection=conn) if w.name.startswith("lab-worker-1-")]
        os.kill(killed.pid, signal.SIGKILL)
        assert api.delete(desktop_id).status_code == 200
        # the lab's only worker now is the one started in its place: the delete is its job
        assert api.wait_settled(desktop_id, timeout=120)["status"] == "DELETED", log_path.read_text()[-3000:]
        replacement = [w for w in Worker.all(connection=conn) if w.name == killed.name]
        assert len(replacement) == 1 and replacement[0].pid != killed.pid
        assert log_path.read_text().count("lab: worker 1 exited") == 1  # started again once, not over and over
    finally:
        interrupt(proc, log_path)


def test_lab_refuses_a_port_in_use(tmp_path):
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROLPLANE_")}
        env.update({"CONTROLPLANE_LAB_DIR": str(tmp_path / "lab"), "CONTROLPLANE_PORT": str(busy.getsockname()[1])})
        out = subprocess.run([sys.executable, "-m", "controlplane.cli", "lab"], env=env, cwd=REPO,
                             capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "in use" in out.stdout + out.stderr
