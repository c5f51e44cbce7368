"""GET /metrics (issue 22, item 2): Prometheus's text format for a bearer of the metrics token only;
requests counted by route (never by path), jobs by playbook and outcome, and what is true now
(desktops by status, queues, the warm pool) read at scrape time."""
from __future__ import annotations

import dataclasses

import pytest
from prometheus_client.parser import text_string_to_metric_families

TOKEN = "metrics-token-0123456789"


@pytest.fixture
def metrics_client(base_settings, database, client):
    from controlplane import create_app
    return create_app(dataclasses.replace(base_settings, metrics_token=TOKEN)).test_client()


def scrape(client) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200 and response.mimetype == "text/plain"
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.get_data(as_text=True)) for sample in family.samples}


def test_only_the_tokens_bearer_reads_them(client, metrics_client, auth):
    assert client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404  # none set
    assert metrics_client.get("/metrics").status_code == 404
    assert metrics_client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 404
    assert metrics_client.get("/metrics", headers=auth(admin=True)).status_code == 404  # an admin's JWT is not it


def test_requests_by_route_and_records_queues_and_pool_by_state(metrics_client, auth):
    created = metrics_client.post("/api/v1/desktops", json={"userId": "user_12345", "plan": "BASIC"}, headers=auth())
    assert created.status_code == 201
    desktop_id = created.get_json()["data"]["id"]
    assert metrics_client.get(f"/api/v1/desktops/{desktop_id}", headers=auth()).status_code == 200
    assert metrics_client.get("/api/v1/desktops/%0a<script>", headers=auth()).status_code == 400
    samples = scrape(metrics_client)
    route = "/api/v1/desktops/<desktop_id>"
    assert samples[("cds_http_requests_total", (("endpoint", route), ("method", "GET"), ("status", "200")))] >= 1
    assert samples[("cds_http_request_duration_seconds_count", (("endpoint", route), ("method", "GET")))] >= 1
    assert samples[("cds_http_requests_total", (("endpoint", "/api/v1/desktops"), ("method", "POST"),
                                                ("status", "201")))] >= 1
    assert not [key for key in samples if "script" in str(key) or "\\n" in str(key)]  # no path, no user text
    assert samples[("cds_desktops", (("status", "PENDING"),))] == 1
    assert samples[("cds_queue_jobs", (("queue", "desktops"),))] == 1
    assert samples[("cds_queue_oldest_job_age_seconds", (("queue", "desktops"),))] >= 0
    assert samples[("cds_queue_jobs", (("queue", "pool"),))] == 0
    assert ("cds_pool_target_vms", (("plan", "BASIC"),)) in samples


def test_every_process_counts_into_the_shared_folder_and_scrapes_add_them_up(tmp_path):
    """Processes (gunicorn's workers, the work horses) count into one folder; the API adds them up."""
    import subprocess
    import sys
    script = ("import sys; from controlplane import metrics; metrics.use_folder(sys.argv[1]); "
              "metrics.job_ended('desktop_create.yml', 'succeeded', 2.0); "
              "metrics.request_answered('/api/v1/desktops', 'POST', 201, 0.01)")
    for _ in range(2):
        subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, timeout=60)
    reader = ("import sys; from prometheus_client import CollectorRegistry, multiprocess, generate_latest; "
              "r = CollectorRegistry(); multiprocess.MultiProcessCollector(r, sys.argv[1]); "
              "sys.stdout.write(generate_latest(r).decode())")
    text = subprocess.run([sys.executable, "-c", reader, str(tmp_path)], check=True, timeout=60, capture_output=True,
                          text=True).stdout
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for f in text_string_to_metric_families(text) for s in f.samples}
    assert values[("cds_jobs_total", (("outcome", "succeeded"), ("playbook", "desktop_create.yml")))] == 2
    assert values[("cds_job_duration_seconds_sum", (("playbook", "desktop_create.yml"),))] == 4.0
    assert values[("cds_http_requests_total", (("endpoint", "/api/v1/desktops"), ("method", "POST"),
                                               ("status", "201")))] == 2
