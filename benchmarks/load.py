"""Load: the Desktop API under a sustained load, and live status events to many WebSocket clients.

    .venv/bin/python benchmarks/load.py [--database sqlite|postgresql] [--duration 60] [--rate 1000]
                                        [--paced] [--paced-duration 15]

1. HTTP. The API runs as production runs it (`controlplane api`: gunicorn, gthread workers), on
   loopback, with its own Redis (rate limits on, as configured by default) and a database holding
   `--users` users with a RUNNING desktop each. wrk (Debian's package) sends GET requests for
   `--duration` seconds, cycling through the users and through get, status, connect and list, each
   with its user's bearer token. Passes when every answer is 200 (no error, no 429, no socket
   error) and the throughput held is at least `--rate` requests/s.
   With `--paced`, wrk then holds `--rate` requests/s (no more) for `--paced-duration` seconds,
   once with the four endpoints mixed and once for each endpoint alone, and reports p50/p95/p99
   per endpoint; passes when each p95 is under `--p95-ms` (20) with every answer a 200 and the
   rate held (within 5 %). Pacing: each wrk thread hands out send slots 1/rate apart (LuaJIT's
   clock through ffi, wrk's `delay()` per request); a slot missed by more than a second is
   dropped, so a slow API shows as a rate not held. wrk times a request from when it is sent,
   not from its slot (no coordinated-omission correction, unlike wrk2, which Debian lacks).
2. Against a bare app (`--baseline-duration` seconds each, after the runs above): the API's read
   `GET /api/v1/desktops/{id}` alone, flat out, then the same read from benchmarks/baseline_app.py (Flask +
   peewee, the same table, no authentication, rate limits or schemas) under the same gunicorn settings.
   Passes when the API serves at least `--baseline-ratio` (0.8) of the baseline's requests/s (issue 20).
3. WebSocket. `--ws-clients` clients sign in on /ws; `--ws-events` status changes per client are
   published through the same code the worker uses (lifecycle.publish); passes when every client
   received every event, in order.

Prints a table, writes benchmarks/results/load-<database>.json, exits 1 when a target is missed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
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

LUA = r"""
-- One request per call, cycling users and endpoints; counts answers that are not 200.
local creds = {}
local paths = {"/api/v1/desktops/%s", "/api/v1/desktops/%s/status", "/api/v1/desktops/%s/connect",
               "/api/v1/desktops?userId=%s"}
local counter = 0
local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  for line in io.lines(args[1]) do
    local token, id, user = line:match("(%S+) (%S+) (%S+)")
    table.insert(creds, {token = token, id = id, user = user})
  end
  only = tonumber(args[2] or "0")  -- 1..4: that endpoint alone; 0: all four in turn
  counter = id * 7919
  not_ok = 0
  statuses = {}
end

