"""`controlplane` command: token, worker, reap, api, lab."""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys

from .config import ConfigError, Settings

log = logging.getLogger("controlplane")


def load_lab_env(environ: dict) -> dict:
    """The lab's settings (var/lab/lab.env), under what the environment already sets."""
    from .lab.layout import lab_env_file
    path = lab_env_file()
    merged = dict(environ)
    if path.exists():
        for line in path.read_text().splitlines():
            if "=" in line and not line.startswith("#"):
                key, value = line.split("=", 1)
                merged.setdefault(key.strip(), value.strip())
    return merged


MAX_TOKEN_HOURS = 8760.0  # a year: the cron playbooks' admin token (README) is the longest-lived one


def _ttl_hours(text: str) -> float:
    """--ttl-hours: tokens without an expiry are refused, so none is minted; nor one for more than a year."""
    try:
        hours = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of hours: {text!r}") from None
    if not 0 < hours <= MAX_TOKEN_HOURS:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most {MAX_TOKEN_HOURS:g} hours, not {text}")
    return hours


def cmd_token(args) -> int:
    from .auth import mint_lab_token
    settings = Settings.from_env(load_lab_env(os.environ))
    if not settings.jwt_secret:
        print("No lab secret found: start the lab once (make lab) or set CONTROLPLANE_JWT_SECRET.", file=sys.stderr)
        return 2
    print(mint_lab_token(settings, args.user, admin=args.admin, email=args.email, name=args.name,
                         ttl=dt.timedelta(hours=args.ttl_hours)))
    return 0


def _reaper_loop(settings: Settings, parent: int | None = None) -> None:
    """Reap every settings.reaper_interval seconds, and enqueue the periodic maintenance job when
    it is due; meanwhile schedule (RQ's scheduler: the retries waiting as scheduled jobs). Return
    when `parent` (the worker that started this process) is gone, so that a killed worker leaves no
    reaper, and no scheduler, behind."""
    import time

    from .services.queue import get_redis
    from .tasks.scheduling import Scheduling
    conn = get_redis(settings.redis_url)
    scheduling = Scheduling(settings.redis_url)
    scheduling.start()
    next_pass = time.monotonic() + settings.reaper_interval
    try:
        while True:
            time.sleep(min(1.0, max(next_pass - time.monotonic(), 0.05)))
            if parent is not None and os.getppid() != parent:
                return
            if time.monotonic() < next_pass:
                continue
            next_pass = time.monotonic() + settings.reaper_interval
            try:
                _reaper_pass(settings, conn)
            except Exception:
                log.exception("reaper pass failed")
    finally:
        scheduling.stop()  # it releases its lock: another worker's scheduler takes over at once


def remove_leftover_runs(settings: Settings) -> list[str]:
    """Delete the private folders of playbook runs killed with their worker, on this host (they may
    hold a run's extra vars and output); a live run's folder is kept (runner/ansible.py). Called at
    worker start and on every pass of the reaper process. A folder of an older version (unlocked)
    goes once unchanged for longer than any job may run."""
    from .runner.ansible import remove_leftover_runs as remove_runs
    removed = remove_runs(unlocked_after=settings.job_timeout + 300)
    if removed:
        log.warning("removed the folders of %d playbook run(s) killed with their worker", len(removed))
    return removed


def _reaper_pass(settings: Settings, conn) -> None:
    """One pass of the reaper process beside a worker."""
    from .services.pool import refill
    from .services.reaper import reap
    from .tasks.maintenance import enqueue_if_due
    # The folders of playbook runs killed with their worker: every reaper, each host has its own.
    remove_leftover_runs(settings)
    # One reaper at a time across all workers.
    if conn.set("controlplane:reaper:lock", os.getpid(), nx=True, ex=max(settings.reaper_interval - 1, 1)):
        outcome = reap(settings)
        if outcome:
            log.warning("reaper: %s", outcome)
        # The warm pool: make up deficits, remove surplus and broken pool VMs.
        filled = refill(settings)
        if filled.get("filling") or filled.get("removing"):
            log.info("pool: %s", filled)
    # The lifecycle policies, as a job, every settings.policy_interval (one enqueue for all).
    enqueue_if_due(settings, conn)


def _wait_for_redis(conn) -> bool:
    """Ping Redis every second until it answers; False when asked to stop meanwhile."""
    import time

    import redis
    while True:
        try:
            conn.ping()
            return True
        except redis.RedisError:
            pass
        try:
            time.sleep(1)
        except KeyboardInterrupt:
            return False
        except Exception as exc:  # RQ's handler of a stop signal raises StopRequested
            log.warning("stopped while waiting for Redis: %s", type(exc).__name__)
            return False


