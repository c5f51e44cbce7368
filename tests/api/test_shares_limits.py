"""The projects' shared folders (WsgiDAV at /shares) against what a member or an outsider could do
to them: locks that outlive their holder, uploads that fill the disk, requests that put a
keep-alive connection out of step.

- Locks last at most shares_lock_timeout_max; a member's locks go when they leave or are
  removed; the owner may UNLOCK anyone's lock in the project's folder.
- A PUT may write at most shares_max_file_bytes (413) and a project's folder hold at most
  shares_quota_bytes (507), refused before the body is read when it has a Content-Length and as
  soon as it passes the limit when chunked; the previous content of the file is kept.
- Paths with dot segments (plain or encoded), backslashes, NUL, bytes that are not UTF-8 are
  refused before WsgiDAV with a well-formed answer; every answer (HEAD, 204, 304, WsgiDAV's
  errors, refusals of bodies) keeps a real keep-alive connection (gunicorn, as production runs the
  API) in step.

The servers: werkzeug (ServerThread) as in test_shares.py, and gunicorn for keep-alive (werkzeug's
server closes every connection).
"""
from __future__ import annotations

import base64
import http.client
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import requests

from controlplane import create_app
from controlplane.config import ConfigError, Settings
from controlplane.extensions import db
from controlplane.models import Project
from controlplane.services import lifecycle
from controlplane.project_states import ProjectStatus
from tests.api.test_shares import people  # noqa: F401 (a fixture)
from tests.api.test_shares import PROPFIND_ALL, add_member, creds, dav, details, new_project, remove_member
from tests.conftest import REPO, ServerThread, free_port

KIB = 1024
LOCK_BODY = ('<?xml version="1.0" encoding="utf-8"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/>'
             '</D:lockscope><D:locktype><D:write/></D:locktype><D:owner>me</D:owner></D:lockinfo>')
LOCKDISCOVERY = ('<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:"><D:prop><D:lockdiscovery/>'
                 '</D:prop></D:propfind>')
LIMITS = {"shares_max_file_bytes": 100 * KIB, "shares_quota_bytes": 300 * KIB, "shares_lock_timeout_max": 600}


@pytest.fixture
def limited(client, base_settings, tmp_path):
    """The API over HTTP (werkzeug) with small share limits: 100 KiB a file, 300 KiB a project,
    locks of at most 10 minutes."""
    port = free_port()
    settings = base_settings.replace(shares_dir=str(tmp_path / "shares"), port=port, **LIMITS)
    server = ServerThread(create_app(settings), port=port).start()
    try:
        yield settings, server
    finally:
        server.stop()


