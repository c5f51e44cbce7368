"""The projects' shared folders over HTTP/WebDAV: WsgiDAV mounted at /shares (create_app).

One FilesystemProvider rooted at shares_dir; a project's folder is `/shares/<project id>/`. The
first path segment is the authentication realm, and a request is let in only

- with HTTP Basic and that project's credentials (user name = the project id, password from
  services.shares.password for the project's current share generation: constant-time compare):
  read and write, or
- with the caller's own bearer token (`Authorization: Bearer <access token>`, verified like the
  API's) when the caller is a member of the project: read for every member, write for those the
  permission table lets write the share (editors, the owner),

and only while the project exists and is not deleted (even if its folder is still on disk). The
root (`/shares/`) and anything that is not a project's folder are refused; there is no anonymous
access (except WsgiDAV's own static assets of its directory listing page), no digest auth, and
COPY/MOVE cannot leave the project's folder.
"""
from __future__ import annotations

import base64
import binascii
import logging
from urllib.parse import unquote, urlparse

from werkzeug.wsgi import get_input_stream
from wsgidav import util as dav_util
from wsgidav.dav_error import DAVError
from wsgidav.dc.base_dc import BaseDomainController
from wsgidav.dir_browser import WsgiDavDirBrowser
from wsgidav.dir_browser._dir_browser import ASSET_SHARE
from wsgidav.error_printer import ErrorPrinter
from wsgidav.fs_dav_provider import FilesystemProvider
from wsgidav.http_authenticator import HTTPAuthenticator
from wsgidav.lock_man.lock_storage_redis import LockStorageRedis
from wsgidav.mw.base_mw import BaseMiddleware
from wsgidav.request_resolver import RequestResolver
from wsgidav.wsgidav_app import WsgiDAVApp

from ..config import Settings
from ..extensions import db
from ..services import shares

log = logging.getLogger(__name__)

MOUNT = "/shares"
#: WSGI environ key (not a request header: clients cannot set it) that carries the user a bearer
#: token was verified for; WsgiDAV's HTTPAuthenticator trusts it (`trusted_auth_header`).
BEARER_USER = "controlplane.shares.bearer_user"
CONTEXT_KEY = "controlplane_shares"  # our object in the WsgiDAV config
ASSET_REALM = ASSET_SHARE.strip("/")
#: What a member who may only read (a viewer) may send: WebDAV's reading methods.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PROPFIND"})  # ":dir_browser": WsgiDAV's static files for its listing page


def realm_of(path_info: str, environ: dict | None = None) -> str:
    """The realm of a (normalized) path: its first segment, "/" for the root. In a request, a path
    of the assets' share has had that share stripped (WsgiDAVApp): its realm is the share."""
    provider = environ.get("wsgidav.provider") if environ else None
    if provider is not None and provider.share_path:
        return provider.share_path.strip("/")
    first = path_info.strip("/").split("/", 1)[0]
    return first or "/"


class ShareContext:
    """What the domain controller and the gate need: the settings and the Flask app."""

    def __init__(self, flask_app, settings: Settings):
        self.flask_app = flask_app
        self.settings = settings

    def share_generation(self, project_id: str) -> int | None:
        """The project's share generation (what its password derives from), None unless the
        project exists and is not deleted."""
        from ..models import Project
        from ..services.project_states import ProjectStatus
        with db.connection_context():
            row = (Project.select(Project.share_generation)
                   .where(Project.public_id == project_id, Project.status != ProjectStatus.DELETED.value)
                   .first())
        return None if row is None else row.share_generation

    def role(self, project_id: str, user_id: str):
        """The user's role in the (live) project, or None."""
        from ..models import Project, ProjectMember
        from ..services.project_states import ProjectStatus
        from ..services.projects import Role
        with db.connection_context():
            member = (ProjectMember.select(ProjectMember.role).join(Project)
                      .where(Project.public_id == project_id, Project.status != ProjectStatus.DELETED.value,
                             ProjectMember.user_id == user_id)
                      .first())
        return None if member is None else Role(member.role)


