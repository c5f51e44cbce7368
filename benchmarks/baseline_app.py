"""The baseline of the API's speed: a bare Flask + peewee app serving the read `GET /api/v1/desktops/{id}`
from the same table of the same database, with no authentication, rate limits, schemas or envelope
code of ours. benchmarks/load.py runs it under the same gunicorn settings as the API and compares
(issue 20: the API should serve at least 0.8 times what this does).

    CONTROLPLANE_DATABASE_URL=sqlite:///var/controlplane.db \\
        .venv/bin/gunicorn --workers 3 --threads 64 'benchmarks.baseline_app:create_app()'
"""
from __future__ import annotations

import os

import peewee as pw
from flask import Flask, abort, jsonify
from playhouse.db_url import connect

database = pw.DatabaseProxy()


class Desktop(pw.Model):
    """The columns the API's answer shows, of the control plane's `desktop` table."""
    id = pw.BigAutoField()
    user_id = pw.CharField()
    name = pw.CharField()
    status = pw.CharField()
    status_message = pw.TextField()
    plan = pw.CharField()
    cpu_cores = pw.IntegerField()
    memory_mb = pw.IntegerField()
    ip_address = pw.CharField(null=True)
    created_at = pw.DateTimeField()
    updated_at = pw.DateTimeField()

    class Meta:
        database = database
        table_name = "desktop"


def _pooled(url: str) -> pw.Database:
    """The database at `url` with peewee's connection pool, as the API keeps its connections (the same
    settings as models.init_db)."""
    scheme, rest = url.split("://", 1)
    kwargs = dict(max_connections=64, stale_timeout=300, timeout=10)
    if scheme == "sqlite":
        kwargs.update(check_same_thread=False, pragmas={"busy_timeout": 10000})
    return connect(f"{scheme}+pool://{rest}", **kwargs)


def create_app() -> Flask:
    database.initialize(_pooled(os.environ["CONTROLPLANE_DATABASE_URL"]))
    app = Flask(__name__)

    @app.before_request
    def _connect():
        database.connect(reuse_if_open=True)

    @app.teardown_request
    def _close(exc):
        if not database.is_closed():
            database.close()

    @app.get("/api/v1/desktops/<int:desktop_id>")
    def get_desktop(desktop_id: int):
        row = Desktop.get_or_none(Desktop.id == desktop_id)
        if row is None:
            abort(404)
        return jsonify({"success": True, "data": {
            "id": row.id, "userId": row.user_id, "name": row.name, "status": row.status,
            "statusMessage": row.status_message, "plan": row.plan, "cpuCores": row.cpu_cores,
            "memoryMb": row.memory_mb, "ipAddress": row.ip_address, "createdAt": row.created_at.isoformat(),
            "updatedAt": row.updated_at.isoformat()}})

    return app
