"""JSON lines (log_format: json) and one request id for everything a request caused (issue 22, item 3):
the API's records of a create, its job's, its playbook run's task events, all carry the request's
X-Request-ID; secrets are still redacted in the JSON (message and exception alike)."""
from __future__ import annotations

import dataclasses
import io
import json
import logging

from controlplane import logs
from controlplane.config import Settings


def capture(settings: Settings) -> tuple[logging.Handler, io.StringIO]:
    """A handler configured as configure_logging configures the control plane's own, writing to a buffer."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonLines() if settings.log_format == "json" else logging.Formatter(logs.TEXT_FORMAT))
    handler.addFilter(logs.AddContext())
    handler.addFilter(logs.RedactSecrets(settings.secrets()))
    return handler, out


def lines(out: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_json_line_has_the_context_and_no_secret(base_settings):
    settings = dataclasses.replace(base_settings, log_format="json", proxmox_password="pve-secret-123456")
    handler, out = capture(settings)
    log = logging.getLogger("test.structured")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        with logs.context(request_id="req-1", job_id="desktop-1-create-abc"):
            log.info("logging in with %s\nand a second line", "pve-secret-123456")
            try:
                raise RuntimeError("refused pve-secret-123456")
            except RuntimeError:
                log.exception("it failed")
        log.info("outside")
    finally:
        log.removeHandler(handler)
    first, failed, outside = lines(out)
    assert first["message"] == f"logging in with {logs.REDACTED}\\x0aand a second line"
    assert (first["request_id"], first["job_id"], first["level"], first["logger"]) == (
        "req-1", "desktop-1-create-abc", "INFO", "test.structured")
    assert first["time"].endswith("+00:00")
    assert "pve-secret-123456" not in out.getvalue() and logs.REDACTED in failed["exception"]
    assert "request_id" not in outside and "job_id" not in outside


def test_one_request_id_finds_the_request_its_job_and_the_playbooks_task_events(client, auth, base_settings,
                                                                               redis_conn, monkeypatch):
    from controlplane.runner.ansible import PlaybookResult
    from controlplane.tasks import engine
    from tests.unit.test_failures import work

    def playbook(ansible_dir, playbook, inventory, extravars, env, timeout, secrets, on_task=None, niceness=0,
                 cancel=None):
        on_task("proxmox_desktop", "clone.yml", "Clone the VM from its template")
        on_task("guacamole_connection", "present.yml", "Register the connection")
        return PlaybookResult(status="successful", rc=0, stats={"desktop_ip": "10.0.0.9", "guacamole_connection_id": "9"})

    monkeypatch.setattr(engine, "run_playbook", playbook)
    monkeypatch.setattr(engine, "_settings", base_settings)
    from prometheus_client import REGISTRY
    succeeded = {"playbook": "desktop_create.yml", "outcome": "succeeded"}
    before = REGISTRY.get_sample_value("cds_jobs_total", succeeded) or 0
    handler, out = capture(dataclasses.replace(base_settings, log_format="json"))
    root = logging.getLogger()
    root.addHandler(handler)
    previous = root.level
    root.setLevel(logging.INFO)
    try:
        response = client.post("/api/v1/desktops", json={"userId": "user_logs", "plan": "BASIC"},
                               headers={**auth("user_logs"), "X-Request-ID": "create-for-the-logs"})
        assert response.status_code == 201, response.get_json()
        work(base_settings, redis_conn, 1)
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
    assert REGISTRY.get_sample_value("cds_jobs_total", succeeded) == before + 1  # and counted (metrics.py)
    mine = [line for line in lines(out) if line.get("request_id") == "create-for-the-logs"]
    said = [line["message"] for line in mine]
    desktop_id = response.get_json()["data"]["id"]
    assert any(m.startswith(f"desktop {desktop_id}: create accepted") for m in said), said  # the API's
    assert any(m.startswith(f"running desktop_create.yml for desktop {desktop_id}") for m in said), said  # the job's
    assert f"desktop {desktop_id}: desktop_create.yml: task 'Clone the VM from its template' " \
           "(proxmox_desktop/clone.yml)" in said, said  # the playbook's task events
    job_lines = [line for line in mine if "job_id" in line]  # the job's and its playbook's: its job id too
    assert len(job_lines) >= 3 and len({line["job_id"] for line in job_lines}) == 1, job_lines
    assert job_lines[0]["job_id"].startswith(f"desktop-{desktop_id}-create-")