function request()
  counter = counter + 1
  local c = creds[(counter % #creds) + 1]
  local kind = only > 0 and only or math.floor(counter / #creds) % 4 + 1
  local path = string.format(paths[kind], kind == 4 and c.user or c.id)
  return wrk.format("GET", path, {["Authorization"] = "Bearer " .. c.token})
end

function response(status, headers, body)
  if status ~= 200 then
    not_ok = not_ok + 1
    statuses[status] = (statuses[status] or 0) + 1
  end
end

function done(summary, latency, requests)
  local not_ok_total, by_status = 0, {}
  for _, t in ipairs(threads) do
    not_ok_total = not_ok_total + t:get("not_ok")
    for k, v in pairs(t:get("statuses")) do by_status[tostring(k)] = (by_status[tostring(k)] or 0) + v end
  end
  local parts = {}
  for k, v in pairs(by_status) do table.insert(parts, string.format('"%s": %d', k, v)) end
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "connect_errors": %d, "read_errors": %d, ' ..
    '"write_errors": %d, "timeouts": %d, "not_200": %d, "statuses": {%s}, ' ..
    '"p50_ms": %.3f, "p90_ms": %.3f, "p95_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f, "mean_ms": %.3f}\n',
    summary.requests, summary.duration, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.timeout, not_ok_total, table.concat(parts, ", "),
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000, latency.mean / 1000))
end
"""

# Appended to LUA for the paced runs: wrk calls delay() before each request and waits that long.
PACE_LUA = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef long cds_time_t;
struct cds_timespec { cds_time_t tv_sec; long tv_nsec; };
int clock_gettime(int clk_id, struct cds_timespec *tp);
]]
local ts = ffi.new("struct cds_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
local interval_ms = 1000 / %(thread_rate)f
local next_slot = nil

function delay()
  local now = now_ms()
  if next_slot == nil or next_slot < now - 1000 then next_slot = now end  -- drop slots missed by > 1 s
  next_slot = next_slot + interval_ms
  local wait = next_slot - now
  return wait > 0 and math.floor(wait) or 0
end
"""
ENDPOINTS = {0: "mixed", 1: "get", 2: "status", 3: "connect", 4: "list"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing wrk (Debian package) ...", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False, stdout=subprocess.DEVNULL)
        found = shutil.which("wrk")
        if found:
            return found
    sys.exit("benchmarks/load.py needs wrk: apt-get install wrk (Debian), brew install wrk (macOS)")


class Database:
    def __init__(self, kind: str, directory: Path):
        self.kind = kind
        self.name = None
        if kind == "sqlite":
            self.url = f"sqlite:///{directory / 'bench.db'}"
            return
        import psycopg2
        from psycopg2 import sql
        subprocess.run(["sh", str(REPO / "scripts" / "ensure-postgres.sh")], check=True,
                       env={**os.environ, "PYTHON": sys.executable})
        self.admin_url = os.environ.get("CONTROLPLANE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
        self.name = f"cp_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        admin = psycopg2.connect(self.admin_url)
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))
        admin.close()
        self.url = f"{self.admin_url.rsplit('/', 1)[0]}/{self.name}"

    def drop(self) -> None:
        if not self.name:
            return
        import psycopg2
        from psycopg2 import sql
        from controlplane.extensions import db
        if db.obj is not None and not db.is_closed():
            db.close()
        admin = psycopg2.connect(self.admin_url)
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name)))
        admin.close()


def seed(settings, users: int) -> list[tuple[str, int, str]]:
    """`users` users, each with a RUNNING desktop; returns (token, desktop id, user id)."""
    from controlplane.auth import mint_lab_token
    from controlplane.extensions import db
    from controlplane.models import Desktop, VmidLease, init_db, utcnow
    init_db(settings.effective_database_url)
    now = utcnow()
    rows = [dict(user_id=f"bench_{i:05d}", name=f"Bench desktop {i}", status="RUNNING",
                 status_message="Desktop is ready", plan="STANDARD", cpu_cores=4, memory_mb=8192,
                 vmid=settings.vmid_min + i, node="pve1", ip_address=f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}",
                 guacamole_connection_id=str(1000 + i), protocol="vnc", operation="create", job_id=f"bench-{i}",
                 created_at=now, updated_at=now) for i in range(users)]
    with db.connection_context():
        with db.atomic():
            for start in range(0, len(rows), 500):
                Desktop.insert_many(rows[start:start + 500]).execute()
        ids = {d.user_id: d.id for d in Desktop.select(Desktop.id, Desktop.user_id)}
        with db.atomic():
            leases = [dict(vmid=settings.vmid_min + i, desktop=ids[f"bench_{i:05d}"], created_at=now)
                      for i in range(users)]
            for start in range(0, len(leases), 500):
                VmidLease.insert_many(leases[start:start + 500]).execute()
    return [(mint_lab_token(settings, f"bench_{i:05d}"), ids[f"bench_{i:05d}"], f"bench_{i:05d}") for i in range(users)]


