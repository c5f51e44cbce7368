"""Cloud Desktop Service control plane.

`create_app(settings=None)` builds the Flask app; nothing (app, database, Redis) is created at
import time. gunicorn: `gunicorn 'controlplane:create_app()'`.
"""
from __future__ import annotations

import logging

from flask import Flask

from .config import Settings

__version__ = "0.1.0"


def create_app(settings: Settings | None = None) -> Flask:
    from .api.admin import blp as admin_blp
    from .api.common import SETTINGS_KEY
    from .api.chat.resources import blp as chat_blp
    from .api.desktops.resources import blp as desktops_blp
    from .api.errors import init_error_handlers, render_error
    from .api.health.resources import blp as health_blp
    from .api.jsonbody import JsonProvider, JsonRequest
    from .api.projects.resources import blp as projects_blp
    from .auth import init_auth
    from .extensions import api, db
    from .models import init_db
    from .logs import configure_logging

    settings = settings or Settings.from_env()
    settings.require_redis()
    configure_logging(settings)

    app = Flask(__name__)
    app.request_class = JsonRequest  # one strict JSON parse of every body (api/jsonbody.py)
    app.json = JsonProvider(app)
    app.json.sort_keys = False  # keep the contract's field order ("success" first)
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_request_body,  # and chunked bodies too: api/bodies.py
        API_TITLE="Cloud Desktop Service",
        API_VERSION="v1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/api/v1",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="docs",
        # Served from the swagger-ui-bundle package, never a CDN (the machines may be offline).
        OPENAPI_SWAGGER_UI_URL="/api/v1/docs/assets/",
        API_SPEC_OPTIONS={
            "info": {"description": "Desktop API (desktop-api.md): virtual desktops on Proxmox VE, reached "
                                    "in the browser through Apache Guacamole."},
            "components": {"securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                                              "bearerFormat": "JWT"}}},
            "security": [{"bearerAuth": []}],
        },
    )
    app.extensions[SETTINGS_KEY] = settings
    _serve_swagger_ui(app)

    init_db(settings.effective_database_url, pooled=True)
    init_auth(app, settings, render_error)
    api.init_app(app)
    api.register_blueprint(desktops_blp)
    api.register_blueprint(health_blp)
    api.register_blueprint(projects_blp)
    api.register_blueprint(chat_blp)
    api.register_blueprint(admin_blp)
    init_error_handlers(app)
    from .api.audit import init_audit
    init_audit(app)
    from .api.ws import init_ws
    init_ws(app)
    from .api.limits import init_limits
    init_limits(app, settings)
    from .api.metrics import init_metrics
    init_metrics(app, settings)
    from .portal import init_portal
    init_portal(app, settings)
    from .api.bodies import init_bodies
    init_bodies(app, settings.max_request_body)  # before the shares' dispatcher: not over /shares

    from .services import shares
    if shares.enabled(settings):
        # The projects' shared folders (WebDAV), beside the Flask app in the same WSGI process.
        from werkzeug.middleware.dispatcher import DispatcherMiddleware
        from .api.shares import MOUNT, make_shares_app
        app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {MOUNT: make_shares_app(app, settings)})
    else:
        logging.getLogger(__name__).warning("project shared folders are disabled: set CONTROLPLANE_SHARES_SECRET "
                                            "(or CONTROLPLANE_JWT_SECRET)")

    @app.before_request
    def _connect():
        db.connect(reuse_if_open=True)

    @app.teardown_request
    def _close(_exc):
        if not db.is_closed():
            db.close()

    logging.getLogger(__name__).info("control plane ready (database %s)", settings.effective_database_url.split(":")[0])
    return app


def _serve_swagger_ui(app: Flask) -> None:
    """/api/v1/docs/assets/<file>: Swagger UI's own files, for the /api/v1/docs page."""
    from flask import send_from_directory
    from swagger_ui_bundle import swagger_ui_path

    @app.get("/api/v1/docs/assets/<path:filename>")
    def swagger_ui_asset(filename: str):
        return send_from_directory(swagger_ui_path, filename, max_age=3600)