class ProjectDomainController(BaseDomainController):
    """Realm = the project id (first path segment); Basic auth with that project's credentials."""

    def __init__(self, wsgidav_app, config):
        super().__init__(wsgidav_app, config)
        self.context: ShareContext = config[CONTEXT_KEY]

    def __str__(self):
        return f"{self.__class__.__name__}()"

    def get_domain_realm(self, path_info, environ):
        return realm_of(path_info, environ)

    def require_authentication(self, realm, environ):
        return realm != ASSET_REALM  # only the listing page's CSS/JS/icons are public

    def basic_auth_user(self, realm, user_name, password, environ):
        if not shares.is_project_id(realm):
            return False
        generation = self.context.share_generation(realm)
        return generation is not None and shares.check(self.context.settings, realm, user_name, password, generation)

    def supports_http_digest_auth(self):
        return False  # digest would need the password in a form we would have to keep


class ShareGate(BaseMiddleware):
    """Before WsgiDAV's authenticator: bearer tokens of members, COPY/MOVE confinement, and the
    redirect of `/shares/<id>` to `/shares/<id>/`."""

    def __init__(self, wsgidav_app, next_app, config):
        super().__init__(wsgidav_app, next_app, config)
        self.context: ShareContext = config[CONTEXT_KEY]

    def __call__(self, environ, start_response):
        environ.pop(BEARER_USER, None)
        path = environ["PATH_INFO"]  # normalized by WsgiDAVApp
        realm = realm_of(path, environ)
        if realm == ASSET_REALM and environ["REQUEST_METHOD"] not in ("GET", "HEAD", "OPTIONS"):
            return _respond(start_response, "403 Forbidden")
        if "HTTP_DESTINATION" in environ and not self._destination_in(realm, environ["HTTP_DESTINATION"]):
            return _respond(start_response, "403 Forbidden", "COPY and MOVE stay inside the project's folder")
        if (environ["REQUEST_METHOD"] in ("GET", "HEAD") and shares.is_project_id(realm)
                and path.rstrip("/") == f"/{realm}" and not path.endswith("/")):
            location = f"{environ.get('SCRIPT_NAME', '')}/{realm}/"
            return _respond(start_response, "301 Moved Permanently", headers=[("Location", location)])
        scheme, credentials = (environ.get("HTTP_AUTHORIZATION", "").split(None, 1) + ["", ""])[:2]
        if scheme.lower() == "basic" and not _well_formed_basic(credentials):
            # WsgiDAV answers a malformed Basic header with a 500 (and a traceback in the log).
            return _respond(start_response, "401 Not Authorized",
                            headers=[("WWW-Authenticate", f'Basic realm="{realm}"')])
        if scheme.lower() == "bearer":
            user_id, refusal = self._bearer(realm, credentials.strip(), environ["REQUEST_METHOD"])
            if refusal is not None:
                return _respond(start_response, refusal,
                                headers=[("WWW-Authenticate", f'Basic realm="{realm}"')]
                                if refusal.startswith("401") else None)
            environ[BEARER_USER] = user_id
            del environ["HTTP_AUTHORIZATION"]  # WsgiDAV needs no token past this point
        return self.next_app(environ, start_response)

    def _bearer(self, realm: str, token: str, method: str) -> tuple[str, str | None]:
        """(user id, None) when the token's user is a member of the realm's project whose role
        allows the method (any member reads; editors and the owner write), else ("", the
        refusal's status)."""
        from ..auth import identity_from_token
        from ..errors import ApiError
        from ..services.projects import Action, allowed
        if not shares.is_project_id(realm):
            return "", "403 Forbidden"
        with self.context.flask_app.app_context():
            try:
                identity = identity_from_token(self.context.settings, token)
            except ApiError:
                return "", "401 Not Authorized"
        role = self.context.role(realm, identity.user_id)
        if role is None:
            return "", "403 Forbidden"
        if method.upper() not in READ_METHODS and not allowed(role, Action.WRITE_SHARE):
            return "", "403 Forbidden"
        return identity.user_id, None

    @staticmethod
    def _destination_in(realm: str, destination: str) -> bool:
        # Parsed the way WsgiDAV's request server parses it (RequestServer._copy_or_move).
        dest_path = urlparse(unquote(destination), allow_fragments=False).path
        try:
            dest_path = dav_util.normalize_path(dest_path)
        except DAVError:
            return False
        if not dest_path.startswith(MOUNT + "/"):
            return False
        return shares.is_project_id(realm) and realm_of(dest_path[len(MOUNT):]) == realm