def start_api(env: dict, port: int, workers: int, threads: int, log: Path, app: str | None = None) -> subprocess.Popen:
    """`controlplane api` (gunicorn, gthread workers), or `app` (a gunicorn app spec) under the same settings."""
    command = ([sys.executable, "-m", "controlplane.cli", "api", "--workers", str(workers), "--threads", str(threads)]
               if app is None else
               [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
                "--threads", str(threads), "--access-logfile", "-", app])
    proc = subprocess.Popen(command, env={**env, "CONTROLPLANE_PORT": str(port)}, cwd=REPO,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180  # a worker imports and warms the model library before it serves
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the API exited: {log.read_text()[-2000:]}")
        try:
            requests.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=2)
            return proc
        except requests.RequestException:
            time.sleep(0.2)
    sys.exit("the API did not come up")


def run_wrk(wrk: str, url: str, creds_file: Path, lua_file: Path, duration: int, connections: int,
            threads: int, endpoint: int = 0) -> dict:
    out = subprocess.run([wrk, f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--timeout", "10s",
                          "-s", str(lua_file), url, "--", str(creds_file), str(endpoint)], capture_output=True,
                         text=True, timeout=duration + 120)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"wrk printed no result:\n{out.stdout}\n{out.stderr}")
    result = json.loads(line[len("RESULT "):])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["errors"] = (result["not_200"] + result["connect_errors"] + result["read_errors"]
                        + result["write_errors"] + result["timeouts"])
    return result


def websocket_fanout(settings, base: str, creds: list, clients: int, events: int) -> dict:
    """`clients` signed-in WebSocket clients; `events` status events published for each; counts
    what each received."""
    import simple_websocket

    from controlplane.models import Desktop
    from controlplane.services import lifecycle
    ws_url = base.replace("http://", "ws://") + "/ws"
    chosen = creds[:clients]
    received: dict[str, list[int]] = {user: [] for _, _, user in chosen}
    ready = threading.Barrier(clients + 1)
    done = threading.Event()
    failures: list[str] = []

    def client(token: str, user: str):
        try:
            ws = simple_websocket.Client.connect(ws_url)
            ws.send(json.dumps({"type": "auth", "token": token}))
            while True:  # wait for the server's welcome before counting events
                first = json.loads(ws.receive(timeout=10))
                if first.get("type") != "desktop_status":
                    break
            ready.wait(30)
            while len(received[user]) < events and not done.is_set():
                raw = ws.receive(timeout=1)
                if raw is None:
                    continue
                message = json.loads(raw)
                if message.get("type") == "desktop_status" and "seq" in message:
                    received[user].append(message["seq"])
            ws.close()
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(f"{user}: {exc!r}")
            try:
                ready.abort()
            except threading.BrokenBarrierError:
                pass

    workers = [threading.Thread(target=client, args=(token, user), daemon=True) for token, _, user in chosen]
    for t in workers:
        t.start()
    ready.wait(60)
    started = time.monotonic()
    from controlplane.extensions import db
    with db.connection_context():
        rows = {d.user_id: d for d in Desktop.select().where(Desktop.user_id.in_(list(received)))}
    for seq in range(events):
        for user in received:
            lifecycle.publish(settings.redis_url, rows[user], {"seq": seq})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(len(v) < events for v in received.values()):
        time.sleep(0.05)
    elapsed = time.monotonic() - started
    done.set()
    for t in workers:
        t.join(5)
    delivered = sum(len(v) for v in received.values())
    in_order = all(v == sorted(v) and len(set(v)) == len(v) for v in received.values())
    return {"clients": clients, "events_per_client": events, "published": clients * events,
            "delivered": delivered, "lost": clients * events - delivered, "in_order": in_order,
            "seconds": round(elapsed, 2), "failures": failures[:5]}


