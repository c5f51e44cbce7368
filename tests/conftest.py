"""Shared fixtures: a real database (SQLite, or PostgreSQL with CONTROLPLANE_TEST_DATABASE=postgresql),
a real Redis (a private redis-server, or CONTROLPLANE_TEST_REDIS_URL), and for the end-to-end tests
the lab's services, real `controlplane worker` processes and the API over HTTP.

`make test` runs the suite twice: once on SQLite, once on PostgreSQL (a throw-away database on
CONTROLPLANE_TEST_PG_URL, default postgresql://postgres@127.0.0.1:5432/postgres).
"""
from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

from tests.inventory import QUICK, lab_inventory

REPO = Path(__file__).resolve().parent.parent
JWT_SECRET = "test-" + secrets.token_hex(24)


# A test whose fixtures include none of these has no database to talk to: what it proves cannot
# depend on which database the control plane uses (marked `dbfree`).
DATABASE_FIXTURES = frozenset({"database_url", "lab_database_url"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/tests/e2e/" in str(item.path):
            item.add_marker(pytest.mark.e2e)
        if "lab_session" in getattr(item, "fixturenames", ()):  # the whole lab: `make check` leaves these out
            item.add_marker(pytest.mark.lab)
        if not DATABASE_FIXTURES & set(getattr(item, "fixturenames", ())):  # the PostgreSQL pass leaves these out
            item.add_marker(pytest.mark.dbfree)


class _LongestFirst:
    """Runs after pytest-randomly's shuffle: the tests that drive the lab (and the fuzz tests, a minute
    each) go first, each group still in the random order. xdist, run with --maxschedchunk 1 (Makefile),
    hands them out one at a time, so every worker starts on long tests and the pass ends on short ones,
    not on one worker's queue of end-to-end tests while the others are idle."""

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config, items):
        def short(item) -> bool:
            return not (item.get_closest_marker("lab") or item.get_closest_marker("e2e")
                        or "/tests/fuzz/" in str(item.path))
        items.sort(key=short)  # stable: the random order holds within each group


def pytest_configure(config):
    config.pluginmanager.register(_LongestFirst(), "controlplane-longest-first")


def pytest_report_header(config):
    return f"controlplane database: {database_kind()}"


def database_kind() -> str:
    kind = os.environ.get("CONTROLPLANE_TEST_DATABASE", "sqlite").lower()
    if kind not in ("sqlite", "postgresql"):
        raise pytest.UsageError(f"CONTROLPLANE_TEST_DATABASE must be sqlite or postgresql, not {kind!r}")
    return kind


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_lab_services(make_config, attempts: int = 3):
    """(config, LabServices started) on the ports make_config() picks (free_port): a port found free can be
    taken by another process before the lab binds it (make test runs its passes side by side), and then
    the lab starts again on new ones. A failed start stops what it had started (LabServices.start)."""
    import errno

    from controlplane.lab.services import LabServices
    for attempt in range(1, attempts + 1):
        config = make_config()
        try:
            return config, LabServices(config).start()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or attempt == attempts:
                raise
    raise AssertionError("unreachable")


# ---- database ----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def database_url(tmp_path_factory):
    """A fresh, empty database for this test session's tests that run without the lab."""
    with new_database(tmp_path_factory) as url:
        yield url


@pytest.fixture(scope="session")
def lab_database_url(tmp_path_factory):
    """The lab's own database: its workers' reapers, policies and pool refills run all session long and
    see only the lab's desktops, never the rows another test plants for its own reap() or clears."""
    with new_database(tmp_path_factory) as url:
        yield url


@contextlib.contextmanager
def new_database(tmp_path_factory):
    """A fresh, empty database: a SQLite file, or a throw-away PostgreSQL database (dropped at the end)."""
    if database_kind() == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'controlplane.db'}"
        return
    import psycopg2
    from psycopg2 import sql
    admin_url = os.environ.get("CONTROLPLANE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        admin = psycopg2.connect(admin_url, connect_timeout=5)
    except psycopg2.OperationalError as exc:
        pytest.exit(f"PostgreSQL is not reachable at {admin_url}: {exc}\n"
                    "Start it (see README, 'Running the tests') or run with CONTROLPLANE_TEST_DATABASE=sqlite.",
                    returncode=3)
    admin.autocommit = True
    name = f"cp_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with admin.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    base = admin_url.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        from controlplane.extensions import db
        if db.obj is not None and not db.is_closed():
            db.close()
        with admin.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.close()


@pytest.fixture(scope="session")
def database(database_url):
    from controlplane.models import init_db
    return init_db(database_url)


def clear_tables():
    from controlplane.models import ALL_MODELS
    for model in reversed(ALL_MODELS):  # children first
        model.delete().execute()


# ---- Redis ---------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def private_redis(tmp_path_factory):
    """The tests' own redis-server (no persistence: a restart loses everything), or None when
    CONTROLPLANE_TEST_REDIS_URL names another."""
    if os.environ.get("CONTROLPLANE_TEST_REDIS_URL"):
        yield None
        return
    from controlplane.lab.redis_server import PrivateRedis
    server = PrivateRedis(tmp_path_factory.mktemp("redis"), persist=False).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(private_redis):
    return private_redis.url if private_redis else os.environ["CONTROLPLANE_TEST_REDIS_URL"]


@pytest.fixture
def redis_conn(base_settings):
    """The API-only tests' Redis database."""
    from controlplane.services.queue import get_redis
    return get_redis(base_settings.redis_url)


# ---- settings and the app (no workers) ------------------------------------------------------------

def redis_db(url: str, number: int) -> str:
    """The same Redis server, another database number."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = dict(parse_qsl(parts.query))
        query["db"] = str(number)
        return f"unix://{parts.path}?{urlencode(query)}"
    return urlunsplit(parts._replace(path=f"/{number}"))


@pytest.fixture(scope="session")
def base_settings(tmp_path_factory, database_url, redis_url):
    """Settings for the API-only tests: no workers; their Redis database (1) is flushed per test."""
    from controlplane.config import Settings
    var = tmp_path_factory.mktemp("var")
    return Settings(var_dir=var, database_url=database_url, redis_url=redis_db(redis_url, 1), jwt_secret=JWT_SECRET,
                    proxmox_password="pve-test-password", guacamole_password="guac-test-password",
                    guacamole_url="http://127.0.0.1:9/guacamole", proxmox_host="127.0.0.1", proxmox_port=9,
                    proxmox_verify_ssl=False, proxmox_api_timeout=0.5, lab=True)


@pytest.fixture(scope="session")
def app(base_settings, database):
    from controlplane import create_app
    application = create_app(base_settings)
    application.config["TESTING"] = True
    return application


@pytest.fixture
def client(app, redis_conn):
    """A Flask test client on an empty database and an empty queue."""
    from controlplane.extensions import db
    with db.connection_context():
        clear_tables()
    redis_conn.flushdb()
    return app.test_client()


@pytest.fixture
def token(base_settings):
    from controlplane.auth import mint_lab_token

    def make(user_id: str = "user_12345", admin: bool = False, **kw) -> str:
        return mint_lab_token(base_settings, user_id, admin=admin, **kw)
    return make


@pytest.fixture
def auth(token):
    def headers(user_id: str = "user_12345", admin: bool = False) -> dict:
        return {"Authorization": f"Bearer {token(user_id, admin)}"}
    return headers


# ---- the lab end to end -----------------------------------------------------------------------------

class ServerThread:
    """The Flask app over real HTTP (werkzeug, threaded), for clients that use `requests`."""

    def __init__(self, app, host="127.0.0.1", port=0):
        from werkzeug.serving import make_server
        self.server = make_server(host, port, app, threaded=True)
        self.url = f"http://{host}:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()


class ApiProcess:
    """The API as production runs it (gunicorn with `controlplane api`'s hooks), in a process of its own:
    its database binding is its own, not this process's peewee proxy, which the tests rebind. It serves
    a socket bound here, so a request made before gunicorn accepts waits in the socket's backlog:
    nothing waits for the API to be ready."""

    def __init__(self, settings, log_dir: Path):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        self.url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROLPLANE_")}
        env.update(settings.to_env(), PYTHONUNBUFFERED="1")
        with open(log_dir / "api.log", "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "--bind", f"fd://{listener.fileno()}", "--workers", "1",
                 "--threads", "8", "--graceful-timeout", "5", "--config", "python:controlplane.gunicorn_conf",
                 "controlplane:create_app()"],
                env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, pass_fds=[listener.fileno()])
        listener.close()
        # Its first answer, whenever a worker has started (and warmed the model library): the one wait.
        try:
            requests.get(f"{self.url}/api/v1/health", timeout=180).raise_for_status()
        except requests.RequestException as exc:
            self.stop()
            raise RuntimeError(f"the lab's API did not answer: {exc}: "
                               f"{(log_dir / 'api.log').read_text(errors='replace')[-3000:]}") from None

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Workers:
    """Real `controlplane worker` processes (RQ workers running the playbooks)."""

    def __init__(self, settings, log_dir: Path):
        self.settings = settings
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}

    def env(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROLPLANE_")}
        env.update(self.settings.to_env())
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def spawn(self, name: str | None = None) -> subprocess.Popen:
        name = name or f"test-worker-{len(self.procs) + 1}-{uuid.uuid4().hex[:4]}"
        log = open(self.log_dir / f"{name}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "controlplane.cli", "worker", "--name", name],
                                env=self.env(), cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def proc_of(self, rq_name: str) -> subprocess.Popen:
        """The process behind an RQ worker name: the name it was spawned with, or that name with the
        '-<n>' the worker adds when it works again after losing Redis (cli.cmd_worker)."""
        for name, proc in self.procs.items():
            if rq_name == name or (rq_name.startswith(name + "-") and rq_name[len(name) + 1:].isdigit()):
                return proc
        raise KeyError(f"no worker process of this lab is called {rq_name!r}: {sorted(self.procs)}")

    def wait_registered(self, redis_conn, count: int, timeout: float = 30):
        from rq import Worker
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            alive = [w for w in Worker.all(connection=redis_conn) if w.name in self.procs]
            if len(alive) >= count:
                return
            for name, proc in self.procs.items():
                if proc.poll() is not None and proc.returncode not in (0, -9, -15):
                    raise RuntimeError(f"worker {name} exited with {proc.returncode}: "
                                       f"{(self.log_dir / f'{name}.log').read_text()[-3000:]}")
            time.sleep(0.1)
        raise RuntimeError("the workers did not register in time")

    def stop(self):
        from controlplane.processes import stop_all
        stop_all(self.procs.values(), timeout=20)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in self.log_dir.glob("*.log"))


class Lab:
    """Everything the end-to-end tests drive: the lab services, workers, the API over HTTP."""

    def __init__(self, services, settings, workers, server, database):
        self.services = services
        self.database = database
        self.settings = settings
        self.workers = workers
        self.server = server
        self.url = server.url

    @property
    def pve(self):
        return self.services.pve

    @property
    def guacamole(self):
        return self.services.guacamole

    def token(self, user_id: str, admin: bool = False) -> str:
        from controlplane.auth import mint_lab_token
        return mint_lab_token(self.settings, user_id, admin=admin)

    def vms(self) -> dict[int, str]:
        """vmid → name of every VM in fakepve that is not a template."""
        return self.services.call(lambda: {vm.vmid: vm.name for vm in self.pve.vms if not vm.template})

    def vm(self, vmid: int):
        return self.services.call(lambda: self.pve.vm(vmid))

    def connections(self) -> dict[str, dict]:
        return self.services.call(lambda: {k: dict(v) for k, v in self.guacamole.connections.items()})


@pytest.fixture
def lab(lab_session):
    """The lab, with this process's database bound to the lab's own for the test (and given back after:
    the tests without the lab have theirs, see lab_database_url)."""
    from controlplane.extensions import db
    previous = db.obj
    db.initialize(lab_session.database)
    try:
        yield lab_session
    finally:
        db.initialize(previous)


@pytest.fixture(scope="session")
def model_library():
    """The model library imported and warmed once per test process, as each API worker does before it
    serves (controlplane/gunicorn_conf.py): not inside the first chat request of an in-process test."""
    from controlplane import gunicorn_conf
    gunicorn_conf.post_worker_init(None)


@pytest.fixture(scope="session")
def lab_session(tmp_path_factory, lab_database_url, redis_url, model_library):
    """The lab's services (fakepve, guest agents, Guacamole stand-in), two real workers, the API: one
    per test session (per xdist worker), on its own database; tests take it through `lab`."""
    from controlplane.config import Settings
    from controlplane.lab.services import LabConfig
    from controlplane.services.queue import get_redis

    state = tmp_path_factory.mktemp("lab")
    config, services = start_lab_services(lambda: LabConfig(
        state_dir=state, proxmox_host="127.0.0.1", proxmox_port=free_port(), time_scale=0.01, agent_delay=0.5,
        guacamole_port=free_port(), llm_port=free_port(), guacamole_password="guac-e2e-" + secrets.token_hex(6),
        guacamole_json_secret=secrets.token_hex(16)))
    settings = Settings(var_dir=state, database_url=lab_database_url, redis_url=redis_url, jwt_secret=JWT_SECRET,
                        proxmox_host=config.proxmox_host, proxmox_port=config.proxmox_port,
                        proxmox_user=config.proxmox_user, proxmox_password=config.proxmox_password,
                        proxmox_verify_ssl=False,
                        # a guest that ignores the shutdown request gives up sooner
                        inventory=str(lab_inventory(state, **QUICK, proxmox_desktop_stop_timeout=5)),
                        guacamole_url=services.guacamole.url, guacamole_username=config.guacamole_username,
                        guacamole_password=config.guacamole_password, reaper_interval=2, abandoned_after=5,
                        guacamole_json_secret=config.guacamole_json_secret,  # /connect: auth-json links
                        guacamole_vnc_password=config.vnc_password,  # the lab screens' VNC servers want it
                        policy_interval=0,  # policies run when a test says so (their own tests)
                        # The contract's waits are 1, 2, 4, 8 s after an infrastructure error and 30 s
                        # between create attempts; the lab waits a tenth of a second or so (the retry tests
                        # derive their messages from these; tests/unit/test_failures.py proves the real backoff).
                        retry_backoff="0.1,0.2,0.4,0.8", provisioning_retry_delay=0.1,
                        pool_retry_after=3,  # a failed pool fill is retried soon (tests/e2e/test_pool.py)
                        # The suite keeps both cores busy: niced fills would wait for it (the niceness is
                        # tests/unit/test_warm.py's; the timings it buys are make bench's).
                        pool_niceness=0,
                        rate_limit_api="100000/minute",  # the tests poll fast; limits have their own tests
                        # the lab's echo model answers the chat, as under `make lab` (tests/browser)
                        llm_openai_base_url=services.llm.url, llm_openai_api_key=config.llm_api_key,
                        lab=True)
    log_dir = tmp_path_factory.mktemp("workers")
    workers = Workers(settings, log_dir)
    server = None
    try:
        for _ in range(2):
            workers.spawn()
        workers.wait_registered(get_redis(redis_url), 2)
        from controlplane.extensions import db
        from controlplane.models import init_db
        previous = db.obj
        lab_database = init_db(settings.effective_database_url)  # binds this process's proxy to the lab's
        db.initialize(previous)  # database, which `lab` binds only for the tests that use the lab
        server = ApiProcess(settings, log_dir)
        yield Lab(services, settings, workers, server, lab_database)
    finally:
        if server:
            server.stop()
        workers.stop()
        services.stop()


@pytest.fixture
def fresh_user():
    """A user id no other test uses (one active desktop per user)."""
    return f"user_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def warm_ansible(monkeypatch):
    """A warm Ansible process (controlplane/runner/warm.py) for this test's run_playbook calls, as a worker
    has one; yields its process. Its socket lives in a short folder of its own (a socket path has at most
    107 bytes)."""
    import shutil
    import subprocess
    import tempfile

    from controlplane.runner import ansible, warm
    folder = tempfile.mkdtemp(prefix="cp-warm-", dir="/tmp")
    path = os.path.join(folder, "ansible.sock")
    process = warm.start(path)
    assert warm.wait_ready(process), "the warm Ansible process did not listen"
    monkeypatch.setattr(ansible, "_warm_socket", path)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(folder, ignore_errors=True)