def _well_formed_basic(value: str) -> bool:
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (ValueError, binascii.Error):  # UnicodeDecodeError is a ValueError
        return False
    return ":" in decoded


def _respond(start_response, status: str, text: str = "", headers: list | None = None):
    body = (text or status).encode() + b"\n"
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
                            *(headers or [])])
    return [body]


class RedisLockStorage(LockStorageRedis):
    """WsgiDAV's Redis lock storage on our Redis URL (TCP, TLS or a unix socket), so that every
    API process (gunicorn workers, several hosts) sees the same WebDAV locks."""

    def __init__(self, url: str):
        super().__init__()
        self._url = url
        self._redis_prefix = "controlplane:shares:lock-{}"
        self._redis_lock_prefix = self._redis_prefix.format("lock:{}")
        self._redis_url2token_prefix = self._redis_prefix.format("URL2TOKEN:{}")

    def open(self):
        from ..services.queue import get_redis
        self._redis = get_redis(self._url)


def make_shares_app(flask_app, settings: Settings):
    """The WsgiDAV application serving every project's folder (mount it at MOUNT)."""
    root = shares.ensure_root(settings)
    config = {
        "mount_path": MOUNT,
        "provider_mapping": {"/": FilesystemProvider(str(root), readonly=False,
                                                     fs_opts={"follow_symlinks": False, "shadow_map": {}})},
        "http_authenticator": {
            "domain_controller": ProjectDomainController,
            "accept_basic": True,
            "accept_digest": False,
            "default_to_digest": False,
            "trusted_auth_header": BEARER_USER,
        },
        CONTEXT_KEY: ShareContext(flask_app, settings),
        "middleware_stack": [ErrorPrinter, ShareGate, HTTPAuthenticator, WsgiDavDirBrowser, RequestResolver],
        "dir_browser": {
            "enable": True,  # after the authenticator: only authenticated users see a listing
            "directory_slash": False,  # its redirect drops the mount path; ShareGate redirects instead
            "response_trailer": False,
            "show_user": False,
            "davmount": True,
            "ms_sharepoint_support": False,
            "libre_office_support": False,
        },
        # In Redis, shared by every API process; in memory (this process only) without Redis.
        "lock_storage": RedisLockStorage(settings.redis_url) if settings.redis_url else True,
        "property_manager": True,
        "suppress_version_info": True,
        "add_header_MS_Author_Via": True,
        "verbose": 1,
        # WsgiDAV logs to the "wsgidav" logger, which we keep (and quiet) ourselves: no stdout
        # handler of its own, our root handlers and their secret redaction.
        "logging": {"enable": False},
    }
    dav_logger = logging.getLogger("wsgidav")
    dav_logger.propagate = True  # WsgiDAV turns it off (library mode): to our handlers, redacted
    dav_logger.setLevel(logging.ERROR)  # its start-up banner and warnings (Basic without TLS, ...)
    try:
        dav_app = WsgiDAVApp(config)
    finally:
        dav_logger.setLevel(logging.WARNING)  # then: failed logins (user name and realm only), errors

    def bounded_input(environ, start_response):
        # WsgiDAV reads request bodies to EOF. gunicorn ends wsgi.input at Content-Length (and
        # says so with wsgi.input_terminated); werkzeug's server hands over the socket, so bound it.
        environ["wsgi.input"] = get_input_stream(environ)
        environ["wsgi.input_terminated"] = True
        return dav_app(environ, start_response)

    bounded_input.dav_app = dav_app
    return bounded_input