def main() -> int:
    # A TERM (a timeout, a kill) ends the run through its clean-up: no API, workers or Redis left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--duration", type=int, default=60)
    parser.add_argument("--rate", type=int, default=1000, help="requests/s the API must hold")
    parser.add_argument("--users", type=int, default=10000, help="users with a desktop each (rate limits are per user)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--api-workers", type=int, default=3)
    parser.add_argument("--api-threads", type=int, default=64, help="per worker; each WebSocket holds one")
    parser.add_argument("--ws-clients", type=int, default=100)
    parser.add_argument("--ws-events", type=int, default=50)
    parser.add_argument("--paced", action="store_true", help="also hold --rate requests/s, mixed and per endpoint")
    parser.add_argument("--paced-duration", type=int, default=15, help="seconds of each paced run")
    parser.add_argument("--paced-connections", type=int, default=32)
    parser.add_argument("--p95-ms", type=float, default=20.0, help="p95 target of the paced runs")
    parser.add_argument("--baseline-duration", type=int, default=20, help="seconds of each run against the bare app")
    parser.add_argument("--baseline-ratio", type=float, default=0.8, help="the API's share of the bare app's rate")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from controlplane.config import Settings
    from controlplane.lab.redis_server import PrivateRedis
    wrk = find_wrk()
    work = Path(tempfile.mkdtemp(prefix="cds-bench-"))
    database = Database(args.database, work)
    redis_server = PrivateRedis(work / "redis", persist=False).start()
    api = None
    try:
        settings = Settings(var_dir=work, database_url=database.url, redis_url=redis_server.url,
                            jwt_secret=secrets.token_urlsafe(48), policy_interval=0)
        print(f"seeding {args.users} users with a RUNNING desktop each ({args.database}) ...", flush=True)
        creds = seed(settings, args.users)
        creds_file = work / "creds.txt"
        creds_file.write_text("".join(f"{t} {i} {u}\n" for t, i, u in creds))
        lua_file = work / "load.lua"
        lua_file.write_text(LUA)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROLPLANE_")}
        env.update(settings.to_env())
        port = free_port()
        api = start_api(env, port, args.api_workers, args.api_threads, work / "api.log")
        base = f"http://127.0.0.1:{port}"
        print("warming up (5 s) ...", flush=True)
        run_wrk(wrk, base, creds_file, lua_file, 5, args.connections, 2)
        print(f"load: {args.duration} s, {args.connections} connections ...", flush=True)
        http = run_wrk(wrk, base, creds_file, lua_file, args.duration, args.connections, 2)
        paced = {}
        if args.paced:
            paced_lua = work / "paced.lua"
            paced_lua.write_text(LUA + PACE_LUA % {"thread_rate": args.rate / 2})
            for endpoint, name in ENDPOINTS.items():
                print(f"paced: {name} at {args.rate} requests/s for {args.paced_duration} s ...", flush=True)
                paced[name] = run_wrk(wrk, base, creds_file, paced_lua, args.paced_duration, args.paced_connections,
                                      2, endpoint)
        print(f"websocket: {args.ws_clients} clients x {args.ws_events} events ...", flush=True)
        ws = websocket_fanout(settings, base, creds, args.ws_clients, args.ws_events)
        baseline = None
        if args.baseline_duration > 0:
            print(f"the read alone, flat out, {args.baseline_duration} s: the API, then the bare app ...", flush=True)
            product = run_wrk(wrk, base, creds_file, lua_file, args.baseline_duration, args.connections, 2, 1)
            bare_port = free_port()
            bare = start_api(env, bare_port, args.api_workers, args.api_threads, work / "bare.log",
                             app="benchmarks.baseline_app:create_app()")
            try:
                bare_base = f"http://127.0.0.1:{bare_port}"
                run_wrk(wrk, bare_base, creds_file, lua_file, 5, args.connections, 2, 1)  # warm-up
                plain = run_wrk(wrk, bare_base, creds_file, lua_file, args.baseline_duration, args.connections, 2, 1)
            finally:
                os.killpg(bare.pid, 15)
                bare.wait(20)
            baseline = {"api": product, "bare": plain, "ratio": product["rps"] / plain["rps"] if plain["rps"] else 0,
                        "target": args.baseline_ratio}
    finally:
        if api is not None and api.poll() is None:
            os.killpg(api.pid, 15)
            api.wait(20)
        redis_server.stop()
        database.drop()
        shutil.rmtree(work, ignore_errors=True)

    http_ok = http["errors"] == 0 and http["rps"] >= args.rate
    for result in paced.values():
        result["passed"] = (result["errors"] == 0 and result["p95_ms"] < args.p95_ms
                            and result["rps"] >= 0.95 * args.rate)
    paced_ok = all(r["passed"] for r in paced.values())
    ws_ok = ws["lost"] == 0 and ws["in_order"] and not ws["failures"]
    baseline_ok = baseline is None or (baseline["ratio"] >= baseline["target"] and baseline["api"]["errors"] == 0
                                       and baseline["bare"]["errors"] == 0)
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
               "processor": _cpu_model(), "loadavg_at_end": _loadavg()}
    report = {"database": args.database, "duration_s": args.duration, "users": args.users,
              "connections": args.connections, "api_workers": args.api_workers, "api_threads": args.api_threads,
              "target_rps": args.rate, "http": http, "websocket": ws, "machine": machine,
              "paced": {"rate": args.rate, "duration_s": args.paced_duration, "connections": args.paced_connections,
                        "p95_target_ms": args.p95_ms, "runs": paced} if paced else None,
              "baseline": baseline, "passed": http_ok and ws_ok and paced_ok and baseline_ok, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    out = args.out or REPO / "benchmarks" / "results" / f"load-{args.database}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")

    print()
    print(f"Load on {args.database}, {machine['cpus']} CPUs ({machine['processor']})")
    print(f"{'measure':<34}{'value':>14}   target")
    rows = [
        ("HTTP requests", f"{http['requests']}", ""),
        ("HTTP requests/s", f"{http['rps']:.0f}", f">= {args.rate}  {'ok' if http['rps'] >= args.rate else 'MISSED'}"),
        ("HTTP errors (non-200, socket)", f"{http['errors']}", f"0  {'ok' if http['errors'] == 0 else 'MISSED'}"),
        ("latency p50 / p95 / p99 (ms)", f"{http['p50_ms']:.1f} / {http['p95_ms']:.1f} / {http['p99_ms']:.1f}", ""),
        ("latency max (ms)", f"{http['max_ms']:.1f}", ""),
        ("WebSocket events delivered", f"{ws['delivered']}/{ws['published']}",
         f"all, in order  {'ok' if ws_ok else 'MISSED'}"),
        ("WebSocket fan-out time (s)", f"{ws['seconds']}", ""),
    ]
    for name, value, target in rows:
        print(f"{name:<34}{value:>14}   {target}")
    if paced:
        print(f"\npaced at {args.rate} requests/s, {args.paced_connections} connections, {args.paced_duration} s each")
        print(f"{'endpoint':<10}{'req/s':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}{'errors':>8}   target")
        for name, r in paced.items():
            print(f"{name:<10}{r['rps']:>8.0f}{r['p50_ms']:>9.1f}{r['p95_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['max_ms']:>9.1f}"
                  f"{r['errors']:>8}   p95 < {args.p95_ms:g} ms  {'ok' if r['passed'] else 'MISSED'}")
            if r["statuses"]:
                print(f"          non-200 answers by status: {r['statuses']}")
    if baseline is not None:
        print(f"\nthe read alone, flat out ({args.baseline_duration} s each): the API {baseline['api']['rps']:.0f} "
              f"requests/s, the bare Flask + peewee app {baseline['bare']['rps']:.0f}: ratio {baseline['ratio']:.2f} "
              f"(target >= {baseline['target']:g})  {'ok' if baseline_ok else 'MISSED'}")
    if http["statuses"]:
        print(f"non-200 answers by status: {http['statuses']}")
    if ws["failures"]:
        print(f"websocket failures: {ws['failures']}")
    print(f"saved {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    return 0 if report["passed"] else 1


def _loadavg() -> list[float] | None:
    """1, 5 and 15 minute load averages: how busy the machine was besides this benchmark."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        found = re.search(r"model name\s*:\s*(.+)", text)
        return found.group(1).strip() if found else platform.processor()
    except OSError:
        return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
