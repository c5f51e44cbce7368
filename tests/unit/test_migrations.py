"""Schema migrations: a fresh database gets every table; a database made by an older version is
brought up to date without losing rows; running them twice changes nothing."""
from __future__ import annotations

import peewee as pw
from playhouse.db_url import connect

from controlplane.migrations import SchemaMigration, migrate
from controlplane import models
from controlplane.models import ALL_MODELS


def tables(database) -> set[str]:
    return set(database.get_tables())


def applied(database, *numbers: int) -> None:
    """Record migrations `numbers` as applied, as the version that made this database did."""
    with database.bind_ctx([SchemaMigration]):
        database.create_tables([SchemaMigration])
        for number in numbers:
            SchemaMigration.create(number=number, name=f"m{number:04d}")


def test_fresh_database_gets_every_table(tmp_path):
    database = connect(f"sqlite:///{tmp_path / 'fresh.db'}")
    applied = migrate(database, models)
    assert applied == ["m0001_initial", "m0002_projects", "m0003_share_generation",
                       "m0004_desktop_expiry", "m0005_policy_runs", "m0006_audit", "m0007_job_heartbeat",
                       "m0008_warm_pool", "m0009_pool_vm_heartbeat", "m0010_project_connection"]
    assert {m._meta.table_name for m in ALL_MODELS} <= tables(database)
    assert "project_id" in {c.name for c in database.get_columns("vmid_lease")}
    assert migrate(database, models) == []


def test_version_one_database_is_upgraded_in_place(tmp_path):
    database = connect(f"sqlite:///{tmp_path / 'old.db'}")
    # The schema as version 1 made it: vmid_lease without project_id, one lease in it.
    database.execute_sql("CREATE TABLE vmid_lease (vmid INTEGER NOT NULL PRIMARY KEY, desktop_id BIGINT, "
                         "created_at DATETIME NOT NULL)")
    database.execute_sql("INSERT INTO vmid_lease (vmid, desktop_id, created_at) VALUES (10001, 7, '2026-11-01')")
    applied(database, 1)
    assert migrate(database, models) == ["m0002_projects", "m0003_share_generation", "m0004_desktop_expiry",
                                 "m0005_policy_runs", "m0006_audit", "m0007_job_heartbeat", "m0008_warm_pool",
                                 "m0009_pool_vm_heartbeat", "m0010_project_connection"]
    assert "project_id" in {c.name for c in database.get_columns("vmid_lease")}
    assert database.execute_sql("SELECT vmid, desktop_id, project_id FROM vmid_lease").fetchall() == [(10001, 7, None)]
    assert "project" in tables(database)


def test_migrations_on_the_test_database(database):
    """The session's database (SQLite or PostgreSQL) carries every model's table and column."""
    for model in ALL_MODELS:
        columns = {c.name for c in database.get_columns(model._meta.table_name)}
        assert {f.column_name for f in model._meta.sorted_fields} <= columns, model
    assert isinstance(database, pw.Database)


def test_version_two_projects_get_a_share_generation(tmp_path):
    database = connect(f"sqlite:///{tmp_path / 'v2.db'}")
    # The project table as version 2 made it (the columns this migration touches), with a row.
    database.execute_sql("CREATE TABLE project (id INTEGER NOT NULL PRIMARY KEY, public_id VARCHAR(40) NOT NULL, "
                         "name VARCHAR(100) NOT NULL, share_username VARCHAR(64), "
                         "share_password_hash VARCHAR(255))")
    database.execute_sql("INSERT INTO project (id, public_id, name) VALUES (3, 'proj_00000000000000aa', 'Kept')")
    applied(database, 1, 2, 4, 5, 6, 7, 8, 9, 10)  # all but 3
    assert migrate(database, models) == ["m0003_share_generation"]
    columns = {c.name for c in database.get_columns("project")}
    assert "share_generation" in columns and not {"share_username", "share_password_hash"} & columns
    assert database.execute_sql("SELECT id, public_id, name, share_generation FROM project").fetchall() == [
        (3, "proj_00000000000000aa", "Kept", 0)]
    assert migrate(database, models) == []


def test_version_six_records_get_a_job_heartbeat(tmp_path):
    database = connect(f"sqlite:///{tmp_path / 'v6.db'}")
    database.execute_sql("CREATE TABLE desktop (id INTEGER NOT NULL PRIMARY KEY, status VARCHAR(32) NOT NULL)")
    database.execute_sql("INSERT INTO desktop (id, status) VALUES (5, 'RUNNING')")
    database.execute_sql("CREATE TABLE project (id INTEGER NOT NULL PRIMARY KEY, status VARCHAR(32) NOT NULL)")
    applied(database, *range(1, 7))
    assert migrate(database, models) == ["m0007_job_heartbeat", "m0008_warm_pool", "m0009_pool_vm_heartbeat",
                                         "m0010_project_connection"]
    for table in ("desktop", "project"):
        assert "job_heartbeat_at" in {c.name for c in database.get_columns(table)}
    assert database.execute_sql("SELECT id, status, job_heartbeat_at FROM desktop").fetchall() == [(5, "RUNNING", None)]
    assert migrate(database, models) == []


