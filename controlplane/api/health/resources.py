"""GET /api/v1/health: the API, its database, Redis, and live RQ workers (by heartbeat)."""
from __future__ import annotations

import datetime as dt

from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema, fields
from rq import Worker

from ...extensions import db
from ...services.queue import QUEUE_NAME, get_redis
from ..common import iso, now_iso, settings

blp = Blueprint("health", __name__, url_prefix="/api/v1/health", description="Liveness of the control plane")


class Check(Schema):
    status = fields.String(required=True, metadata={"description": "ok or error"})
    detail = fields.String()


class WorkerCheck(Check):
    count = fields.Integer()
    lastHeartbeat = fields.String(allow_none=True)


class Checks(Schema):
    api = fields.Nested(Check)
    database = fields.Nested(Check)
    redis = fields.Nested(Check)
    worker = fields.Nested(WorkerCheck)


class Health(Schema):
    status = fields.String(required=True, metadata={"description": "ok or degraded"})
    checks = fields.Nested(Checks)


class HealthEnvelope(Schema):
    success = fields.Boolean(required=True)
    data = fields.Nested(Health)
    timestamp = fields.String()


def _database():
    try:
        db.execute_sql("SELECT 1")
        return {"status": "ok", "detail": db.obj.__class__.__name__}
    except Exception as exc:
        return {"status": "error", "detail": type(exc).__name__}


def _redis_and_workers():
    try:
        conn = get_redis(settings().redis_url)
        conn.ping()
    except Exception as exc:
        return {"status": "error", "detail": type(exc).__name__}, {"status": "error", "count": 0,
                                                                   "lastHeartbeat": None,
                                                                   "detail": "Redis unreachable"}
    now = dt.datetime.now(dt.timezone.utc)
    live = []
    for worker in Worker.all(connection=conn):
        beat = worker.last_heartbeat
        if beat is not None and beat.tzinfo is None:
            beat = beat.replace(tzinfo=dt.timezone.utc)
        if QUEUE_NAME in worker.queue_names() and beat and now - beat < dt.timedelta(seconds=worker.worker_ttl + 60):
            live.append(beat)
    worker = {"status": "ok" if live else "error", "count": len(live), "lastHeartbeat": iso(max(live)) if live else None}
    if not live:
        worker["detail"] = f"No worker is listening on queue {QUEUE_NAME!r}"
    return {"status": "ok"}, worker


@blp.route("")
class HealthView(MethodView):
    @blp.response(200, HealthEnvelope)
    @blp.alt_response(503, schema=HealthEnvelope, description="A dependency is down")
    @blp.doc(security=[])  # public, for monitors: no token (the document's default is bearerAuth)
    def get(self):
        """Health of the API, database, Redis and workers (503 when any is down)."""
        redis_check, worker_check = _redis_and_workers()
        checks = {"api": {"status": "ok"}, "database": _database(), "redis": redis_check, "worker": worker_check}
        healthy = all(c["status"] == "ok" for c in checks.values())
        body = {"success": healthy, "data": {"status": "ok" if healthy else "degraded", "checks": checks},
                "timestamp": now_iso()}
        return body, 200 if healthy else 503
