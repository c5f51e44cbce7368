"""GET /metrics: Prometheus's text format, for a bearer of CONTROLPLANE_METRICS_TOKEN only (no token
configured: 404, as if there were no such page). It adds up what every process counted
(controlplane/metrics.py: requests, jobs) and reads, at scrape time, what is true now: desktops and
projects by status, each queue's length and the age of its oldest job, the warm pool's VMs by plan and
state and its configured size. Each API request is counted here too, by its route's rule (never its path: no user text)."""
from __future__ import annotations

import hmac
import logging
import os
import time

from flask import Flask, Response, g, request

from .. import metrics
from ..config import Settings
from ..models import Desktop, PoolVm, Project, utcnow
from ..services.pool import configs as pool_configs
from ..services.queue import WORKER_QUEUES, get_queue

log = logging.getLogger(__name__)


class _StateNow:
    """The figures read when Prometheus scrapes (a prometheus_client collector)."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def collect(self):
        from peewee import fn
        from prometheus_client.core import GaugeMetricFamily
        for name, model, what in (("cds_desktops", Desktop, "Desktops"), ("cds_projects", Project, "Projects")):
            family = GaugeMetricFamily(name, f"{what} by status, now", labels=["status"])
            for status, count in model.select(model.status, fn.COUNT(model.id)).group_by(model.status).tuples():
                family.add_metric([status], count)
            yield family
        pool = GaugeMetricFamily("cds_pool_vms", "Warm pool VMs by plan and state, now", labels=["plan", "state"])
        for plan, state, count in (PoolVm.select(PoolVm.plan, PoolVm.state, fn.COUNT(PoolVm.id))
                                   .group_by(PoolVm.plan, PoolVm.state).tuples()):
            pool.add_metric([plan, state], count)
        yield pool
        target = GaugeMetricFamily("cds_pool_target_vms", "Each plan's warm pool size, as configured now", labels=["plan"])
        for plan, config in pool_configs(self.settings).items():
            target.add_metric([plan], config.size)
        yield target
        depth = GaugeMetricFamily("cds_queue_jobs", "Jobs waiting in each queue, now", labels=["queue"])
        age = GaugeMetricFamily("cds_queue_oldest_job_age_seconds",
                                "Seconds the oldest waiting job of each queue has waited (0: none waits)", labels=["queue"])
        now = utcnow()
        for name in WORKER_QUEUES:
            queue = get_queue(self.settings.redis_url, name)
            depth.add_metric([name], queue.count)
            oldest = queue.get_jobs(0, 1)
            waited = 0.0
            if oldest and oldest[0].enqueued_at is not None:
                waited = max(0.0, (now - oldest[0].enqueued_at.replace(tzinfo=None)).total_seconds())
            age.add_metric([name], waited)
        yield depth
        yield age


def _exposition(settings: Settings) -> bytes:
    """Every process's counts (from the shared folder; without one, this process's own), then the
    figures of now."""
    from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
    counted = REGISTRY
    if os.environ.get(metrics.FOLDER_VARIABLE):
        from prometheus_client import multiprocess
        counted = CollectorRegistry()
        multiprocess.MultiProcessCollector(counted)
    now = CollectorRegistry()
    now.register(_StateNow(settings))
    return generate_latest(counted) + generate_latest(now)


def init_metrics(app: Flask, settings: Settings) -> None:
    @app.before_request
    def _started():
        g.metrics_started = time.perf_counter()

    @app.after_request
    def _count(response):
        started = g.pop("metrics_started", None)
        if started is not None and request.path != "/metrics":
            endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
            try:
                metrics.request_answered(endpoint, request.method, response.status_code,
                                         time.perf_counter() - started)
            except Exception:  # counting must never change an answer
                log.exception("could not count request %s %s", request.method, endpoint)
        return response

    @app.get("/metrics")
    def _metrics():
        given = request.headers.get("Authorization", "")
        expected = f"Bearer {settings.metrics_token}"
        if not settings.metrics_token or not hmac.compare_digest(given.encode(), expected.encode()):
            return Response("Not Found\n", status=404, mimetype="text/plain")
        from prometheus_client import CONTENT_TYPE_LATEST
        return Response(_exposition(settings), mimetype=CONTENT_TYPE_LATEST)