def test_version_seven_leases_are_kept_and_can_belong_to_a_pool_vm(tmp_path):
    database = connect(f"sqlite:///{tmp_path / 'v7.db'}")
    database.execute_sql("CREATE TABLE vmid_lease (vmid INTEGER NOT NULL PRIMARY KEY, desktop_id BIGINT, "
                         "project_id BIGINT, created_at DATETIME NOT NULL)")
    database.execute_sql("INSERT INTO vmid_lease (vmid, desktop_id, created_at) VALUES (10002, 9, '2026-11-30')")
    applied(database, *range(1, 8))
    assert migrate(database, models) == ["m0008_warm_pool", "m0009_pool_vm_heartbeat", "m0010_project_connection"]
    assert {"pool_vm", "pool_setting"} <= tables(database)
    assert database.execute_sql("SELECT vmid, desktop_id, project_id, pool_vm_id FROM vmid_lease").fetchall() == [
        (10002, 9, None, None)]
    assert migrate(database, models) == []


def test_version_eight_pool_vms_get_a_job_heartbeat(tmp_path):
    database = connect(f"sqlite:///{tmp_path / 'v8.db'}")
    # The pool_vm table as version 8 made it (the columns that matter here), with a VM being made.
    database.execute_sql("CREATE TABLE pool_vm (id INTEGER NOT NULL PRIMARY KEY, state VARCHAR(16) NOT NULL, "
                         "job_id VARCHAR(128))")
    database.execute_sql("INSERT INTO pool_vm (id, state, job_id) VALUES (4, 'FILLING', 'pool-fill-1')")
    applied(database, *range(1, 9))
    assert migrate(database, models) == ["m0009_pool_vm_heartbeat", "m0010_project_connection"]
    assert database.execute_sql("SELECT id, state, job_id, job_heartbeat_at FROM pool_vm").fetchall() == [
        (4, "FILLING", "pool-fill-1", None)]
    assert migrate(database, models) == []


def test_version_nine_projects_get_a_screen_connection(tmp_path):
    database = connect(f"sqlite:///{tmp_path / 'v9.db'}")
    # The project table as version 9 made it (the columns that matter here), with a running project.
    database.execute_sql("CREATE TABLE project (id INTEGER NOT NULL PRIMARY KEY, status VARCHAR(32) NOT NULL)")
    database.execute_sql("INSERT INTO project (id, status) VALUES (5, 'running')")
    applied(database, *range(1, 10))
    assert migrate(database, models) == ["m0010_project_connection"]
    assert database.execute_sql("SELECT id, status, guacamole_connection_id FROM project").fetchall() == [
        (5, "running", None)]  # project_start.yml registers its screen at its next start
    assert migrate(database, models) == []


def _migrate_in_a_process(url: str) -> None:
    from controlplane.models import init_db
    init_db(url)


def test_processes_migrating_a_new_database_at_once_take_turns(tmp_path):
    """`make lab` starts the API and every worker together on a new SQLite file: each migrates it.
    Before migrations took the write lock first, some of them died with "database is locked"."""
    import multiprocessing
    url = f"sqlite:///{tmp_path / 'new.db'}"
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_migrate_in_a_process, args=(url,)) for _ in range(6)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert [p.exitcode for p in processes] == [0] * 6
    database = connect(url)
    with database.bind_ctx([SchemaMigration]):
        assert [m.number for m in SchemaMigration.select().order_by(SchemaMigration.number)] == list(range(1, 11))


def test_processes_starting_at_the_same_moment_on_a_new_sqlite_file_all_start(tmp_path):
    """The lab starts its workers together, each opening a database file nobody made yet: the switch to
    WAL, refused at once by SQLite while another process has the file open, and the migrations must not
    fail one of them ("database is locked", seen as a lab worker that died at start)."""
    import subprocess
    import sys
    child = ("import sys\nfrom controlplane.models import init_db\n"
             "print('ready', flush=True)\nsys.stdin.readline()\ninit_db(sys.argv[1])\n")
    for trial in range(4):
        url = f"sqlite:///{tmp_path / f'new-{trial}.db'}"
        procs = [subprocess.Popen([sys.executable, "-c", child, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(4)]
        for proc in procs:  # every one has imported and waits: then all open the file at once
            assert proc.stdout.readline() == "ready\n"
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err[-2000:]
        database = connect(url)
        assert database.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert {m._meta.table_name for m in ALL_MODELS} <= tables(database)