@pytest.fixture
def gunicorn_api(client, base_settings, tmp_path):
    """The API as production runs it (`controlplane api`: gunicorn, threads, keep-alive), with the
    same small limits, on a port of its own."""
    port = free_port()
    settings = base_settings.replace(shares_dir=str(tmp_path / "shares"), port=port, **LIMITS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROLPLANE_")}
    env.update(settings.to_env(), GUNICORN_CMD_ARGS="--keep-alive 60")
    log_path = tmp_path / "gunicorn.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "controlplane.cli", "api", "--workers", "1", "--threads", "4"],
                                env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # a worker imports and warms the model library before it serves
        while True:
            try:
                if requests.get(f"{url}/api/v1/health", timeout=1).status_code in (200, 503):
                    break
            except requests.RequestException:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"gunicorn did not come up: {log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        yield settings, type("Server", (), {"url": url})()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def basic(auth: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()


def lock(url, timeout: str | None = "Infinite", **kw):
    headers = {"Content-Type": "application/xml", **kw.pop("headers", {})}
    if timeout:
        headers["Timeout"] = timeout
    locked = dav("LOCK", url, data=LOCK_BODY, headers=headers, **kw)
    assert locked.status_code in (200, 201), locked.text
    return locked


def lock_seconds(answer) -> int:
    """The lock's remaining lifetime as the answer gives it (Second-n; whole seconds, counted down)."""
    given = re.search(r"<(?:\w+:)?timeout>([^<]+)</", answer.text).group(1)
    assert given.startswith("Second-"), given
    return int(given.removeprefix("Second-"))


def partials(settings) -> list[str]:
    uploads = settings.effective_shares_dir / ".uploads"
    return sorted(os.listdir(uploads)) if uploads.is_dir() else []


# ---- locks ------------------------------------------------------------------------------------------

def test_share_limits_default_to_100_mib_a_file_1_gib_a_project_and_one_hour_locks():
    assert Settings().shares_max_file_bytes == 100 * 1024 * 1024
    assert Settings().shares_quota_bytes == 1024 * 1024 * 1024
    assert Settings().shares_lock_timeout_max == 3600
    for name in ("shares_max_file_bytes", "shares_quota_bytes", "shares_lock_timeout_max"):
        with pytest.raises(ConfigError, match=f"CONTROLPLANE_{name.upper()}"):
            Settings(**{name: 0}).validate()
        assert Settings.from_env({f"CONTROLPLANE_{name.upper()}": "1234"}).__getattribute__(name) == 1234


def test_an_infinite_webdav_lock_lasts_at_most_the_configured_maximum(limited, people, redis_conn):
    settings, server = limited
    project_id = new_project(server, people["owner"])
    url, auth = creds(server, people, project_id)
    for n, asked in enumerate(("Infinite", "Second-4100000000", None, "Infinite, Second-4100000000")):
        locked = lock(url + f"doc{n}.docx", timeout=asked, auth=auth)
        assert 590 <= lock_seconds(locked) <= 600, asked
        token = locked.headers["Lock-Token"].strip("<>")
        assert 0 < redis_conn.ttl(f"controlplane:shares:lock-lock:{token}") <= 600
    # A shorter lock is what was asked for; a refresh asking for ever gets the maximum.
    short = lock(url + "short.docx", timeout="Second-60", auth=auth)
    assert 50 <= lock_seconds(short) <= 60
    token = short.headers["Lock-Token"]
    refreshed = dav("LOCK", url + "short.docx", auth=auth, headers={"If": f"({token})", "Timeout": "Infinite"})
    assert refreshed.status_code == 200, refreshed.text
    assert 590 <= lock_seconds(refreshed) <= 600
    assert 60 < redis_conn.ttl(f"controlplane:shares:lock-lock:{token.strip('<>')}") <= 600


def test_a_removed_or_departed_members_webdav_locks_are_dropped(limited, people):
    settings, server = limited
    project_id = new_project(server, people["owner"])
    url, owner_auth = creds(server, people, project_id)
    add_member(server, people, project_id, "editor")
    editor_auth = (project_id, details(server, people["editor"], project_id)["shared_folder"]["password"])
    lock(url + "by-token.docx", headers=people["editor"])  # with their own bearer token
    lock(url + "by-password.docx", auth=editor_auth)  # with the share's password
    lock(url + "owners.docx", headers=people["owner"])  # the owner's own: stays
    for name in ("by-token.docx", "by-password.docx", "owners.docx"):
        assert dav("PUT", url + name, data=b"x", headers=people["owner"]).status_code == 423, name

    remove_member(server, people, project_id, "user_editor")
    _, new_auth = creds(server, people, project_id)
    assert dav("PUT", url + "by-token.docx", data=b"owner's", headers=people["owner"]).status_code in (201, 204)
    assert dav("PUT", url + "by-password.docx", data=b"owner's", auth=new_auth).status_code in (201, 204)
    assert dav("PUT", url + "owners.docx", data=b"x", headers=people["owner"]).status_code == 423
    assert dav("GET", url + "by-token.docx", auth=new_auth).content == b"owner's"

    # An editor who leaves by themselves takes their locks with them.
    add_member(server, people, project_id, "editor")
    lock(url + "left.docx", headers=people["editor"])
    left = requests.delete(f"{server.url}/api/projects/{project_id}/collaborators/user_editor",
                           headers=people["editor"], timeout=10)
    assert left.status_code == 200, left.text
    assert dav("PUT", url + "left.docx", data=b"mine now", headers=people["owner"]).status_code in (201, 204)

    # A viewer never had the password: removing one leaves the password's locks alone.
    _, current = creds(server, people, project_id)
    lock(url + "kept.docx", auth=current)
    add_member(server, people, project_id, "viewer")
    remove_member(server, people, project_id, "user_viewer")
    assert dav("PUT", url + "kept.docx", data=b"x", auth=current).status_code == 423


def test_the_owner_can_break_any_lock_in_the_projects_folder(limited, people):
    settings, server = limited
    project_id = new_project(server, people["owner"])
    url, auth = creds(server, people, project_id)
    add_member(server, people, project_id, "editor")
    assert dav("PUT", url + "report.docx", data=b"v1", auth=auth).status_code == 201
    assert dav("PUT", url + "other.txt", data=b"o", auth=auth).status_code == 201
    lock(url + "report.docx", headers=people["editor"])
    assert dav("PUT", url + "report.docx", data=b"v2", headers=people["owner"]).status_code == 423

    # The owner finds the lock's token (lockdiscovery), as a WebDAV client shows it.
    found = dav("PROPFIND", url + "report.docx", headers={**people["owner"], "Depth": "0",
                                                          "Content-Type": "application/xml"}, data=LOCKDISCOVERY)
    assert found.status_code == 207, found.text
    token = re.search(r"<(?:\w+:)?href>(opaquelocktoken:[^<]+)</", found.text).group(1)
    # Not for a resource outside the lock's scope, not with the password (any editor has it).
    assert dav("UNLOCK", url + "other.txt", headers={**people["owner"], "Lock-Token": f"<{token}>"}).status_code == 409
    assert dav("UNLOCK", url + "report.docx", auth=auth, headers={"Lock-Token": f"<{token}>"}).status_code == 403
    assert dav("PUT", url + "report.docx", data=b"v2", headers=people["owner"]).status_code == 423
    broken = dav("UNLOCK", url + "report.docx", headers={**people["owner"], "Lock-Token": f"<{token}>"})
    assert broken.status_code == 204, broken.text
    assert dav("PUT", url + "report.docx", data=b"v2", headers=people["owner"]).status_code == 204
    assert dav("GET", url + "report.docx", auth=auth).content == b"v2"

    # An editor cannot break the owner's lock, nor the owner a lock of a project not theirs.
    owners = lock(url + "plan.docx", headers=people["owner"]).headers["Lock-Token"]
    assert dav("UNLOCK", url + "plan.docx", headers={**people["editor"], "Lock-Token": owners}).status_code == 403
    assert dav("PUT", url + "plan.docx", data=b"x", headers=people["editor"]).status_code == 423
    theirs = new_project(server, people["outsider"], "theirs")
    their_url, their_auth = creds(server, {**people, "owner": people["outsider"]}, theirs)
    their_lock = lock(their_url + "x.docx", auth=their_auth).headers["Lock-Token"]
    assert dav("UNLOCK", their_url + "x.docx", headers={**people["owner"], "Lock-Token": their_lock}).status_code == 403
    assert dav("PUT", their_url + "x.docx", data=b"x", auth=their_auth).status_code == 423


def test_a_deleted_projects_webdav_locks_are_dropped(limited, people, redis_conn):
    settings, server = limited
    project_id = new_project(server, people["owner"])
    other_id = new_project(server, people["outsider"], "other")
    url, auth = creds(server, people, project_id)
    lock(url + "a.docx", auth=auth)
    lock(url + "b.docx", headers=people["owner"])
    other_url, other_auth = creds(server, {**people, "owner": people["outsider"]}, other_id)
    lock(other_url + "c.docx", auth=other_auth)

    def locks_of(pid):
        return [k for k in redis_conn.scan_iter(match="controlplane:shares:lock-lock:*")
                if f"/{pid}/".encode() in redis_conn.get(k)]
    assert len(locks_of(project_id)) == 2
    with db.connection_context():
        project = Project.get(Project.public_id == project_id)
        Project.update(status=ProjectStatus.DELETING.value).where(Project.id == project.id).execute()
        assert lifecycle.set_status(project, ProjectStatus.DELETED, "Project deleted", "worker", settings=settings)
    assert locks_of(project_id) == []
    assert len(locks_of(other_id)) == 1  # another project's stay


# ---- upload limits and the quota ----------------------------------------------------------------------

def test_a_put_over_the_file_limit_is_refused_with_413_before_its_body_is_sent(limited, people):
    settings, server = limited
    project_id = new_project(server, people["owner"])
    url, auth = creds(server, people, project_id)
    before = os.urandom(50 * KIB)
    assert dav("PUT", url + "keep.bin", data=before, auth=auth).status_code == 201
    for name in ("keep.bin", "new.bin"):
        conn = http.client.HTTPConnection("127.0.0.1", settings.port, timeout=10)
        try:
            conn.putrequest("PUT", f"/shares/{project_id}/{name}")
            conn.putheader("Authorization", basic(auth))
            conn.putheader("Content-Length", str(200 * 1024 * 1024))  # 200 MB announced, none sent
            conn.endheaders()
            answer = conn.getresponse()
            assert answer.status == 413, name
            assert len(answer.read()) == int(answer.getheader("Content-Length"))
        finally:
            conn.close()
    assert (settings.effective_shares_dir / project_id / "keep.bin").read_bytes() == before
    assert not (settings.effective_shares_dir / project_id / "new.bin").exists()
    assert partials(settings) == []


def test_a_chunked_put_over_the_file_limit_is_refused_with_413_and_keeps_the_previous_file(limited, people):
    settings, server = limited
    project_id = new_project(server, people["owner"])
    url, auth = creds(server, people, project_id)
    before = os.urandom(50 * KIB)
    assert dav("PUT", url + "keep.bin", data=before, auth=auth).status_code == 201
    for name in ("keep.bin", "new.bin"):
        parts = [os.urandom(32 * KIB) for _ in range(10)]  # 320 KiB, chunked
        refused = dav("PUT", url + name, data=iter(parts), auth=auth)
        assert refused.status_code == 413, (name, refused.status_code, refused.text)
    assert (settings.effective_shares_dir / project_id / "keep.bin").read_bytes() == before
    assert dav("GET", url + "keep.bin", auth=auth).content == before
    assert not (settings.effective_shares_dir / project_id / "new.bin").exists()
    assert partials(settings) == []
    # Up to the limit, chunked or not, is fine.
    exactly = os.urandom(100 * KIB)
    chunked = iter([exactly[:60 * KIB], exactly[60 * KIB:]])
    assert dav("PUT", url + "keep.bin", data=chunked, auth=auth).status_code == 204
    assert (settings.effective_shares_dir / project_id / "keep.bin").read_bytes() == exactly


def test_puts_and_copies_past_the_projects_quota_are_refused_with_507_and_lose_nothing(limited, people):
    settings, server = limited
    project_id = new_project(server, people["owner"])
    url, auth = creds(server, people, project_id)
    folder = settings.effective_shares_dir / project_id
    files = {"a.bin": os.urandom(100 * KIB), "b.bin": os.urandom(100 * KIB), "c.bin": os.urandom(90 * KIB)}
    for name, data in files.items():
        assert dav("PUT", url + name, data=data, auth=auth).status_code == 201
    # 290 KiB of 300 used: 20 KiB more is refused, with a Content-Length or chunked, new or over.
    assert dav("PUT", url + "d.bin", data=os.urandom(20 * KIB), auth=auth).status_code == 507
    assert dav("PUT", url + "d.bin", data=iter([os.urandom(10 * KIB)] * 2), auth=auth).status_code == 507
    assert dav("PUT", url + "c.bin", data=os.urandom(100 * KIB + 1), auth=auth).status_code == 413
    assert dav("COPY", url + "a.bin", auth=auth, headers={"Destination": url + "a2.bin"}).status_code == 507
    assert not (folder / "d.bin").exists() and not (folder / "a2.bin").exists()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == files
    assert partials(settings) == []
    # Replacing a file counts the bytes it replaces: c.bin may grow to 100 KiB (300 of 300).
    files["c.bin"] = os.urandom(100 * KIB)
    assert dav("PUT", url + "c.bin", data=iter([files["c.bin"]]), auth=auth).status_code == 204
    assert dav("PUT", url + "e.bin", data=b"x", auth=auth).status_code == 507
    assert dav("PUT", url + "c.bin", data=b"y" * (100 * KIB + 1), auth=auth).status_code == 413
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == files
    # The quota is the project's: another project has its own; freeing space makes room.
    other = new_project(server, people["outsider"], "other")
    other_url, other_auth = creds(server, {**people, "owner": people["outsider"]}, other)
    assert dav("PUT", other_url + "big.bin", data=os.urandom(100 * KIB), auth=other_auth).status_code == 201
    assert dav("DELETE", url + "a.bin", auth=auth).status_code == 204
    assert dav("PUT", url + "d.bin", data=os.urandom(20 * KIB), auth=auth).status_code == 201


def test_webdav_request_bodies_over_1_mib_are_refused_before_they_are_read(limited, people):
    settings, server = limited
    project_id = new_project(server, people["owner"])
    _, auth = creds(server, people, project_id)
    for method in ("PROPFIND", "PROPPATCH", "LOCK", "COPY"):
        conn = http.client.HTTPConnection("127.0.0.1", settings.port, timeout=10)
        try:
            conn.putrequest(method, f"/shares/{project_id}/")
            conn.putheader("Authorization", basic(auth))
            conn.putheader("Content-Type", "application/xml")
            conn.putheader("Content-Length", str(2 * 1024 * 1024))
            conn.endheaders()
            answer = conn.getresponse()
            assert answer.status == 413, method
            assert len(answer.read()) == int(answer.getheader("Content-Length"))
        finally:
            conn.close()


# ---- paths and framing -----------------------------------------------------------------------------------

def test_over_long_paths_and_names_are_refused(limited, people):
    settings, server = limited
    project_id = new_project(server, people["owner"])
    url, auth = creds(server, people, project_id)
    assert dav("PUT", url + "n" * 256, data=b"x", auth=auth).status_code == 400
    assert dav("PUT", url + "n" * 255, data=b"x", auth=auth).status_code == 201
    assert dav("GET", url + "d/" * 2100, auth=auth).status_code == 414
    assert sorted(p.name for p in (settings.effective_shares_dir / project_id).iterdir()) == ["n" * 255]


def exchange(conn: http.client.HTTPConnection, method: str, path: str, headers: dict | None = None,
             body: bytes | None = None, chunks: list[bytes] | None = None) -> tuple[int, dict, bytes]:
    """One request and its answer on a connection that must stay open and in step."""
    headers = dict(headers or {})
    if chunks is not None:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in {**headers, "Transfer-Encoding": "chunked"}.items():
            conn.putheader(name, value)
        conn.endheaders()
        for chunk in chunks:
            conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        conn.send(b"0\r\n\r\n")
    else:
        conn.request(method, path, body=body, headers=headers)
    answer = conn.getresponse()
    data = answer.read()
    fields = {k.lower(): v for k, v in answer.getheaders()}
    if method != "HEAD" and answer.status not in (204, 304) and "content-length" in fields:
        assert len(data) == int(fields["content-length"]), (method, path, answer.status)
    if method == "HEAD" or answer.status in (204, 304):
        assert data == b"", (method, path, answer.status)
    assert fields.get("connection", "").lower() != "close", (method, path, answer.status, fields)
    return answer.status, fields, data


def test_a_refused_shares_path_keeps_the_keep_alive_connection_in_step(gunicorn_api, people):
    """GET /shares/x/../../y was answered with a Content-Length and no body: the next answer on the
    connection was read as its body. Every refusal and every kind of answer of /shares, one
    after the other on one connection of the API as production runs it."""
    settings, server = gunicorn_api
    project_id = new_project(server, people["owner"])
    url, auth = creds(server, people, project_id)
    assert dav("PUT", url + "known.txt", data=b"known content\n", auth=auth).status_code == 201
    me = {"Authorization": basic(auth)}
    base = f"/shares/{project_id}"
    conn = http.client.HTTPConnection("127.0.0.1", settings.port, timeout=10)
    try:
        conn.connect()
        local = conn.sock.getsockname()
        refused = [
            ("GET", "/shares/x/../../y", {}, None),
            ("GET", f"{base}/../../etc/passwd", me, None),
            ("GET", f"{base}/%2e%2e/%2E%2E/y", me, None),
            ("GET", f"{base}/%252e%252e/y", me, None),
            ("GET", f"{base}/./known.txt", me, None),
            ("GET", f"{base}/a%5cb.txt", me, None),
            ("GET", f"{base}/a%00b.txt", me, None),
            ("GET", f"{base}/%ff.txt", me, None),
            ("HEAD", "/shares/x/../../y", {}, None),
            ("PUT", f"{base}/../x.txt", me, b"0123456789"),
            ("PROPFIND", f"{base}/../", {**me, "Depth": "1"}, None),
            ("COPY", f"{base}/known.txt", {**me, "Destination": f"{base}/../proj_00/x.txt"}, None),
        ]
        for method, path, headers, body in refused:
            status, _, data = exchange(conn, method, path, headers, body)
            assert status == 400, (method, path, status, data)
            assert conn.sock is not None and conn.sock.getsockname() == local, (method, path)

        status, fields, _ = exchange(conn, "PUT", f"{base}/new.txt", me, b"new")
        assert status == 201
        assert exchange(conn, "PUT", f"{base}/new.txt", me, b"newer")[0] == 204
        status, fields, data = exchange(conn, "GET", f"{base}/known.txt", me)
        assert (status, data) == (200, b"known content\n")
        etag = fields["etag"]
        assert exchange(conn, "HEAD", f"{base}/known.txt", me)[0] == 200
        assert exchange(conn, "HEAD", f"{base}/missing.txt", me)[0] == 404
        assert exchange(conn, "GET", f"{base}/known.txt", {**me, "If-None-Match": etag})[0] == 304
        assert exchange(conn, "GET", f"{base}/missing.txt", me)[0] == 404
        assert exchange(conn, "GET", f"{base}/known.txt")[0] == 401
        assert exchange(conn, "GET", f"{base}/known.txt", {"Authorization": "Basic !!!"})[0] == 401
        assert exchange(conn, "GET", base, me)[0] == 301
        assert exchange(conn, "GET", f"{base}/", me)[0] == 200  # the listing page
        assert exchange(conn, "OPTIONS", f"{base}/", me)[0] == 200
        assert exchange(conn, "PROPFIND", f"{base}/", {**me, "Depth": "1", "Content-Type": "application/xml"},
                        PROPFIND_ALL.encode())[0] == 207
        assert exchange(conn, "MKCOL", f"{base}/dir", me)[0] == 201
        assert exchange(conn, "MKCOL", f"{base}/dir", me)[0] == 405
        assert exchange(conn, "PUT", f"{base}/dir", me, b"x")[0] == 405
        assert exchange(conn, "PUT", f"{base}/nowhere/x.txt", me, b"x")[0] == 409
        status, fields, _ = exchange(conn, "LOCK", f"{base}/new.txt", {**me, "Content-Type": "application/xml",
                                                                      "Timeout": "Infinite"}, LOCK_BODY.encode())
        assert status == 200
        token = fields["lock-token"]
        assert exchange(conn, "PUT", f"{base}/new.txt", me, b"x")[0] == 423
        assert exchange(conn, "UNLOCK", f"{base}/new.txt", {**me, "Lock-Token": "<opaquelocktoken:nope>"})[0] == 409
        assert exchange(conn, "UNLOCK", f"{base}/new.txt", {**me, "Lock-Token": token})[0] == 204
        # A chunked upload refused once past the limit: the rest of its body is drained, the
        # connection goes on.
        assert exchange(conn, "PUT", f"{base}/big.bin", me, chunks=[os.urandom(32 * KIB)] * 4)[0] == 413
        assert exchange(conn, "DELETE", f"{base}/new.txt", me)[0] == 204
        assert exchange(conn, "GET", f"{base}/known.txt", me)[2] == b"known content\n"
        assert conn.sock is not None and conn.sock.getsockname() == local  # one connection throughout
        # An upload refused before its body was read: gunicorn ends a connection whose unread body
        # is over 64 KiB once the answer is out. Either way the next answer is the right one.
        assert exchange(conn, "PUT", f"{base}/big.bin", me, os.urandom(100 * KIB + 1))[0] == 413
        try:
            after = exchange(conn, "GET", f"{base}/known.txt", me)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            conn.close()
            after = exchange(conn, "GET", f"{base}/known.txt", me)
        assert after[:1] == (200,) and after[2] == b"known content\n"
    finally:
        conn.close()
    assert not (settings.effective_shares_dir / "y").exists()
    assert sorted(os.listdir(settings.effective_shares_dir / project_id)) == ["dir", "known.txt"]
