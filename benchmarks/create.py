"""Create: create → RUNNING on the lab, the control plane's own overhead by phase, concurrent creates
and peak memory.

    .venv/bin/python benchmarks/create.py [--database sqlite|postgresql] [--workers 10] [--sequential 10]
                                          [--concurrency 10,50] [--pool N]

The lab is this script's own: fakepve with time_scale 0 (Proxmox tasks take no time) and a guest
agent that comes up `--agent-delay` seconds after the VM starts, the Guacamole stand-in, a private
Redis, `--workers` real `controlplane worker` processes (RQ, ansible-runner, the real playbooks) and
the API under gunicorn (`controlplane api`), all on loopback, on free ports.

1. Sequential. `--sequential` desktops are created one after another (POST /api/v1/desktops, then
   wait for RUNNING). With Proxmox taking no time, everything but the guest agent's delay is the
   control plane's: overhead = (desktop created → RUNNING event) − agent delay. Per desktop: queue
   wait (the RQ job's enqueued_at → started_at), ansible-playbook start-up (run start → first task),
   the playbook's tasks grouped by the status they drive (PROVISIONING: clone and configure,
   STARTING, WAITING_FOR_IP, CONFIGURING: the Guacamole registration) from the task timings the job
   returns (controlplane/runner/ansible.py), and per task over all runs. Target: p95 overhead < 10 s.
2. Concurrency. For each count in `--concurrency`, that many users create a desktop at the same
   moment. Passes when every one reaches RUNNING, no VM id is used twice (database and fakepve,
   and every desktop's VM carries its name), and no status message or event mentions a lock.
   Reports the total time (first request → last RUNNING) and per desktop p50/p95/max.
3. Memory. Every 0.5 s during the runs: RSS of the API (gunicorn master and workers) and of each
   worker's process tree (the RQ worker, its reaper, the work horse and the ansible-playbook
   processes it spawns). RSS counts pages shared after fork in every process, so sums over-count.
4. `--pool N` (optional; needs the warm-pool admin API): PUT /api/v1/admin/pools/STANDARD
   {"size": N, "power": "running"}, wait until GET /api/v1/admin/pools reports N ready, then
   `--sequential` creates: p95 create → RUNNING with the pool. Then benchmarks/floor.py makes the same
   Proxmox and Guacamole calls directly as many times. Then, the pool full again, N users create at
   the same moment. Targets: p95 ≤ 1.5 s (one after another, and N at once), and the sequential
   creates' median at most 10 × the floor's (API token only).

Prints a table, writes benchmarks/results/create-<database>.json (with the machine), exits 1 when a
target is missed.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from load import Database, _cpu_model, _loadavg, start_api  # noqa: E402  (the same database and API set-up)

PLAN = "STANDARD"
LOCK_WORDS = re.compile(r"lock|deadlock|could not serialize|duplicate key|already used|already exists", re.I)
PHASES = ("setup", "PROVISIONING", "STARTING", "WAITING_FOR_IP", "CONFIGURING")
POOL_P95_S = 1.5  # issue 20: a warm-pool create → RUNNING, p95
POOL_FLOOR_RATIO = 10  # and its median at most 10 × the floor's (benchmarks/floor.py)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank) of values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return ordered[rank]


def summary(values: list[float]) -> dict:
    return {"n": len(values), "p50": _r(pct(values, 50)), "p95": _r(pct(values, 95)), "max": _r(max(values, default=None)),
            "mean": _r(statistics.fmean(values) if values else None)}


def _r(value, digits: int = 3):
    return None if value is None else round(value, digits)


def _seconds(a: dt.datetime | None, b: dt.datetime | None) -> float | None:
    if a is None or b is None:
        return None
    strip = lambda d: d.replace(tzinfo=None) if d.tzinfo is None else d.astimezone(dt.timezone.utc).replace(tzinfo=None)  # noqa: E731
    return (strip(b) - strip(a)).total_seconds()


# ---- processes -------------------------------------------------------------------------------------

class Workers:
    """`count` real `controlplane worker` processes, each with its log file."""

    def __init__(self, env: dict, log_dir: Path):
        self.env, self.log_dir = env, log_dir
        self.procs: dict[str, subprocess.Popen] = {}

    def spawn(self, count: int) -> None:
        for n in range(count):
            name = f"bench-worker-{n + 1}-{uuid.uuid4().hex[:4]}"
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "controlplane.cli", "worker", "--name", name], env=self.env, cwd=REPO,
                stdout=open(self.log_dir / f"{name}.log", "wb"), stderr=subprocess.STDOUT)

    def wait_registered(self, redis_conn, timeout: float = 60) -> None:
        from rq import Worker
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len([w for w in Worker.all(connection=redis_conn) if w.name in self.procs]) >= len(self.procs):
                return
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    sys.exit(f"worker {name} exited: {(self.log_dir / f'{name}.log').read_text()[-2000:]}")
            time.sleep(0.2)
        sys.exit("the workers did not register in time")

    def stop(self) -> None:
        from controlplane.processes import stop_all
        stop_all(self.procs.values(), timeout=20)

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.log_dir.glob("*.log"))


class MemorySampler(threading.Thread):
    """Peak RSS of the API's processes and of each worker's process tree, sampled every `interval` (psutil)."""

    def __init__(self, api_pid: int, worker_pids: list[int], interval: float = 0.5, limit_s: float = 1800):
        super().__init__(name="memory-sampler", daemon=True)
        import psutil
        self.psutil = psutil
        self.api = psutil.Process(api_pid)
        self.workers = [psutil.Process(pid) for pid in worker_pids]
        self.interval, self.limit_s = interval, limit_s
        self.stop_event = threading.Event()
        self.peak = {"api_total_mb": 0.0, "api_process_mb": 0.0, "api_processes": 0, "worker_tree_mb": 0.0,
                     "worker_process_mb": 0.0, "work_horse_mb": 0.0, "ansible_playbook_mb": 0.0,
                     "ansible_playbook_processes_per_tree": 0, "all_workers_mb": 0.0, "samples": 0}

    def _tree(self, root):
        try:
            return [root] + root.children(recursive=True)
        except self.psutil.Error:
            return []

    def _rss(self, proc) -> float:
        try:
            return proc.memory_info().rss / 2**20
        except self.psutil.Error:
            return 0.0

    def _cmd(self, proc) -> str:
        try:
            return " ".join(proc.cmdline())
        except self.psutil.Error:
            return ""

    def sample(self) -> None:
        p = self.peak
        api = self._tree(self.api)
        sizes = [self._rss(proc) for proc in api]
        p["api_total_mb"] = max(p["api_total_mb"], sum(sizes))
        p["api_process_mb"] = max(p["api_process_mb"], max(sizes, default=0))
        p["api_processes"] = max(p["api_processes"], len(api))
        everything = 0.0
        for root in self.workers:
            tree = self._tree(root)
            total = 0.0
            playbooks = 0
            for proc in tree:
                rss = self._rss(proc)
                total += rss
                cmd = self._cmd(proc)
                if "ansible-playbook" in cmd:
                    playbooks += 1
                    p["ansible_playbook_mb"] = max(p["ansible_playbook_mb"], rss)
                elif proc.pid == root.pid:
                    p["worker_process_mb"] = max(p["worker_process_mb"], rss)
                elif "controlplane.cli worker" in cmd:  # the work horse: a fork of the worker
                    p["work_horse_mb"] = max(p["work_horse_mb"], rss)
            p["worker_tree_mb"] = max(p["worker_tree_mb"], total)
            p["ansible_playbook_processes_per_tree"] = max(p["ansible_playbook_processes_per_tree"], playbooks)
            everything += total
        p["all_workers_mb"] = max(p["all_workers_mb"], everything)
        p["samples"] += 1

    def run(self) -> None:
        deadline = time.monotonic() + self.limit_s
        while not self.stop_event.wait(self.interval) and time.monotonic() < deadline:
            self.sample()

    def result(self) -> dict:
        return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in self.peak.items()}


# ---- creating and measuring ------------------------------------------------------------------------

class Bench:
    def __init__(self, settings, base: str, services, redis_conn, agent_delay: float, timeout: float):
        self.settings, self.base, self.services, self.redis = settings, base, services, redis_conn
        self.agent_delay, self.timeout = agent_delay, timeout
        self.workers: Workers | None = None
        self.http = requests.Session()

    def token(self, user: str, admin: bool = False) -> str:
        from controlplane.auth import mint_lab_token
        return mint_lab_token(self.settings, user, admin=admin)

    def post_create(self, user: str) -> tuple[int | None, str, float, float]:
        """POST a create for `user`: (desktop id or None, why not, request sent, answer received)."""
        headers = {"Authorization": f"Bearer {self.token(user)}"}
        sent = time.time()
        try:
            r = requests.post(f"{self.base}/api/v1/desktops", json={"userId": user, "plan": PLAN}, headers=headers,
                              timeout=30)
        except requests.RequestException as exc:
            return None, repr(exc), sent, time.time()
        answered = time.time()
        if r.status_code != 201:
            return None, f"HTTP {r.status_code}: {r.text[:300]}", sent, answered
        return r.json()["data"]["id"], "", sent, answered

    def wait_settled(self, ids: list[int], timeout: float | None = None) -> tuple[dict[int, str], dict[int, float]]:
        """Poll the database every 0.1 s until every desktop is RUNNING or FAILED (or the timeout):
        (id → status, id → when it was first seen settled). The database's own timestamps are whole
        seconds, hence this clock."""
        from controlplane.extensions import db
        from controlplane.models import Desktop
        deadline = time.monotonic() + (timeout or self.timeout)
        statuses: dict[int, str] = {}
        settled: dict[int, float] = {}
        while time.monotonic() < deadline:
            with db.connection_context():
                statuses = {d.id: d.status for d in Desktop.select(Desktop.id, Desktop.status).where(Desktop.id.in_(ids))}
            now = time.time()
            for i, status in statuses.items():
                if status in ("RUNNING", "FAILED"):
                    settled.setdefault(i, now)
            if len(settled) == len(ids):
                break
            if self.workers is not None and all(p.poll() is not None for p in self.workers.procs.values()):
                print("  every worker has exited (killed from outside?); not waiting any longer", flush=True)
                break
            time.sleep(0.1)
        return statuses, settled

    def measure(self, desktop_id: int, sent: float, answered: float, settled: float | None) -> dict:
        """One desktop's timeline: its events, its RQ job's times and its playbook's task timings."""
        from rq.job import Job

        from controlplane.extensions import db
        from controlplane.models import Desktop, DesktopEvent
        from controlplane.states import TASK_FILE_STATUS
        with db.connection_context():
            d = Desktop.get_by_id(desktop_id)
            events = list(DesktopEvent.select().where(DesktopEvent.desktop == desktop_id).order_by(DesktopEvent.id))
        out = {"id": d.id, "user": d.user_id, "status": d.status, "message": d.status_message, "vmid": d.vmid,
               "wall_s": _r(settled - sent) if settled is not None and d.status == "RUNNING" else None,
               "post_s": _r(answered - sent),
               "events": [{"status": e.status, "message": e.message, "source": e.source,
                           "at_s": _r(_seconds(d.created_at, e.created_at))} for e in events]}
        # status phases as the user sees them: from one status event to the next (whole seconds)
        phases: dict[str, float] = {}
        for a, b in zip(events, events[1:]):
            phases[a.status] = phases.get(a.status, 0.0) + (_seconds(a.created_at, b.created_at) or 0.0)
        out["status_phases_s"] = {k: _r(v) for k, v in phases.items()}
        try:
            job = Job.fetch(d.job_id, connection=self.redis)
        except Exception as exc:  # noqa: BLE001 - reported
            out["job_error"] = repr(exc)
            return out
        deadline = time.monotonic() + 15  # RUNNING is written just before the job returns
        while job.get_status() not in ("finished", "failed") and time.monotonic() < deadline:
            time.sleep(0.1)
            job = Job.fetch(d.job_id, connection=self.redis)
        out["queue_wait_s"] = _r(_seconds(job.enqueued_at, job.started_at))
        out["job_s"] = _r(_seconds(job.started_at, job.ended_at))
        result = job.return_value() if job.get_status() == "finished" else None
        playbook = (result or {}).get("playbook") if isinstance(result, dict) else None
        if not playbook:
            return out
        tasks = playbook.get("tasks") or []
        by_phase = {k: 0.0 for k in PHASES}
        phase = "setup"
        for t in tasks:
            mapped = TASK_FILE_STATUS.get((t["role"], t["file"]))
            if mapped is not None:
                phase = mapped[0].value
            by_phase[phase] = by_phase.get(phase, 0.0) + (t["seconds"] or 0.0)
        out["playbook_s"] = playbook.get("seconds")
        out["startup_s"] = playbook.get("startup")
        out["task_phases_s"] = {k: _r(v) for k, v in by_phase.items()}
        out["worker_outside_playbook_s"] = _r(out["job_s"] - playbook["seconds"]) if out.get("job_s") else None
        out["tasks"] = tasks
        return out

    def create_many(self, count: int, prefix: str) -> dict:
        """`count` users create a desktop at the same moment; waits for them all."""
        users = [f"{prefix}_{i:03d}_{uuid.uuid4().hex[:6]}" for i in range(count)]
        barrier = threading.Barrier(count)
        posted: dict[str, tuple] = {}

        def one(user: str):
            try:
                barrier.wait(30)
            except threading.BrokenBarrierError:
                pass
            posted[user] = self.post_create(user)

        threads = [threading.Thread(target=one, args=(u,), daemon=True) for u in users]
        started = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        ids = [v[0] for v in posted.values() if v[0] is not None]
        post_errors = [f"{u}: {v[1]}" for u, v in posted.items() if v[0] is None]
        # Each worker runs one create at a time: more creates than workers wait their turn, so the
        # batch gets --timeout for each round of creates the workers go through.
        workers = len(self.workers.procs) if self.workers else 1
        rounds = max(1, -(-len(ids) // workers))  # ceil
        statuses, settled = self.wait_settled(ids, timeout=self.timeout * rounds)
        desktops = [self.measure(v[0], v[2], v[3], settled.get(v[0])) for v in posted.values() if v[0] is not None]
        ends = [settled[i] for i in ids if statuses.get(i) == "RUNNING" and i in settled]
        return {"users": users, "ids": ids, "post_errors": post_errors, "statuses": statuses, "desktops": desktops,
                "started": started, "total_s": _r(max(ends) - started) if ends else None}

    def fakepve_vms(self) -> list[tuple[int, str]]:
        return self.services.call(lambda: [(vm.vmid, vm.name) for vm in self.services.pve.vms if not vm.template])


def sequential(bench: Bench, count: int, prefix: str) -> dict:
    runs, failures = [], []
    for i in range(count):
        user = f"{prefix}_{i:03d}_{uuid.uuid4().hex[:6]}"
        desktop_id, error, sent, answered = bench.post_create(user)
        if desktop_id is None:
            failures.append(f"{user}: {error}")
            continue
        statuses, settled = bench.wait_settled([desktop_id])
        status = statuses.get(desktop_id)
        measured = bench.measure(desktop_id, sent, answered, settled.get(desktop_id))
        runs.append(measured)
        if status != "RUNNING":
            failures.append(f"desktop {desktop_id}: {status} {measured['message']}")
        print(f"  {prefix} {i + 1}/{count}: desktop {desktop_id} {status} in {measured.get('wall_s')} s", flush=True)
    ok = [r for r in runs if r["status"] == "RUNNING" and r.get("wall_s") is not None]
    overhead = [max(0.0, r["wall_s"] - bench.agent_delay) for r in ok]
    report = {"count": count, "failures": failures, "wall_s": summary([r["wall_s"] for r in ok]),
              "overhead_s": summary(overhead), "post_s": summary([r["post_s"] for r in ok]),
              "queue_wait_s": summary([r["queue_wait_s"] for r in ok if r.get("queue_wait_s") is not None]),
              "job_s": summary([r["job_s"] for r in ok if r.get("job_s") is not None]),
              "playbook_s": summary([r["playbook_s"] for r in ok if r.get("playbook_s") is not None]),
              "startup_s": summary([r["startup_s"] for r in ok if r.get("startup_s") is not None]),
              "worker_outside_playbook_s": summary([r["worker_outside_playbook_s"] for r in ok
                                                   if r.get("worker_outside_playbook_s") is not None]),
              "task_phases_s": {ph: summary([r["task_phases_s"][ph] for r in ok if "task_phases_s" in r])
                                for ph in PHASES},
              "status_phases_s": {ph: summary([r["status_phases_s"].get(ph, 0.0) for r in ok])
                                  for ph in ("PENDING",) + PHASES[1:]},
              "desktops": runs}
    timed = [r for r in ok if r.get("tasks")]
    report["per_task"] = per_task(timed)
    report["per_action"] = per_action(timed)
    return report


def per_action(runs: list[dict]) -> list[dict]:
    """Per module or action (uri, proxmox_kvm, set_fact ...): tasks per create and mean seconds per task."""
    table: dict[str, list[float]] = {}
    for r in runs:
        for t in r.get("tasks") or []:
            table.setdefault(t.get("action") or "?", []).append(t["seconds"] or 0.0)
    n = max(1, len(runs))
    return sorted(({"action": a, "per_create": _r(len(s) / n, 1), "mean_s": _r(statistics.fmean(s)),
                    "total_per_create_s": _r(sum(s) / n)} for a, s in table.items()),
                  key=lambda row: -row["total_per_create_s"])


def per_task(runs: list[dict]) -> list[dict]:
    """Mean seconds of each task over the runs, in playbook order (the n-th run of a task file's
    action; task names may carry the desktop's name)."""
    table: dict[tuple, dict] = {}
    for r in runs:
        seen: dict[tuple, int] = {}
        for t in r.get("tasks") or []:
            key = (t["role"], t["file"], t.get("action", ""))
            seen[key] = seen.get(key, 0) + 1
            entry = table.setdefault(key + (seen[key],), {"role": t["role"], "file": t["file"], "task": t["task"],
                                                          "action": t.get("action", ""), "seconds": [],
                                                          "attempts": []})
            entry["seconds"].append(t["seconds"] or 0.0)
            if "attempts" in t:
                entry["attempts"].append(t["attempts"])
    rows = []
    for entry in table.values():
        s = entry.pop("seconds")
        a = entry.pop("attempts")
        entry.update(runs=len(s), mean_s=_r(statistics.fmean(s)), max_s=_r(max(s)))
        if a:
            entry["mean_attempts"] = _r(statistics.fmean(a), 2)
        rows.append(entry)
    return rows


def concurrency(bench: Bench, count: int) -> dict:
    from controlplane.extensions import db
    from controlplane.models import Desktop, DesktopEvent, VmidLease
    print(f"  {count} simultaneous creates ...", flush=True)
    run = bench.create_many(count, f"conc{count}")
    desktops = run["desktops"]
    running = [d for d in desktops if d["status"] == "RUNNING"]
    failed = [f"desktop {d['id']}: {'FAILED' if d['status'] == 'FAILED' else 'not RUNNING in time, still'} "
              f"{d['status']} {d['message']}" for d in desktops if d["status"] != "RUNNING"]
    failed += run["post_errors"]
    if len(run["ids"]) + len(run["post_errors"]) < count:
        failed.append(f"only {len(run['ids']) + len(run['post_errors'])} of {count} requests answered")
    # VM ids: unique among the active desktops in the database, every one a VM in fakepve by that name
    with db.connection_context():
        active = list(Desktop.select(Desktop.id, Desktop.vmid).where(Desktop.status != "DELETED"))
        lease_count = VmidLease.select().where(VmidLease.desktop.in_(run["ids"])).count() if run["ids"] else 0
        messages = [e.message for e in DesktopEvent.select(DesktopEvent.message)
                    .where(DesktopEvent.desktop.in_(run["ids"]))] if run["ids"] else []
    vmids = [d.vmid for d in active if d.vmid is not None]
    duplicates_db = sorted({v for v in vmids if vmids.count(v) > 1})
    vms = bench.fakepve_vms()
    pve_ids = [v for v, _ in vms]
    duplicates_pve = sorted({v for v in pve_ids if pve_ids.count(v) > 1})
    names = dict(vms)
    misnamed = [d["id"] for d in running if names.get(d["vmid"]) != f"cds-desktop-{d['id']}"]
    lock_messages = [m for m in messages + [d["message"] for d in desktops] if LOCK_WORDS.search(m or "")]
    retries = [m for m in messages if "retry" in (m or "").lower()]
    ends = [d["wall_s"] for d in running if d.get("wall_s") is not None]
    total = run["total_s"]
    return {"count": count, "running": len(running), "failures": failed, "duplicate_vmids_db": duplicates_db,
            "duplicate_vmids_pve": duplicates_pve, "desktops_without_their_vm": misnamed,
            "leases": lease_count, "lock_messages": lock_messages[:10], "retry_messages": retries[:10],
            "total_s": _r(total), "per_desktop_s": summary(ends),
            "queue_wait_s": summary([d["queue_wait_s"] for d in running if d.get("queue_wait_s") is not None]),
            "job_s": summary([d["job_s"] for d in running if d.get("job_s") is not None]),
            "passed": (not failed and not duplicates_db and not duplicates_pve and not misnamed and not lock_messages
                       and len(running) == count)}


def wait_pool_ready(bench: Bench, admin: dict, size: int, wait_s: float) -> tuple[float | None, dict]:
    """(seconds until GET /api/v1/admin/pools reported `size` ready, or None; its last answer)."""
    started = time.monotonic()
    last: dict = {}
    while time.monotonic() - started < wait_s:
        r = requests.get(f"{bench.base}/api/v1/admin/pools", headers=admin, timeout=30)
        if r.status_code == 200:
            pools = r.json().get("data", {}).get("pools", [])
            last = next((p for p in pools if p.get("plan") == PLAN), {})
            if int(last.get("ready") or 0) >= size:
                return time.monotonic() - started, last
        time.sleep(0.5)
    return None, last


def from_pool(desktop: dict) -> bool:
    """Whether the desktop's create took a VM of the warm pool (its status events say so)."""
    return any("warm pool" in (e.get("message") or "") for e in desktop.get("events") or [])


def warm_pool(bench: Bench, size: int, count: int, wait_s: float) -> dict:
    """Through the admin pool API (the warm-pool branch): fill a pool of `size` running VMs for the
    plan, then time `count` sequential creates; fill it again, then `size` creates at once."""
    admin = {"Authorization": f"Bearer {bench.token('bench_admin', admin=True)}"}
    try:
        r = requests.put(f"{bench.base}/api/v1/admin/pools/{PLAN}", json={"size": size, "power": "running"},
                         headers=admin, timeout=30)
    except requests.RequestException as exc:
        return {"size": size, "error": f"PUT pool: {exc!r}", "passed": False}
    if r.status_code >= 300:
        return {"size": size, "error": f"PUT pool: HTTP {r.status_code}: {r.text[:300]}", "passed": False}
    fill_s, last = wait_pool_ready(bench, admin, size, wait_s)
    if fill_s is None:
        return {"size": size, "error": f"the pool reported {last.get('ready')} of {size} ready after {wait_s:g} s: "
                                      f"{last}", "passed": False}
    print(f"  pool of {size} ready in {fill_s:.1f} s", flush=True)
    result = sequential(bench, count, "pool")
    p95 = result["wall_s"]["p95"]
    floor_s = pool_floor(bench, result["desktops"], count)
    ratio = (result["wall_s"]["p50"] / floor_s["p50"]) if floor_s and result["wall_s"]["p50"] else None
    burst = pool_burst(bench, admin, size, wait_s)
    return {"size": size, "fill_s": _r(fill_s), "create": {k: v for k, v in result.items() if k != "desktops"},
            "desktops": result["desktops"], "p95_s": p95, "floor_s": floor_s, "product_over_floor": _r(ratio, 1),
            "at_once": burst,
            "passed": not result["failures"] and p95 is not None and p95 <= POOL_P95_S
            and ratio is not None and ratio <= POOL_FLOOR_RATIO and burst["passed"]}


def pool_burst(bench: Bench, admin: dict, size: int, wait_s: float) -> dict:
    """`size` users create a desktop at the same moment from a full pool of `size` (issue 20: p95 ≤ 1.5 s)."""
    refill_s, last = wait_pool_ready(bench, admin, size, wait_s)
    if refill_s is None:
        return {"count": size, "error": f"the pool reported {last.get('ready')} of {size} ready after {wait_s:g} s",
                "passed": False}
    print(f"  pool full again in {refill_s:.1f} s; {size} creates at once ...", flush=True)
    run = bench.create_many(size, "poolburst")
    desktops = run["desktops"]
    running = [d for d in desktops if d["status"] == "RUNNING" and d.get("wall_s") is not None]
    failures = run["post_errors"] + [f"desktop {d['id']}: {d['status']} {d['message']}"
                                     for d in desktops if d["status"] != "RUNNING"]
    wall = summary([d["wall_s"] for d in running])
    pooled = sum(1 for d in running if from_pool(d))
    print(f"  {len(running)}/{size} RUNNING ({pooled} from the pool): p50 {wall['p50']} s, p95 {wall['p95']} s",
          flush=True)
    return {"count": size, "running": len(running), "from_pool": pooled, "failures": failures, "wall_s": wall,
            "queue_wait_s": summary([d["queue_wait_s"] for d in running if d.get("queue_wait_s") is not None]),
            "job_s": summary([d["job_s"] for d in running if d.get("job_s") is not None]),
            "total_s": run["total_s"], "desktops": desktops,
            "passed": not failures and len(running) == size and wall["p95"] is not None and wall["p95"] <= POOL_P95_S}


def pool_floor(bench: Bench, desktops: list[dict], runs: int) -> dict | None:
    """benchmarks/floor.py on this lab: the same Proxmox and Guacamole calls as a warm-pool create,
    made directly, `runs` times on the VM of a desktop the pool gave (an API token only)."""
    from floor import floor
    cfg = bench.settings
    vmids = [d["vmid"] for d in desktops if d.get("status") == "RUNNING" and d.get("vmid")]
    if not vmids or not cfg.proxmox_token_id:
        return None
    name = cfg.proxmox_token_id.split("!")[-1]
    token = f"{cfg.proxmox_user}!{name}={cfg.proxmox_token_secret}"
    times = floor(f"https://{cfg.proxmox_host}:{cfg.proxmox_port}", token, cfg.guacamole_url,
                  (cfg.guacamole_username, cfg.guacamole_password), vmids[-1], runs)
    print(f"  floor (the same calls, direct): median {statistics.median(times):.3f} s", flush=True)
    return summary(times)


# ---- main ------------------------------------------------------------------------------------------

def main() -> int:
    # A TERM (a timeout, a kill) ends the run through its clean-up: no API, workers or Redis left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--workers", type=int, default=10, help="controlplane worker processes")
    parser.add_argument("--sequential", type=int, default=10, help="desktops created one after another")
    parser.add_argument("--concurrency", default="10,50", help="comma-separated counts of simultaneous creates")
    parser.add_argument("--agent-delay", type=float, default=0.2, help="seconds from VM start to its guest agent")
    parser.add_argument("--proxmox-auth", choices=("token", "password"), default="token",
                        help="how the control plane signs in to Proxmox: an API token (production's way) or "
                             "user and password (a ticket login before each guest-agent read)")
    parser.add_argument("--api-workers", type=int, default=2)
    parser.add_argument("--api-threads", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=480, help="seconds to wait for a batch to settle, per round of creates the workers go through "
                             "(50 creates on 10 workers: 5 rounds)")
    parser.add_argument("--pool", type=int, default=0, help="also time creates from a warm pool of this size")
    parser.add_argument("--pool-wait", type=float, default=180, help="seconds to wait for the pool to fill")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    counts = [int(c) for c in args.concurrency.split(",") if c.strip()]
    loadavg_start = _loadavg()

    from controlplane.config import Settings
    from controlplane.lab.redis_server import PrivateRedis
    from controlplane.lab.services import LabConfig, LabServices
    from controlplane.models import init_db
    from controlplane.services.queue import get_redis

    work = Path(tempfile.mkdtemp(prefix="cds-bench-create-"))
    database = Database(args.database, work)
    redis_server = PrivateRedis(work / "redis", persist=False).start()
    services = workers = api = sampler = None
    report: dict = {}
    try:
        lab = LabConfig(state_dir=work / "lab", proxmox_host="127.0.0.7", proxmox_port=free_port("127.0.0.7"),
                        time_scale=0.0, agent_delay=args.agent_delay, guacamole_port=free_port(),
                        llm_port=free_port(), guacamole_password="guac-" + secrets.token_hex(8),
                        proxmox_token_name="bench" if args.proxmox_auth == "token" else "",
                        proxmox_token_secret=str(uuid.uuid4()) if args.proxmox_auth == "token" else "")
        services = LabServices(lab).start()
        settings = Settings(var_dir=work, database_url=database.url, redis_url=redis_server.url,
                            jwt_secret=secrets.token_urlsafe(48), proxmox_host=lab.proxmox_host,
                            proxmox_port=lab.proxmox_port, proxmox_user=lab.proxmox_user,
                            proxmox_password=lab.proxmox_password, proxmox_token_id=lab.proxmox_token_name,
                            proxmox_token_secret=lab.proxmox_token_secret, proxmox_verify_ssl=False,
                            guacamole_url=services.guacamole.url,
                            guacamole_username=lab.guacamole_username, guacamole_password=lab.guacamole_password,
                            policy_interval=0, lab=True)
        init_db(settings.effective_database_url)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROLPLANE_")}
        env.update(settings.to_env())
        env["PYTHONUNBUFFERED"] = "1"
        (work / "logs").mkdir()
        workers = Workers(env, work / "logs")
        workers.spawn(args.workers)
        redis_conn = get_redis(settings.redis_url)
        workers.wait_registered(redis_conn)
        port = free_port()
        api = start_api(env, port, args.api_workers, args.api_threads, work / "logs" / "api.log")
        base = f"http://127.0.0.1:{port}"
        sampler = MemorySampler(api.pid, [p.pid for p in workers.procs.values()])
        sampler.start()
        bench = Bench(settings, base, services, redis_conn, args.agent_delay, args.timeout)
        bench.workers = workers

        print(f"warm-up: one create ({args.database}, {args.workers} workers) ...", flush=True)
        sequential(bench, 1, "warmup")
        print(f"sequential: {args.sequential} creates ...", flush=True)
        seq = sequential(bench, args.sequential, "seq")
        conc = [concurrency(bench, n) for n in counts]
        pool = warm_pool(bench, args.pool, args.sequential, args.pool_wait) if args.pool else None
        sampler.stop_event.set()
        sampler.join(5)
        worker_log = workers.log_text()
        log_locks = sorted({m.group(0) for m in re.finditer(r".{0,80}(database is locked|deadlock detected).{0,40}",
                                                             worker_log)})[:10]
        report = {"sequential": seq, "concurrency": conc, "pool": pool, "memory_mb": sampler.result(),
                  "worker_log_lock_errors": log_locks}
    finally:
        if sampler is not None:
            sampler.stop_event.set()
        if api is not None and api.poll() is None:
            os.killpg(api.pid, 15)
            try:
                api.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(api.pid, 9)
        if workers is not None:
            workers.stop()
        if services is not None:
            services.stop()
        redis_server.stop()
        database.drop()
        shutil.rmtree(work, ignore_errors=True)

    seq, conc, pool, memory = report["sequential"], report["concurrency"], report["pool"], report["memory_mb"]
    seq_ok = not seq["failures"] and seq["overhead_s"]["p95"] is not None and seq["overhead_s"]["p95"] < 10
    conc_ok = all(c["passed"] for c in conc) and not report["worker_log_lock_errors"]
    pool_ok = pool is None or pool["passed"]
    machine = {"cpus": os.cpu_count(), "processor": _cpu_model(), "memory_gb": _memory_gb(),
               "platform": platform.platform(), "python": platform.python_version(),
               "loadavg_at_start": loadavg_start, "loadavg_at_end": _loadavg()}
    report.update({"database": args.database, "workers": args.workers, "agent_delay_s": args.agent_delay,
                   "fakepve_time_scale": 0, "proxmox_auth": args.proxmox_auth, "api_workers": args.api_workers, "api_threads": args.api_threads,
                   "machine": machine, "passed": seq_ok and conc_ok and pool_ok,
                   "targets": {"sequential_overhead_p95_s": 10, "concurrent_failures": 0, "pool_p95_s": POOL_P95_S,
                               "pool_over_floor": POOL_FLOOR_RATIO},
                   "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    out = args.out or REPO / "benchmarks" / "results" / f"create-{args.database}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")

    f = lambda s: "-" if s is None else f"{s:.2f}"  # noqa: E731
    print()
    print(f"Create on {args.database}: {args.workers} workers, fakepve time scale 0, agent delay {args.agent_delay:g} s, "
          f"Proxmox {args.proxmox_auth}; "
          f"{machine['cpus']} CPUs ({machine['processor']}), {machine['memory_gb']} GB")
    print(f"{'sequential (s), ' + str(seq['count']) + ' creates':<44}{'p50':>8}{'p95':>8}{'max':>8}")
    rows = [("create → RUNNING", seq["wall_s"]), ("overhead (minus agent delay)", seq["overhead_s"]),
            ("  POST /api/v1/desktops answered", seq["post_s"]),
            ("  queue wait (enqueued → started)", seq["queue_wait_s"]), ("  job (started → ended)", seq["job_s"]),
            ("    ansible-playbook run", seq["playbook_s"]), ("      start-up before the first task", seq["startup_s"])]
    rows += [(f"      tasks: {ph}", seq["task_phases_s"][ph]) for ph in PHASES]
    rows += [("    worker, outside the playbook", seq["worker_outside_playbook_s"])]
    for name, s in rows:
        print(f"{name:<44}{f(s['p50']):>8}{f(s['p95']):>8}{f(s['max']):>8}")
    print(f"target: overhead p95 < 10 s  {'ok' if seq_ok else 'MISSED'}"
          + (f"  failures: {seq['failures'][:3]}" if seq["failures"] else ""))
    tasks = seq["per_task"]
    starts = [len(d.get("tasks") or []) for d in seq["desktops"] if d.get("tasks")]
    print(f"\nslowest tasks (mean over {seq['count']} runs; {max(starts, default=0)} task starts per create):")
    for t in sorted(tasks, key=lambda t: -t["mean_s"])[:12]:
        extra = f" ({t['mean_attempts']} polls)" if "mean_attempts" in t else ""
        print(f"  {t['mean_s']:6.2f} s  {t['role'] or 'playbook'}/{t['file']}: {t['task']}{extra}")
    print("\nby module or action (tasks per create, mean s per task, s per create):")
    for a in seq["per_action"][:8]:
        print(f"  {a['action']:<40}{a['per_create']:>6}{a['mean_s']:>8.2f}{a['total_per_create_s']:>8.2f}")
    print(f"\n{'concurrent creates':<22}{'running':>9}{'total s':>9}{'p50':>7}{'p95':>7}{'max':>7}{'queue p95':>11}"
          f"  checks")
    for c in conc:
        s = c["per_desktop_s"]
        checks = "ok" if c["passed"] else "MISSED: " + "; ".join(
            filter(None, [f"{len(c['failures'])} not RUNNING" if c["failures"] else "",
                          f"dup vmids {c['duplicate_vmids_db'] + c['duplicate_vmids_pve']}"
                          if c["duplicate_vmids_db"] or c["duplicate_vmids_pve"] else "",
                          f"lock messages {c['lock_messages'][:2]}" if c["lock_messages"] else "",
                          f"VMs missing {c['desktops_without_their_vm'][:5]}" if c["desktops_without_their_vm"] else ""]))
        print(f"{c['count']:<22}{c['running']:>5}/{c['count']:<3}{f(c['total_s']):>9}{f(s['p50']):>7}{f(s['p95']):>7}"
              f"{f(s['max']):>7}{f(c['queue_wait_s']['p95']):>11}  {checks}")
        if c["failures"]:
            print(f"    {c['failures'][:3]}")
    if report["worker_log_lock_errors"]:
        print(f"lock errors in the worker logs: {report['worker_log_lock_errors'][:3]}")
    print(f"\npeak memory (RSS, MB): API {memory['api_total_mb']} over {memory['api_processes']} processes "
          f"(largest {memory['api_process_mb']}); worker tree {memory['worker_tree_mb']} (worker "
          f"{memory['worker_process_mb']}, work horse {memory['work_horse_mb']}, ansible-playbook "
          f"{memory['ansible_playbook_mb']} x up to {memory['ansible_playbook_processes_per_tree']}); "
          f"all {args.workers} worker trees {memory['all_workers_mb']}")
    if pool is not None:
        if pool.get("error"):
            print(f"warm pool: MISSED: {pool['error']}")
        else:
            s = pool["create"]["wall_s"]
            print(f"warm pool of {pool['size']}: filled in {pool['fill_s']} s; create → RUNNING p50 {f(s['p50'])} "
                  f"p95 {f(s['p95'])} max {f(s['max'])}  target p95 ≤ {POOL_P95_S} s "
                  f"{'ok' if s['p95'] is not None and s['p95'] <= POOL_P95_S else 'MISSED'}")
            floor_s = pool.get("floor_s")
            ratio = pool.get("product_over_floor")
            print(f"  floor (benchmarks/floor.py, the same calls made directly): median "
                  f"{f(floor_s['p50']) if floor_s else 'n/a (API token only)'} s; product / floor {ratio} "
                  f" target ≤ {POOL_FLOOR_RATIO} {'ok' if ratio is not None and ratio <= POOL_FLOOR_RATIO else 'MISSED'}")
            burst = pool["at_once"]
            if burst.get("error"):
                print(f"  {burst['count']} at once from a full pool: MISSED: {burst['error']}")
            else:
                b = burst["wall_s"]
                print(f"  {burst['count']} at once from a full pool of {pool['size']}: {burst['running']} RUNNING "
                      f"({burst['from_pool']} from the pool), create → RUNNING p50 {f(b['p50'])} p95 {f(b['p95'])} "
                      f"max {f(b['max'])}; queue wait p95 {f(burst['queue_wait_s']['p95'])}  target p95 ≤ {POOL_P95_S} s "
                      f"{'ok' if burst['passed'] else 'MISSED'}")
    print(f"saved {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    return 0 if report["passed"] else 1


def _memory_gb() -> float | None:
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        return round(kb / 2**20, 1)
    except (OSError, AttributeError):
        return None


if __name__ == "__main__":
    sys.exit(main())
