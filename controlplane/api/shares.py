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

Before WsgiDAV sees a request (guard): a path or Destination with a dot segment (also percent-
encoded), a backslash, a control character, bytes that are not UTF-8 or an over-long name is
refused with a 400 (414 for a path over 4 KiB), a request body other than a PUT's over 1 MiB with a
413; and every answer leaves with the framing its status and method allow (no body for HEAD, 204
and 304, a body exactly as long as its Content-Length), so a keep-alive connection stays in step.

Limits (after authentication, ShareLimits): a PUT may write at most shares_max_file_bytes (413) and
the project's folder hold at most shares_quota_bytes (507; uploads under way count); a PUT with a
Content-Length is refused before its body is read, a chunked one as soon as it has sent too much. An
upload is written aside (services.shares.partial_file) and renamed over its file once complete: a
refused or cut-off upload leaves the previous content. A COPY that would exceed the quota: 507.

Locks (services.share_locks): at most shares_lock_timeout_max seconds ("Infinite" included); a
member's locks go when they leave or are removed; the owner (with their bearer token) may UNLOCK
anyone's lock in the project's folder (the token is in a PROPFIND's lockdiscovery).
"""
from __future__ import annotations

import base64
import binascii
import logging
import os
import stat
from pathlib import Path
from urllib.parse import unquote, urlparse

from werkzeug.wsgi import get_input_stream
from wsgidav import util as dav_util
from wsgidav.dav_error import HTTP_INSUFFICIENT_STORAGE, HTTP_REQUEST_ENTITY_TOO_LARGE, DAVError
from wsgidav.dc.base_dc import BaseDomainController
from wsgidav.dir_browser import WsgiDavDirBrowser
from wsgidav.dir_browser._dir_browser import ASSET_SHARE
from wsgidav.error_printer import ErrorPrinter
from wsgidav.fs_dav_provider import FileResource, FilesystemProvider, FolderResource
from wsgidav.http_authenticator import HTTPAuthenticator
from wsgidav.mw.base_mw import BaseMiddleware
from wsgidav.request_resolver import RequestResolver
from wsgidav.wsgidav_app import WsgiDAVApp

from ..auth import identity_from_token
from ..config import Settings
from ..errors import DomainError
from ..extensions import db
from ..models import Project, ProjectMember
from ..project_states import ProjectStatus
from ..services import share_locks, shares
from ..services.projects import Action, Role, allowed

log = logging.getLogger(__name__)

MOUNT = "/shares"
#: WSGI environ key (not a request header: clients cannot set it) that carries the user a bearer
#: token was verified for; WsgiDAV's HTTPAuthenticator trusts it (`trusted_auth_header`).
BEARER_USER = "controlplane.shares.bearer_user"
CONTEXT_KEY = "controlplane_shares"  # our object in the WsgiDAV config
ASSET_REALM = ASSET_SHARE.strip("/")
#: What a member who may only read (a viewer) may send: WebDAV's reading methods.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PROPFIND"})  # ":dir_browser": WsgiDAV's static files for its listing page
#: WSGI environ key: how much the PUT being served may write, (bytes per file, bytes left in the
#: project's quota), set by ShareLimits, enforced while the body streams (ShareFile).
UPLOAD_ROOM = "controlplane.shares.upload_room"
MAX_PATH_BYTES = 4096  # a longer request path: 414
MAX_NAME_BYTES = 255  # a longer file or folder name: 400 (what Linux file systems allow)
MAX_XML_BODY = 1024 * 1024  # bytes of a request body other than a PUT's (WebDAV's XML): 413 beyond


def realm_of(path_info: str, environ: dict | None = None) -> str:
    """The realm of a (normalized) path: its first segment, "/" for the root. In a request, a path
    of the assets' share has had that share stripped (WsgiDAVApp): its realm is the share."""
    provider = environ.get("wsgidav.provider") if environ else None
    if provider is not None and provider.share_path:
        return provider.share_path.strip("/")
    first = path_info.strip("/").split("/", 1)[0]
    return first or "/"


def name_refusal(text: str) -> str | None:
    """Why a (decoded) path under /shares may not reach WsgiDAV or a file name, None if it may: a
    dot segment, also once more percent-decoded (whatever decodes it again must not climb either),
    a backslash, a control character (NUL included), an over-long name."""
    for segment in text.split("/"):
        if len(segment.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            return f"a name in the path is longer than {MAX_NAME_BYTES} bytes"
        for form in (segment, unquote(segment)):
            if form in (".", ".."):
                return "the path has a dot segment"
            if "\\" in form or any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in form):
                return "the path has a backslash or a control character"
            if form is not segment and "/" in form:
                return "the path has an encoded slash"
    return None


def path_refusal(path_info: str) -> tuple[str, str] | None:
    """(status, why) for a request path (WSGI's PATH_INFO: bytes as latin-1) that is refused."""
    raw = path_info.encode("latin-1", "replace")
    if len(raw) > MAX_PATH_BYTES:
        return "414 URI Too Long", f"the path is longer than {MAX_PATH_BYTES} bytes"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "400 Bad Request", "the path is not UTF-8"
    why = name_refusal(text)
    return None if why is None else ("400 Bad Request", why)


class ShareContext:
    """What the domain controller and the gate need: the settings and the Flask app."""

    def __init__(self, flask_app, settings: Settings):
        self.flask_app = flask_app
        self.settings = settings

    def share_generation(self, project_id: str) -> int | None:
        """The project's share generation (what its password derives from), None unless the
        project exists and is not deleted."""
        with db.connection_context():
            row = (Project.select(Project.share_generation)
                   .where(Project.public_id == project_id, Project.status != ProjectStatus.DELETED.value)
                   .first())
        return None if row is None else row.share_generation

    def role(self, project_id: str, user_id: str):
        """The user's role in the (live) project, or None."""
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
        if not shares.is_project_id(realm):
            return "", "403 Forbidden"
        with self.context.flask_app.app_context():
            try:
                identity = identity_from_token(self.context.settings, token)
            except DomainError:
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


class ShareLimits(BaseMiddleware):
    """After WsgiDAV's authenticator: what a PUT may write and a COPY may add (the per-file limit
    and the project's quota), and the owner's UNLOCK of another member's lock."""

    def __init__(self, wsgidav_app, next_app, config):
        super().__init__(wsgidav_app, next_app, config)
        self.context: ShareContext = config[CONTEXT_KEY]

    def __call__(self, environ, start_response):
        environ.pop(UPLOAD_ROOM, None)
        realm = realm_of(environ["PATH_INFO"], environ)
        method = environ["REQUEST_METHOD"]
        if shares.is_project_id(realm) and environ.get("wsgidav.provider") is not None:
            refusal = None
            if method == "PUT":
                refusal = self._put(realm, environ)
            elif method == "COPY":
                refusal = self._copy(realm, environ)
            elif method == "UNLOCK" and environ.get(BEARER_USER) and self._owner_breaks_lock(realm, environ):
                return _respond(start_response, "204 No Content")
            if refusal is not None:
                return _respond(start_response, *refusal)
        return self.next_app(environ, start_response)

    def _put(self, realm: str, environ) -> tuple[str, str] | None:
        settings = self.context.settings
        length = environ.get("CONTENT_LENGTH", "").strip()
        size = int(length) if length else None  # checked by the guard; None: chunked
        if size is not None and size > settings.shares_max_file_bytes:
            return "413 Request Entity Too Large", (f"a file in a project's shared folder may have at most "
                                                    f"{settings.shares_max_file_bytes} bytes")
        try:
            target = environ["wsgidav.provider"]._loc_to_file_path(environ["PATH_INFO"], environ)
        except DAVError:
            return None  # WsgiDAV refuses it itself
        room = settings.shares_quota_bytes - shares.usage(settings, realm) + _file_size(target)
        environ[UPLOAD_ROOM] = (settings.shares_max_file_bytes, room)  # a chunked body is counted as it streams
        if size is not None and size > room:
            return "507 Insufficient Storage", _quota_message(settings)
        return None

    def _copy(self, realm: str, environ) -> tuple[str, str] | None:
        settings = self.context.settings
        try:
            source = environ["wsgidav.provider"]._loc_to_file_path(environ["PATH_INFO"], environ)
        except DAVError:
            return None
        added = _tree_size(source)
        if added and shares.usage(settings, realm) + added > settings.shares_quota_bytes:
            return "507 Insufficient Storage", _quota_message(settings)
        return None

    def _owner_breaks_lock(self, realm: str, environ) -> bool:
        """The project's owner, with their bearer token, releases any lock of the project's folder
        whose scope holds the request's resource (WsgiDAV lets only the lock's principal). False:
        WsgiDAV answers as usual (their own lock, no such lock, not the owner, ...)."""
        token = environ.get("HTTP_LOCK_TOKEN", "").strip().strip("<>")
        provider = environ["wsgidav.provider"]
        lock_man = provider.lock_manager
        if not token or lock_man is None or dav_util.get_content_length(environ):
            return False
        if self.context.role(realm, environ[BEARER_USER]) is not Role.OWNER:
            return False
        lock = lock_man.get_lock(token)
        if lock is None or lock.get("principal") == environ.get("wsgidav.user_name"):
            return False
        resource = provider.get_resource_inst(environ["PATH_INFO"], environ)
        if resource is None or realm_of(lock["root"]) != realm:
            return False
        if not lock_man.is_url_locked_by_token(resource.get_ref_url(), token):
            return False
        lock_man.release(token)
        log.info("the owner of project %s released another member's WebDAV lock", realm)
        return True


def _quota_message(settings: Settings) -> str:
    return f"the project's shared folder may hold at most {settings.shares_quota_bytes} bytes"


def _file_size(path: str) -> int:
    """Bytes of the regular file at path (0: none there, a folder, a symlink)."""
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    return st.st_size if stat.S_ISREG(st.st_mode) else 0


def _tree_size(path: str) -> int:
    """Bytes of the files at path (a file, or a folder and everything in it; symlinks not followed)."""
    if os.path.islink(path):
        return 0
    if not os.path.isdir(path):
        return _file_size(path)
    total = 0
    for root, _dirs, files in os.walk(path, followlinks=False):
        total += sum(_file_size(os.path.join(root, name)) for name in files)
    return total


class _BoundedWriter:
    """The file an upload is written to, refusing the byte that passes the file's limit (413) or the
    project's quota (507)."""

    def __init__(self, file, max_file: int, room: int):
        self.file, self.max_file, self.room, self.written = file, max_file, room, 0

    def write(self, data: bytes) -> None:
        self.written += len(data)
        if self.written > self.max_file:
            raise DAVError(HTTP_REQUEST_ENTITY_TOO_LARGE, "the file is larger than a shared folder allows")
        if self.written > self.room:
            raise DAVError(HTTP_INSUFFICIENT_STORAGE, "the project's shared folder is full")
        self.file.write(data)

    def close(self) -> None:
        self.file.close()


class ShareFile(FileResource):
    """A file of a share whose uploads are written aside and renamed over it once complete (or
    removed): a refused or cut-off upload leaves the file as it was, and readers always see a
    whole version."""

    created_empty = False  # made by this request's PUT (create_empty_resource): removed if the upload fails

    def begin_write(self, *, content_type=None):
        if self.provider.readonly:
            return super().begin_write(content_type=content_type)  # raises 403
        settings = self.provider.settings
        project_id = realm_of(self.path)
        max_file, room = self.environ.get(UPLOAD_ROOM) or (
            settings.shares_max_file_bytes,
            settings.shares_quota_bytes - shares.usage(settings, project_id) + _file_size(self._file_path))
        fd, self._partial = shares.partial_file(settings, project_id)
        return _BoundedWriter(os.fdopen(fd, "wb"), max_file, room)

    def end_write(self, *, with_errors):
        partial, self._partial = getattr(self, "_partial", None), None
        if partial is None:
            return super().end_write(with_errors=with_errors)
        if not with_errors:
            # Uploads into the project that ran at the same time count too: the last to finish
            # is refused if together they passed the quota.
            settings = self.provider.settings
            project_id = realm_of(self.path)
            written = partial.stat().st_size
            used = shares.usage(settings, project_id, exclude=partial) - _file_size(self._file_path)
            if used + written > settings.shares_quota_bytes:
                self._discard(partial)
                raise DAVError(HTTP_INSUFFICIENT_STORAGE, "the project's shared folder is full")
            os.replace(partial, self._file_path)
            self.file_stat = os.stat(self._file_path)
            return super().end_write(with_errors=False)
        self._discard(partial)
        return super().end_write(with_errors=True)

    def _discard(self, partial: Path) -> None:
        try:
            partial.unlink()
        except OSError:
            pass
        if self.created_empty:  # the empty file WsgiDAV made for the new name, if nobody wrote it since
            try:
                if os.path.isfile(self._file_path) and os.path.getsize(self._file_path) == 0:
                    os.unlink(self._file_path)
            except OSError:
                pass


class ShareFolder(FolderResource):
    def create_empty_resource(self, name):
        resource = super().create_empty_resource(name)
        if isinstance(resource, ShareFile) and self.environ.get("REQUEST_METHOD") == "PUT":
            resource.created_empty = True
        return resource


class ShareProvider(FilesystemProvider):
    """WsgiDAV's file system provider on shares_dir, with ShareFile/ShareFolder, and a path must
    stay inside its own project's folder once symlinks are resolved (not only inside shares_dir)."""

    def __init__(self, settings: Settings, root: Path):
        super().__init__(str(root), readonly=False, fs_opts={"follow_symlinks": False, "shadow_map": {}})
        self.settings = settings

    def _loc_to_file_path(self, path: str, environ: dict = None):
        file_path = super()._loc_to_file_path(path, environ)
        realm = realm_of(path)
        if path.strip("/"):
            home = os.path.join(self.root_folder_path_real, realm)
            if not shares.is_project_id(realm) or not self._is_equal_or_child_path(home, os.path.realpath(file_path)):
                raise DAVError(403, "Access outside the project's folder is not allowed")
        return file_path

    def get_resource_inst(self, path: str, environ: dict):
        file_path = self._loc_to_file_path(path, environ)
        if not os.path.exists(file_path):
            return None
        if os.path.islink(file_path):
            raise DAVError(403, "Symlinks are not served")
        if os.path.isdir(file_path):
            return ShareFolder(path, environ, file_path)
        return ShareFile(path, environ, file_path)


def make_shares_app(flask_app, settings: Settings):
    """The WsgiDAV application serving every project's folder (mount it at MOUNT)."""
    root = shares.ensure_root(settings)
    config = {
        "mount_path": MOUNT,
        "provider_mapping": {"/": ShareProvider(settings, root)},
        "http_authenticator": {
            "domain_controller": ProjectDomainController,
            "accept_basic": True,
            "accept_digest": False,
            "default_to_digest": False,
            "trusted_auth_header": BEARER_USER,
        },
        CONTEXT_KEY: ShareContext(flask_app, settings),
        "middleware_stack": [ErrorPrinter, ShareGate, HTTPAuthenticator, ShareLimits, WsgiDavDirBrowser,
                             RequestResolver],
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
        # Every lock's lifetime capped (shares_lock_timeout_max).
        "lock_storage": share_locks.storage(settings),
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

    def guarded(environ, start_response):
        refusal = request_refusal(environ)
        if refusal is not None:
            return framed(lambda _environ, start: _respond(start, *refusal), environ, start_response)
        # WsgiDAV reads request bodies to EOF. gunicorn ends wsgi.input at Content-Length (and
        # says so with wsgi.input_terminated); werkzeug's server hands over the socket, so bound it.
        environ["wsgi.input"] = get_input_stream(environ)
        environ["wsgi.input_terminated"] = True
        return framed(dav_app, environ, start_response)

    guarded.dav_app = dav_app
    return guarded


def request_refusal(environ) -> tuple[str, str] | None:
    """(status, why) for a request refused before WsgiDAV sees it: its path or Destination (dot
    segments, backslashes, control characters, not UTF-8, too long), or a body too large to read."""
    refusal = path_refusal(environ.get("PATH_INFO", ""))
    if refusal is not None:
        return refusal
    if "HTTP_DESTINATION" in environ:
        # Parsed the way WsgiDAV parses it (RequestServer._copy_or_move).
        destination = urlparse(unquote(environ["HTTP_DESTINATION"]), allow_fragments=False).path
        why = name_refusal(destination)
        if why is not None:
            return "400 Bad Request", f"Destination: {why}"
    length = environ.get("CONTENT_LENGTH", "").strip()
    if length:
        if not (length.isascii() and length.isdigit()):
            return "400 Bad Request", "Content-Length is not a number"
        if len(length) > 15:  # a petabyte or more (and int() of 4300 digits raises)
            return "413 Request Entity Too Large", "the request body is too large"
        if environ.get("REQUEST_METHOD") != "PUT" and int(length) > MAX_XML_BODY:
            return "413 Request Entity Too Large", (f"a request body other than a PUT's may have at most "
                                                    f"{MAX_XML_BODY} bytes")
    return None


# Complexity above 15 (C901): one WSGI wrapper checks each WebDAV limit in the order the request meets them.
def framed(app, environ, start_response):  # noqa: C901
    """Run a WSGI app and send its answer with the framing HTTP/1.1 wants on a keep-alive
    connection, whatever the app did: no body for HEAD, 1xx, 204 and 304 (and no Content-Length for
    1xx and 204), never more bytes than the Content-Length, and a Content-Length of 0 when the app
    announced a body and gave none (WsgiDAV's answer to a path it cannot normalize is such an
    answer). A body cut short after its first bytes ends the connection (the exception reaches
    the server): the client sees a broken answer, never the next one as its body."""
    method = environ.get("REQUEST_METHOD", "")
    answer = {}
    early: list[bytes] = []

    def start(status, headers, exc_info=None):
        if exc_info and answer.get("sent"):
            raise exc_info[1].with_traceback(exc_info[2])
        answer.update(status=status, headers=list(headers))
        return early.append  # write(): its bytes go first

    def send(actual_length: int | None = None):
        status, headers = answer["status"], answer["headers"]
        code = int(status.split(None, 1)[0])
        bodiless = method == "HEAD" or code < 200 or code in (204, 304)
        declared = next((v for k, v in headers if k.lower() == "content-length"), None)
        try:
            declared = None if declared is None else int(declared)
        except ValueError:
            declared = None
        if code < 200 or code == 204 or (not bodiless and actual_length is not None):
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            if not (code < 200 or code == 204):
                headers.append(("Content-Length", str(actual_length)))
                declared = actual_length
        answer.update(sent=True, bodiless=bodiless, declared=declared, written=0)
        start_response(status, headers)

    def emit(chunk: bytes):
        if answer["bodiless"] or not chunk:
            return b""
        if answer["declared"] is not None:
            chunk = chunk[:max(0, answer["declared"] - answer["written"])]
        answer["written"] += len(chunk)
        return chunk

    def parts(iterable):
        for chunk in iterable:
            yield from early  # what the app gave write() first
            early.clear()
            yield chunk
        yield from early
        early.clear()

    def body():
        iterable = app(environ, start)
        try:
            for part in parts(iterable):
                if not part:
                    continue
                if not answer.get("sent"):
                    send()
                part = emit(part)
                if part:
                    yield part
            if not answer.get("sent"):
                send(actual_length=0)  # nothing came: say so
            elif (not answer["bodiless"] and answer["declared"] is not None
                  and answer["written"] < answer["declared"]):
                log.error("a /shares answer (%s) ended %d bytes short of its Content-Length: connection closed",
                          answer["status"], answer["declared"] - answer["written"])
                raise ConnectionAbortedError("the answer ended before its Content-Length")
        finally:
            if hasattr(iterable, "close"):
                iterable.close()

    return body()
