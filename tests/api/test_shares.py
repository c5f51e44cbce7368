"""The projects' shared folders (WsgiDAV at /shares) through the real HTTP stack: a werkzeug server
running create_app, `requests` as the WebDAV client, the real database and Redis.

Per-project credentials (user = project id, password = HMAC of it under the server's secret), the
caller's own bearer token for members (viewers read, editors and the owner write), the password
rotated when an editor is removed, refusals (wrong password, another project's credentials,
the root, no credentials, COPY/MOVE out of the folder, deleted projects), the folder's lifecycle
(made on create, removed when the project is released as deleted), and what the API shows."""
from __future__ import annotations

import logging
import os
import re

import pytest
import requests

from controlplane import create_app
from controlplane.extensions import db
from controlplane.models import Project
from controlplane.services import lifecycle, shares
from controlplane.project_states import ProjectStatus
from tests.conftest import ServerThread, free_port

PROPFIND_ALL = ('<?xml version="1.0" encoding="utf-8"?>'
                '<D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>')


@pytest.fixture
def shares_env(client, base_settings, tmp_path):
    """The API over HTTP with its shares in a fresh folder; its own host:port is the shares' base."""
    port = free_port()
    settings = base_settings.replace(shares_dir=str(tmp_path / "shares"), port=port)
    server = ServerThread(create_app(settings), port=port).start()
    try:
        yield settings, server
    finally:
        server.stop()


@pytest.fixture
def people(token):
    def bearer(user):
        return {"Authorization": "Bearer " + token(user, email=f"{user}@example.com", name=user)}
    return {"owner": bearer("user_owner"), "editor": bearer("user_editor"), "viewer": bearer("user_viewer"),
            "outsider": bearer("user_outsider"), "admin": {"Authorization": "Bearer " + token("user_admin", admin=True)}}


