"""Prometheus metrics (prometheus_client): what the processes count as they work. The API's GET /metrics
(api/metrics.py) serves them with the figures read at scrape time (records by status, queues, the
warm pool).

Several processes count: gunicorn's API workers, and each RQ worker's work horses (a fork per job).
They share one folder (`metrics_dir`) in prometheus_client's multiprocess mode, which the commands
that start them name before prometheus_client is imported (`use_folder`); /metrics adds up every
process's files. A work horse counts under its worker's process id: one horse at a time per worker,
so the files do not grow with the number of jobs (the worker's other children, its reaper and warm
Ansible, count nothing). Without a folder (a test, a one-off command) a process counts in its own
memory only.

Labels are ours, never user text: an endpoint is its route's rule (`/api/v1/desktops/<desktop_id>`),
a playbook its file name, an outcome one of a few words.
"""
from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

FOLDER_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own
_COUNTS_AS = "CONTROLPLANE_METRICS_PID"  # a work horse counts under its worker's process id


def use_folder(folder: str | Path, fresh: bool = False) -> None:
    """Count into `folder` from now on, for this process and those it starts: before the first count
    (the command's first lines). `fresh`: empty it first (the lab's start, before any of its processes
    counts there)."""
    folder = Path(folder)
    if fresh and folder.is_dir():
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.environ[FOLDER_VARIABLE] = str(folder)


def count_as_this_process() -> None:
    """Work horses forked from now on count under this process's id (cli worker, before RQ forks)."""
    os.environ[_COUNTS_AS] = str(os.getpid())


def _process_id() -> int:
    return int(os.environ.get(_COUNTS_AS) or os.getpid())


# The families, made on first use: by then the command has named the folder (use_folder), and each
# value is kept in it (prometheus_client's MultiProcessValue) rather than in this process's memory.
_families: dict = {}
_making = threading.Lock()  # an API worker's threads may count their first request at once


def _family(kind: str, name: str, documentation: str, labels: list[str], **options):
    family = _families.get(name)
    if family is None:
        with _making:
            family = _families.get(name)
            if family is None:
                from prometheus_client import Counter, Histogram, values
                if os.environ.get(FOLDER_VARIABLE):
                    values.ValueClass = values.MultiProcessValue(process_identifier=_process_id)
                family = _families[name] = {"counter": Counter, "histogram": Histogram}[kind](
                    name, documentation, labels, **options)
    return family


def request_answered(endpoint: str, method: str, status: int, seconds: float) -> None:
    """An API request: `endpoint` is its route's rule, never its path."""
    _family("counter", "cds_http_requests_total", "API requests answered, by route, method and status",
            ["endpoint", "method", "status"]).labels(endpoint, method, str(status)).inc()
    _family("histogram", "cds_http_request_duration_seconds", "Time to answer an API request, by route and method",
            ["endpoint", "method"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
            ).labels(endpoint, method).observe(seconds)


def job_ended(playbook: str, outcome: str, seconds: float) -> None:
    """A playbook job: its playbook's file name; succeeded, failed, retrying or cancelled."""
    _family("counter", "cds_jobs_total", "Playbook jobs ended, by playbook and outcome "
            "(succeeded, failed, retrying, cancelled)", ["playbook", "outcome"]).labels(playbook, outcome).inc()
    _family("histogram", "cds_job_duration_seconds", "Wall time of a playbook job's runs, by playbook", ["playbook"],
            buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)).labels(playbook).observe(seconds)


def policy_acted(policy: str, action: str, done: bool) -> None:
    """A lifecycle policy's action (reconcile's are the drift it found: remove-vm, remove-connection, fail)."""
    _family("counter", "cds_policy_actions_total", "Lifecycle policy actions, by policy, action and whether "
            "it was done", ["policy", "action", "done"]).labels(policy, action, "true" if done else "false").inc()


def pool_missed(plan: str) -> None:
    """A create of a plan with a warm pool found no READY VM there (it clones)."""
    _family("counter", "cds_pool_misses_total", "Creates that found their plan's warm pool empty, by plan",
            ["plan"]).labels(plan).inc()


def infrastructure_failed(service: str) -> None:
    """A playbook run failed with an infrastructure error (retried): proxmox or guacamole."""
    _family("counter", "cds_infrastructure_errors_total", "Playbook runs failed by an infrastructure error, by "
            "the service that failed (proxmox, guacamole)", ["service"]).labels(service).inc()


def mark_process_dead(pid: int) -> None:
    """A process that counted into the folder ended (gunicorn's child_exit): its live gauges go."""
    if os.environ.get(FOLDER_VARIABLE):
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(pid)