def cmd_worker(args) -> int:
    import signal
    import subprocess

    from . import metrics  # before anything imports prometheus_client: the horses count into the folder
    metrics.use_folder(Settings.from_env().effective_metrics_dir)
    metrics.count_as_this_process()

    import redis

    from .logs import configure_logging
    from .services.queue import WORKER_QUEUES, get_redis
    from .tasks import engine as tasks
    from .tasks.worker import ControlPlaneWorker
    # A stop signal must reach RQ's handlers even when whatever started this process blocked it (the
    # mask is inherited: a test runner's or supervisor's blocked SIGINT made Ctrl-C do nothing here).
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    settings = Settings.from_env()
    settings.require_redis()
    configure_logging(settings)
    tasks.configure(settings)
    remove_leftover_runs(settings)  # what playbook runs killed with a worker left on this host
    # The reaper runs in a process of its own, never as a thread of this one: RQ forks a work horse
    # per job, and a fork taken while another thread holds a lock (the database's, say) leaves the
    # child waiting on it forever.
    reaper = None
    if not args.burst:
        reaper = subprocess.Popen([sys.executable, "-m", "controlplane.cli", "reap", "--loop",
                                   "--parent", str(os.getpid())])
    # Playbook runs are forked from a process that has imported Ansible already (runner/warm.py).
    warm = _start_warm_ansible() if settings.warm_ansible else None
    conn = get_redis(settings.redis_url)
    name, restarts = args.name, 0
    try:
        while True:
            # Users' desktop and project jobs first; upkeep, then warm pool fills, only when none waits.
            worker = ControlPlaneWorker(list(WORKER_QUEUES), connection=conn, name=name,
                            job_monitoring_interval=settings.worker_heartbeat)
            try:
                # A retry's next run waits as a scheduled job (tasks/engine.py): the reaper process
                # beside each worker runs RQ's scheduler (_reaper_loop), not a process RQ would fork.
                worker.work(burst=args.burst, with_scheduler=False, logging_level="INFO")
            except redis.RedisError as exc:  # Redis went away while RQ tore the worker down
                log.error("worker %s: Redis failed: %s", worker.name, exc)
            # A stop signal (SIGINT, SIGTERM: RQ's warm shutdown) sets _shutdown_requested_date,
            # busy or idle; only a worker that quit on its own is started again.
            if args.burst or worker._stop_requested or getattr(worker, "_shutdown_requested_date", None):
                break
            # RQ quits on an error it does not handle (Redis gone in the middle of a job, say); a
            # job running then goes on in its work horse and writes its result to the database.
            # Wait for Redis, then work again under a new name (the old one may still be registered).
            restarts += 1
            name = f"{args.name}-{restarts}" if args.name else None
            log.warning("worker stopped on an error; working again (restart %d) once Redis answers", restarts)
            if not _wait_for_redis(conn):
                break
    finally:
        from .processes import stop_all
        stop_all([reaper, warm and warm[0]], timeout=10)  # together: 10 s for both, not each
        if warm is not None:
            import shutil
            shutil.rmtree(warm[1], ignore_errors=True)
    return 0


def _start_warm_ansible():
    """(process, folder) of this worker's warm Ansible process, its socket in a folder only this user
    enters; the runs of the work horses use it (runner.ansible.use_warm). None when it cannot start."""
    import shutil
    import tempfile

    from .runner import ansible, warm
    folder = tempfile.mkdtemp(prefix="controlplane-warm-")  # mode 0700; a socket path is at most 107 bytes
    path = os.path.join(folder, "ansible.sock")
    process = warm.start(path)
    if not warm.wait_ready(process):  # it listens within a second: its imports are Ansible's, made later
        log.warning("the warm Ansible process did not start: playbooks start ansible-playbook afresh")
        process.kill()
        shutil.rmtree(folder, ignore_errors=True)
        return None
    ansible.use_warm(path)
    return process, folder


def cmd_reap(args) -> int:
    from .models import init_db
    from .services.reaper import reap
    settings = Settings.from_env()
    settings.require_redis()
    if args.loop:
        import signal

        from .logs import configure_logging
        configure_logging(settings)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        init_db(settings.effective_database_url)
        try:
            _reaper_loop(settings, parent=args.parent)
        except KeyboardInterrupt:
            pass
        return 0
    init_db(settings.effective_database_url)
    remove_leftover_runs(settings)
    print(reap(settings))
    return 0


def cmd_api(args) -> int:
    settings = Settings.from_env()
    from . import metrics  # its processes count into the metrics folder (gunicorn's workers inherit it)
    metrics.use_folder(settings.effective_metrics_dir)
    argv = [sys.executable, "-m", "gunicorn", "--bind", f"{settings.host}:{settings.port}",
            "--workers", str(args.workers), "--threads", str(args.threads), "--access-logfile", "-",
            "--config", "python:controlplane.gunicorn_conf", "controlplane:create_app()"]
    os.execv(sys.executable, argv)
    return 0


def cmd_lab(args) -> int:
    from .lab.main import run_lab
    return run_lab(workers=args.workers)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="controlplane", description="Cloud Desktop Service control plane")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("token", help="print a bearer token the lab accepts")
    p.add_argument("user")
    p.add_argument("--admin", action="store_true", help="give the token the admin role")
    p.add_argument("--email")
    p.add_argument("--name")
    p.add_argument("--ttl-hours", type=_ttl_hours, default=12.0,
                   help=f"lifetime of the token (every token expires): more than 0, at most {MAX_TOKEN_HOURS:g}")
    p.set_defaults(func=cmd_token)

    p = sub.add_parser("worker", help="run an RQ worker for desktop jobs (and the reaper)")
    p.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    p.add_argument("--name")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("reap", help="resume or fail desktops and projects whose job died (one pass, or --loop)")
    p.add_argument("--loop", action="store_true", help="keep reaping every CONTROLPLANE_REAPER_INTERVAL seconds")
    p.add_argument("--parent", type=int, help="with --loop: stop when this process (the worker) is gone")
    p.set_defaults(func=cmd_reap)

    p = sub.add_parser("api", help="serve the API with gunicorn")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=8)
    p.set_defaults(func=cmd_api)

    p = sub.add_parser("lab", help="run the whole system on this machine (fakepve, Guacamole stand-in, Redis)")
    p.add_argument("--workers", type=int, default=int(os.environ.get("CONTROLPLANE_LAB_WORKERS", "2")))
    p.set_defaults(func=cmd_lab)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