def new_project(server, headers, name="Shared") -> str:
    response = requests.post(f"{server.url}/api/projects", json={"name": name}, headers=headers, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()["project_id"]


def add_member(server, people, project_id, role):
    invited = requests.post(f"{server.url}/api/projects/{project_id}/collaborators", headers=people["owner"],
                            json={"email": f"user_{role}@example.com", "role": role}, timeout=10).json()
    accepted = requests.post(f"{server.url}/api/invitations/{invited['invitation_id']}/accept",
                             headers=people[role], timeout=10)
    assert accepted.status_code == 200, accepted.text


def add_viewer(server, people, project_id):
    add_member(server, people, project_id, "viewer")


def remove_member(server, people, project_id, user_id):
    removed = requests.delete(f"{server.url}/api/projects/{project_id}/collaborators/{user_id}",
                              headers=people["owner"], timeout=10)
    assert removed.status_code == 200, removed.text


def details(server, headers, project_id) -> dict:
    response = requests.get(f"{server.url}/api/projects/{project_id}", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def creds(server, people, project_id) -> tuple[str, tuple[str, str]]:
    folder = details(server, people["owner"], project_id)["shared_folder"]
    return folder["url"], (folder["username"], folder["password"])


def dav(method, url, **kw):
    return requests.request(method, url, timeout=10, **kw)


# ---- the folder and its credentials ------------------------------------------------------------------

def test_put_get_propfind_delete_with_the_projects_credentials(shares_env, people):
    settings, server = shares_env
    project_id = new_project(server, people["owner"])
    assert (settings.effective_shares_dir / project_id).is_dir()  # made when the project was created
    url, auth = creds(server, people, project_id)
    assert url == f"{server.url}/shares/{project_id}/"
    assert auth[0] == project_id

    put = dav("PUT", url + "notes.txt", data=b"hello from the team\n", auth=auth)
    assert put.status_code in (201, 204), put.text
    assert (settings.effective_shares_dir / project_id / "notes.txt").read_bytes() == b"hello from the team\n"
    got = dav("GET", url + "notes.txt", auth=auth)
    assert got.status_code == 200 and got.content == b"hello from the team\n"

    assert dav("MKCOL", url + "docs", auth=auth).status_code == 201
    listing = dav("PROPFIND", url, auth=auth, headers={"Depth": "1", "Content-Type": "application/xml"},
                  data=PROPFIND_ALL)
    assert listing.status_code == 207, listing.text
    hrefs = re.findall(r"<(?:\w+:)?href>([^<]+)</(?:\w+:)?href>", listing.text)
    assert f"/shares/{project_id}/notes.txt" in hrefs and f"/shares/{project_id}/docs/" in hrefs

    moved = dav("MOVE", url + "notes.txt", auth=auth, headers={"Destination": url + "docs/notes.txt"})
    assert moved.status_code in (201, 204), moved.text
    assert dav("GET", url + "docs/notes.txt", auth=auth).content == b"hello from the team\n"
    assert dav("DELETE", url + "docs/notes.txt", auth=auth).status_code == 204
    assert dav("GET", url + "docs/notes.txt", auth=auth).status_code == 404


def test_lock_then_write_with_the_token_then_unlock(shares_env, people):
    """What Windows' WebDAV client and office programs do around a save."""
    _, server = shares_env
    project_id = new_project(server, people["owner"])
    url, auth = creds(server, people, project_id)
    body = ('<?xml version="1.0" encoding="utf-8"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/>'
            '</D:lockscope><D:locktype><D:write/></D:locktype><D:owner>me</D:owner></D:lockinfo>')
    locked = dav("LOCK", url + "doc.docx", auth=auth, data=body,
                 headers={"Content-Type": "application/xml", "Timeout": "Second-60"})
    assert locked.status_code in (200, 201), locked.text
    token = locked.headers["Lock-Token"]
    assert dav("PUT", url + "doc.docx", data=b"v2", auth=auth).status_code == 423  # locked: token needed
    assert dav("PUT", url + "doc.docx", data=b"v2", auth=auth, headers={"If": f"({token})"}).status_code in (200, 204)
    assert dav("UNLOCK", url + "doc.docx", auth=auth, headers={"Lock-Token": token}).status_code == 204
    assert dav("GET", url + "doc.docx", auth=auth).content == b"v2"


def test_locks_are_shared_by_every_api_process(shares_env, people, redis_conn):
    """Two API processes (two apps, one Redis): a lock taken through one holds through the other."""
    settings, server = shares_env
    other = ServerThread(create_app(settings), port=free_port()).start()
    try:
        project_id = new_project(server, people["owner"])
        url, auth = creds(server, people, project_id)
        other_url = url.replace(server.url, other.url)
        body = ('<?xml version="1.0" encoding="utf-8"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/>'
                '</D:lockscope><D:locktype><D:write/></D:locktype><D:owner>me</D:owner></D:lockinfo>')
        locked = dav("LOCK", url + "shared.docx", auth=auth, data=body,
                     headers={"Content-Type": "application/xml", "Timeout": "Second-60"})
        assert locked.status_code in (200, 201), locked.text
        token = locked.headers["Lock-Token"]
        assert any(key.startswith(b"controlplane:shares:lock-") for key in redis_conn.scan_iter())
        assert dav("PUT", other_url + "shared.docx", data=b"x", auth=auth).status_code == 423
        assert dav("PUT", other_url + "shared.docx", data=b"v2", auth=auth,
                   headers={"If": f"({token})"}).status_code in (200, 204)
        assert dav("UNLOCK", other_url + "shared.docx", auth=auth, headers={"Lock-Token": token}).status_code == 204
        assert dav("PUT", url + "shared.docx", data=b"v3", auth=auth).status_code in (200, 204)
    finally:
        other.stop()


def test_a_chunked_upload(shares_env, people):
    settings, server = shares_env
    project_id = new_project(server, people["owner"])
    url, auth = creds(server, people, project_id)
    parts = [os.urandom(70_000) for _ in range(3)]
    put = dav("PUT", url + "big.bin", data=iter(parts), auth=auth)  # Transfer-Encoding: chunked
    assert put.status_code in (201, 204), put.text
    assert (settings.effective_shares_dir / project_id / "big.bin").read_bytes() == b"".join(parts)


def test_a_browser_gets_a_listing_once_authenticated(shares_env, people):
    _, server = shares_env
    project_id = new_project(server, people["owner"])
    url, auth = creds(server, people, project_id)
    dav("PUT", url + "report.pdf", data=b"%PDF-1.4", auth=auth)
    anonymous = dav("GET", url)
    assert anonymous.status_code == 401 and "report.pdf" not in anonymous.text
    page = dav("GET", url, auth=auth)
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"] and "report.pdf" in page.text
    # The page's own CSS/JS/icons (WsgiDAV's static files) are the only thing served anonymously.
    assets = re.findall(r'(?:href|src)="(/shares/:dir_browser/[^"]+)"', page.text)
    assert assets and all(dav("GET", server.url + a).status_code == 200 for a in assets)
    assert dav("PUT", f"{server.url}/shares/:dir_browser/x.css", data=b"x").status_code in (401, 403)
    assert dav("PROPFIND", f"{server.url}/shares/:dir_browser/", headers={"Depth": "1"}).status_code in (401, 403)
    # Without the trailing slash: redirected inside /shares (not to the API's root).
    bare = dav("GET", url.rstrip("/"), auth=auth, allow_redirects=False)
    assert bare.status_code == 301 and bare.headers["Location"] == f"/shares/{project_id}/"


def test_the_password_is_deterministic_per_project_and_secret(base_settings):
    a = shares.password(base_settings, "proj_0123456789abcdef")
    assert a == shares.password(base_settings, "proj_0123456789abcdef")
    # Each generation has its own password, and only the current one is accepted.
    a1, a2 = (shares.password(base_settings, "proj_0123456789abcdef", g) for g in (1, 2))
    assert len({a, a1, a2}) == 3
    assert shares.check(base_settings, "proj_0123456789abcdef", "proj_0123456789abcdef", a2, generation=2)
    assert not shares.check(base_settings, "proj_0123456789abcdef", "proj_0123456789abcdef", a1, generation=2)
    assert not shares.check(base_settings, "proj_0123456789abcdef", "proj_0123456789abcdef", a, generation=2)
    assert len(a) == shares.PASSWORD_LENGTH and re.fullmatch(r"[A-Za-z0-9_-]+", a)
    assert a != shares.password(base_settings, "proj_0123456789abcdee")
    assert a != shares.password(base_settings.replace(shares_secret="z" * 32), "proj_0123456789abcdef")
    assert shares.check(base_settings, "proj_0123456789abcdef", "proj_0123456789abcdef", a)
    assert not shares.check(base_settings, "proj_0123456789abcdef", "proj_0123456789abcdee", a)
    assert not shares.check(base_settings, "proj_0123456789abcdef", "proj_0123456789abcdef", a[:-1])
    assert not shares.check(base_settings, "proj_0123456789abcdef", "proj_0123456789abcdef", "pässword")


# ---- refusals -------------------------------------------------------------------------------------------

def test_no_credentials_and_a_wrong_password_are_refused(shares_env, people):
    _, server = shares_env
    project_id = new_project(server, people["owner"])
    url, (user, password) = creds(server, people, project_id)
    dav("PUT", url + "secret.txt", data=b"s", auth=(user, password))
    for method in ("GET", "PROPFIND", "PUT", "OPTIONS"):
        response = dav(method, url + "secret.txt")
        assert response.status_code == 401, method
        assert response.headers["WWW-Authenticate"].startswith("Basic realm=")  # no digest
    import base64
    for header in ("Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode(),
                   "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(), "Basic", "Digest username=x",
                   "Negotiate abc", "Bearer", "Basic\tx", "basic  Zm9v"):
        assert dav("GET", url + "secret.txt", headers={"Authorization": header}).status_code == 401, header
    for auth in ((user, "wrong-password"), (user, password[:-1]), (user, ""), ("someone", password)):
        assert dav("GET", url + "secret.txt", auth=auth).status_code == 401
        assert dav("PUT", url + "other.txt", data=b"x", auth=auth).status_code == 401


def test_another_projects_credentials_are_refused(shares_env, people):
    settings, server = shares_env
    mine = new_project(server, people["owner"], "mine")
    theirs = new_project(server, people["outsider"], "theirs")
    my_url, my_auth = creds(server, people, mine)
    dav("PUT", my_url + "plan.txt", data=b"ours", auth=my_auth)
    their_auth = (theirs, shares.password(settings, theirs))
    assert dav("GET", f"{server.url}/shares/{theirs}/", auth=their_auth).status_code == 200  # valid ... there
    assert dav("GET", my_url + "plan.txt", auth=their_auth).status_code == 401
    assert dav("PUT", my_url + "x.txt", data=b"x", auth=their_auth).status_code == 401
    assert dav("PROPFIND", my_url, auth=their_auth, headers={"Depth": "1"}).status_code == 401
    # My user name with their password, their user name with my password: no.
    assert dav("GET", my_url, auth=(mine, their_auth[1])).status_code == 401
    assert dav("GET", my_url, auth=(theirs, my_auth[1])).status_code == 401


def test_the_root_and_other_paths_are_refused(shares_env, people):
    _, server = shares_env
    project_id = new_project(server, people["owner"])
    _, auth = creds(server, people, project_id)
    root = f"{server.url}/shares/"
    for url in (root, f"{server.url}/shares", root + "proj_ffffffffffffffff/", root + "whatever/"):
        for who in (None, auth, (project_id, "nope")):
            response = dav("PROPFIND", url, auth=who, headers={"Depth": "1"})
            assert response.status_code in (401, 403), (url, who, response.status_code)
            assert project_id not in response.text
    assert dav("PUT", root + "top.txt", data=b"x", auth=auth).status_code in (401, 403)
    # A path that climbs out of the folder is normalized first: it names the other folder's realm.
    escaped = dav("GET", f"{server.url}/shares/{project_id}/../proj_ffffffffffffffff/", auth=auth)
    assert escaped.status_code in (400, 401, 403, 404)


def test_copy_and_move_cannot_leave_the_projects_folder(shares_env, people):
    settings, server = shares_env
    mine = new_project(server, people["owner"], "mine")
    theirs = new_project(server, people["outsider"], "theirs")
    url, auth = creds(server, people, mine)
    dav("PUT", url + "a.txt", data=b"a", auth=auth)
    for method in ("COPY", "MOVE"):
        for destination in (f"{server.url}/shares/{theirs}/a.txt", f"/shares/{theirs}/a.txt",
                            f"{server.url}/shares/{mine}/../{theirs}/a.txt", f"{server.url}/shares/a.txt",
                            f"{server.url}/elsewhere/a.txt"):
            response = dav(method, url + "a.txt", auth=auth, headers={"Destination": destination})
            # A Destination with a dot segment is refused before WsgiDAV (400), the others by the gate.
            expected = 400 if "/../" in destination else 403
            assert response.status_code == expected, (method, destination, response.status_code)
    assert not (settings.effective_shares_dir / theirs / "a.txt").exists()
    assert not (settings.effective_shares_dir / "a.txt").exists()
    assert dav("COPY", url + "a.txt", auth=auth, headers={"Destination": url + "b.txt"}).status_code == 201


# ---- bearer tokens of members --------------------------------------------------------------------------------

def test_members_may_use_their_own_bearer_token(shares_env, people, token):
    _, server = shares_env
    project_id = new_project(server, people["owner"])
    add_viewer(server, people, project_id)
    url = f"{server.url}/shares/{project_id}/"
    assert dav("PUT", url + "by-owner.txt", data=b"o", headers=people["owner"]).status_code == 201
    assert dav("GET", url + "by-owner.txt", headers=people["viewer"]).content == b"o"
    listing = dav("PROPFIND", url, headers={**people["viewer"], "Depth": "1"})
    assert listing.status_code == 207 and "by-owner.txt" in listing.text
    # Not a member (an admin neither): refused; a bad or expired token: 401.
    assert dav("GET", url + "by-owner.txt", headers=people["outsider"]).status_code == 403
    assert dav("GET", url + "by-owner.txt", headers=people["admin"]).status_code == 403
    assert dav("GET", url + "by-owner.txt", headers={"Authorization": "Bearer not-a-jwt"}).status_code == 401
    import datetime as dt
    expired = token("user_owner", ttl=dt.timedelta(seconds=-120))
    assert dav("GET", url, headers={"Authorization": f"Bearer {expired}"}).status_code == 401
    assert dav("GET", f"{server.url}/shares/", headers=people["owner"]).status_code == 403


def test_a_removed_member_loses_bearer_access(shares_env, people):
    _, server = shares_env
    project_id = new_project(server, people["owner"])
    add_viewer(server, people, project_id)
    url = f"{server.url}/shares/{project_id}/"
    assert dav("PROPFIND", url, headers={**people["viewer"], "Depth": "0"}).status_code == 207
    remove_member(server, people, project_id, "user_viewer")
    assert dav("PROPFIND", url, headers={**people["viewer"], "Depth": "0"}).status_code == 403


def test_viewers_read_and_cannot_write(shares_env, people):
    _, server = shares_env
    project_id = new_project(server, people["owner"])
    add_viewer(server, people, project_id)
    add_member(server, people, project_id, "editor")
    url = f"{server.url}/shares/{project_id}/"
    assert dav("PUT", url + "by-editor.txt", data=b"e", headers=people["editor"]).status_code == 201
    assert dav("MKCOL", url + "dir", headers=people["editor"]).status_code == 201
    viewer = people["viewer"]
    assert dav("GET", url + "by-editor.txt", headers=viewer).content == b"e"
    assert dav("HEAD", url + "by-editor.txt", headers=viewer).status_code == 200
    assert dav("PROPFIND", url, headers={**viewer, "Depth": "1"}).status_code == 207
    assert dav("OPTIONS", url, headers=viewer).status_code == 200
    refused = {
        "PUT": dav("PUT", url + "by-viewer.txt", data=b"v", headers=viewer),
        "PUT over": dav("PUT", url + "by-editor.txt", data=b"v", headers=viewer),
        "DELETE": dav("DELETE", url + "by-editor.txt", headers=viewer),
        "MKCOL": dav("MKCOL", url + "viewer-dir", headers=viewer),
        "COPY": dav("COPY", url + "by-editor.txt", headers={**viewer, "Destination": url + "copy.txt"}),
        "MOVE": dav("MOVE", url + "by-editor.txt", headers={**viewer, "Destination": url + "moved.txt"}),
        "PROPPATCH": dav("PROPPATCH", url + "by-editor.txt", headers=viewer, data=b"<x/>"),
        "LOCK": dav("LOCK", url + "by-editor.txt", headers=viewer, data=b""),
        "UNLOCK": dav("UNLOCK", url + "by-editor.txt", headers={**viewer, "Lock-Token": "<opaquelocktoken:x>"}),
    }
    assert {name: r.status_code for name, r in refused.items()} == {name: 403 for name in refused}
    assert dav("GET", url + "by-editor.txt", headers=people["owner"]).content == b"e"
    listing = dav("PROPFIND", url, headers={**people["owner"], "Depth": "1"}).text
    assert "by-viewer.txt" not in listing and "copy.txt" not in listing and "viewer-dir" not in listing


def test_removing_an_editor_rotates_the_password(shares_env, people):
    settings, server = shares_env
    project_id = new_project(server, people["owner"])
    add_member(server, people, project_id, "editor")
    add_viewer(server, people, project_id)
    url, old = creds(server, people, project_id)
    assert details(server, people["editor"], project_id)["shared_folder"]["password"] == old[1]
    assert dav("PUT", url + "before.txt", data=b"b", auth=old).status_code == 201

    # A viewer never had the password: removing one changes nothing.
    remove_member(server, people, project_id, "user_viewer")
    assert creds(server, people, project_id)[1] == old
    # The editor had it: a new password, the old one is refused, the files stay.
    remove_member(server, people, project_id, "user_editor")
    _, new = creds(server, people, project_id)
    assert new[0] == old[0] and new[1] != old[1]
    assert dav("GET", url + "before.txt", auth=old).status_code == 401
    assert dav("PUT", url + "after.txt", data=b"a", auth=old).status_code == 401
    assert dav("GET", url + "before.txt", auth=new).content == b"b"
    assert dav("PUT", url + "after.txt", data=b"a", auth=new).status_code == 201
    with db.connection_context():
        assert Project.get(Project.public_id == project_id).share_generation == 1
    # An editor who leaves by themselves rotates it too.
    add_member(server, people, project_id, "editor")
    left = requests.delete(f"{server.url}/api/projects/{project_id}/collaborators/user_editor",
                           headers=people["editor"], timeout=10)
    assert left.status_code == 200, left.text
    _, newer = creds(server, people, project_id)
    assert newer[1] not in (old[1], new[1])
    assert dav("GET", url + "before.txt", auth=new).status_code == 401
    assert dav("GET", url + "before.txt", auth=newer).status_code == 200


# ---- deleted projects --------------------------------------------------------------------------------------

def test_the_folder_goes_when_the_project_is_deleted(shares_env, people):
    settings, server = shares_env
    project_id = new_project(server, people["owner"])
    url, auth = creds(server, people, project_id)
    dav("MKCOL", url + "sub", auth=auth)
    dav("PUT", url + "sub/file.bin", data=os.urandom(1024), auth=auth)
    folder = settings.effective_shares_dir / project_id
    assert (folder / "sub" / "file.bin").is_file()
    with db.connection_context():
        project = Project.get(Project.public_id == project_id)
        Project.update(status=ProjectStatus.DELETING.value).where(Project.id == project.id).execute()
        # What the worker does when the delete playbook succeeded: mark it deleted, release it.
        assert lifecycle.set_status(project, ProjectStatus.DELETED, "Project deleted", "worker", settings=settings)
    assert not folder.exists()
    assert settings.effective_shares_dir.is_dir()  # only the project's folder went
    assert dav("GET", url, auth=auth).status_code == 401
    assert dav("PUT", url + "again.txt", data=b"x", auth=auth).status_code == 401
    assert dav("GET", url, headers=people["owner"]).status_code == 403
    assert not folder.exists()


def test_a_deleted_projects_folder_is_refused_even_if_still_on_disk(shares_env, people):
    settings, server = shares_env
    project_id = new_project(server, people["owner"])
    url, auth = creds(server, people, project_id)
    dav("PUT", url + "left.txt", data=b"left", auth=auth)
    with db.connection_context():
        Project.update(status=ProjectStatus.DELETED.value).where(Project.public_id == project_id).execute()
    assert (settings.effective_shares_dir / project_id / "left.txt").is_file()
    assert dav("GET", url + "left.txt", auth=auth).status_code == 401
    assert dav("PROPFIND", url, auth=auth, headers={"Depth": "1"}).status_code == 401


def test_removing_a_folder_stays_inside_shares_dir(base_settings, tmp_path):
    settings = base_settings.replace(shares_dir=str(tmp_path / "shares"))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    shares.ensure_root(settings)
    link = settings.effective_shares_dir / "proj_00000000000000aa"
    link.symlink_to(outside, target_is_directory=True)
    assert shares.remove_folder(settings, "proj_00000000000000aa")
    assert not link.exists() and (outside / "keep.txt").read_text() == "keep"
    for bad in ("..", "../outside", "", "/", "proj_../..", "PROJ_00", "proj_00/../.."):
        assert not shares.remove_folder(settings, bad)
    assert (outside / "keep.txt").exists() and settings.effective_shares_dir.is_dir()
    assert shares.remove_folder(settings, "proj_00000000000000bb")  # nothing there: nothing to do


# ---- what the API shows --------------------------------------------------------------------------------------

def test_the_api_shows_the_url_and_gives_members_the_credentials(shares_env, people):
    settings, server = shares_env
    project_id = new_project(server, people["owner"])
    add_viewer(server, people, project_id)
    expected_url = f"http://127.0.0.1:{settings.port}/shares/{project_id}/"
    listed = requests.get(f"{server.url}/api/projects", headers=people["viewer"], timeout=10).json()["projects"]
    assert [p["shared_folder_url"] for p in listed] == [expected_url]
    body = details(server, people["owner"], project_id)
    assert body["shared_folder_url"] == expected_url
    assert body["shared_folder"] == {"url": expected_url, "username": project_id, "access": "read-write",
                                     "password": shares.password(settings, project_id)}
    assert dav("GET", expected_url, auth=(project_id, body["shared_folder"]["password"])).status_code == 200
    # A viewer is not given the password: they read with their own token.
    viewed = details(server, people["viewer"], project_id)
    assert viewed["shared_folder_url"] == expected_url
    assert viewed["shared_folder"] == {"url": expected_url, "username": None, "password": None,
                                       "access": "read-only"}
    # Not a member: the project does not exist for them; an admin sees it, without the credentials.
    assert requests.get(f"{server.url}/api/projects/{project_id}", headers=people["outsider"],
                        timeout=10).status_code == 404
    assert details(server, people["admin"], project_id)["shared_folder"] is None


def test_the_public_url_setting_is_the_base(client, base_settings, people, tmp_path):
    settings = base_settings.replace(shares_dir=str(tmp_path / "s"), shares_public_url="https://files.example/dav/")
    app = create_app(settings)
    project_id = app.test_client().post("/api/projects", json={"name": "p"}, headers=people["owner"]).get_json()[
        "project_id"]
    body = app.test_client().get(f"/api/projects/{project_id}", headers=people["owner"]).get_json()
    assert body["shared_folder_url"] == f"https://files.example/dav/{project_id}/"


def test_without_a_secret_shares_are_disabled(client, base_settings, tmp_path):
    settings = base_settings.replace(jwt_secret="", jwt_public_key="-----BEGIN PUBLIC KEY-----",
                                     shares_dir=str(tmp_path / "none"))
    assert not shares.enabled(settings)
    assert shares.url(settings, "proj_0123456789abcdef") is None
    assert shares.credentials(settings, "proj_0123456789abcdef") is None
    app = create_app(settings)
    assert app.test_client().open("/shares/", method="PROPFIND").status_code == 404
    # The shares' own secret enables them under RS256 (Keycloak), where there is no JWT secret.
    assert shares.enabled(settings.replace(shares_secret="k" * 32))


def test_passwords_and_tokens_are_not_logged(shares_env, people, caplog):
    settings, server = shares_env
    caplog.set_level(logging.DEBUG)
    project_id = new_project(server, people["owner"])
    url, (user, password) = creds(server, people, project_id)
    dav("PUT", url + "f.txt", data=b"f", auth=(user, password))
    dav("GET", url + "f.txt", auth=(user, password + "x"))
    dav("GET", url + "f.txt", auth=(user, "guess-" + password[:8]))
    dav("GET", url + "f.txt", headers=people["viewer"])
    text = caplog.text
    assert "Authentication (basic) failed" in text  # WsgiDAV's warnings do reach our log
    assert password not in text and password[:8] not in text
    assert people["viewer"]["Authorization"].split()[1] not in text
