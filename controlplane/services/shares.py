"""Project shared folders: where they live, their URL, their credentials.

Each project has one folder, `<shares_dir>/<project public id>/`, served over HTTP/WebDAV by the
API itself (WsgiDAV mounted at /shares, controlplane/api/shares.py) at
`<effective_shares_url>/<project public id>/`.

Credentials are per project and nothing secret is stored: the user name is the project's public
id, the password an HMAC-SHA256 of it and of the project's share generation under the server's
share secret (CONTROLPLANE_SHARES_SECRET, else CONTROLPLANE_JWT_SECRET). Removing a collaborator
who was given the password bumps the generation: a new password, the old one stops working.
Without either secret, shares are disabled.

Who gets what (the permission table, services.projects): editors and owners get the password
(read-write, also what a project VM mounts the folder with); viewers get only the URL and use
their own bearer token, which lets them read and not write.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import Settings

log = logging.getLogger(__name__)

#: What a project's public id looks like (models.projects.public_id): the only names a share
#: folder can have, so that a folder path is always a direct child of shares_dir.
PROJECT_ID = re.compile(r"proj_[0-9a-f]{1,32}")

PASSWORD_LENGTH = 24  # characters of url-safe base64: 144 bits
#: Where uploads are written before they replace their file (services.shares.partial_file): a
#: folder of shares_dir that is not a project's (never served), on the same file system.
UPLOADS = ".uploads"
#: An upload's file not written to for this long belongs to a process that died: removed.
STALE_UPLOAD_SECONDS = 3600
_CONTEXT = b"controlplane project share v1\0"


@dataclass(frozen=True)
class Credentials:
    url: str
    username: str | None  # None: no password for this member (a viewer): the bearer token, read-only
    password: str | None
    access: str  # "read-write" or "read-only"


def enabled(settings: Settings) -> bool:
    return bool(settings.effective_shares_secret)


def is_project_id(value: str) -> bool:
    return bool(PROJECT_ID.fullmatch(value or ""))


def password(settings: Settings, project_id: str, generation: int = 0) -> str:
    """The share password of a project in a generation (deterministic; derived, never stored)."""
    secret = settings.effective_shares_secret
    if not secret:
        raise RuntimeError("shares are disabled: no CONTROLPLANE_SHARES_SECRET or CONTROLPLANE_JWT_SECRET")
    message = _CONTEXT + project_id.encode()
    if generation:
        message += b"\0" + str(int(generation)).encode()
    digest = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii")[:PASSWORD_LENGTH]


def check(settings: Settings, project_id: str, username: str, given_password: str, generation: int = 0) -> bool:
    """Whether username/password are the credentials of the project's share in its current
    generation (constant time)."""
    if not enabled(settings) or not is_project_id(project_id):
        return False
    same_user = hmac.compare_digest(username.encode("utf-8", "surrogateescape"), project_id.encode())
    same_password = hmac.compare_digest(given_password.encode("utf-8", "surrogateescape"),
                                        password(settings, project_id, generation).encode())
    return same_user and same_password


def url(settings: Settings, project_id: str) -> str | None:
    """The project's `shared_folder_url`, or None when shares are disabled."""
    if not enabled(settings):
        return None
    return f"{settings.effective_shares_url}/{project_id}/"


def credentials(settings: Settings, project_id: str, generation: int = 0, writer: bool = True) -> Credentials | None:
    """What a member is given: the password for writers, only the URL for readers."""
    if not enabled(settings):
        return None
    if not writer:
        return Credentials(url=url(settings, project_id), username=None, password=None, access="read-only")
    return Credentials(url=url(settings, project_id), username=project_id,
                       password=password(settings, project_id, generation), access="read-write")


def folder(settings: Settings, project_id: str) -> Path:
    if not is_project_id(project_id):
        raise ValueError(f"not a project id: {project_id!r}")
    return settings.effective_shares_dir / project_id


def ensure_root(settings: Settings) -> Path:
    root = settings.effective_shares_dir
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    return root


def create_folder(settings: Settings, project_id: str) -> bool:
    """Make the project's folder (best effort: a failure is logged, the project goes on)."""
    try:
        ensure_root(settings)
        folder(settings, project_id).mkdir(mode=0o700, exist_ok=True)
        return True
    except OSError as exc:
        log.error("could not create the shared folder of project %s: %s", project_id, exc)
        return False


def uploads_dir(settings: Settings) -> Path:
    return settings.effective_shares_dir / UPLOADS


def partial_file(settings: Settings, project_id: str) -> tuple[int, Path]:
    """A new, empty file (an open descriptor and its path) for an upload into the project's
    folder: written there, then renamed over its target once complete (an upload cut off or
    refused leaves the previous content as it was)."""
    import tempfile
    if not is_project_id(project_id):
        raise ValueError(f"not a project id: {project_id!r}")
    directory = uploads_dir(settings)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix=f"{project_id}.", dir=directory)
    return fd, Path(path)


def _partials(settings: Settings, project_id: str):
    try:
        with os.scandir(uploads_dir(settings)) as entries:
            yield from (e for e in entries if e.name.startswith(project_id + ".")
                        and e.is_file(follow_symlinks=False))
    except FileNotFoundError:
        return


def usage(settings: Settings, project_id: str, exclude: Path | None = None) -> int:
    """Bytes the project's folder holds: its files (symlinks not followed) and the uploads into it
    still being written (but `exclude`). Stale uploads (a dead process's) are removed instead."""
    total = 0
    pending = [folder(settings, project_id)]
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            pending.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:  # gone meanwhile
                        continue
        except (FileNotFoundError, NotADirectoryError):
            continue
    now = time.time()
    for entry in _partials(settings, project_id):
        if exclude is not None and entry.path == str(exclude):
            continue
        try:
            stat = entry.stat(follow_symlinks=False)
            if now - stat.st_mtime > STALE_UPLOAD_SECONDS:
                os.unlink(entry.path)
            else:
                total += stat.st_size
        except OSError:
            continue
    return total


def remove_folder(settings: Settings, project_id: str) -> bool:
    """Remove the project's folder and everything in it, only ever inside shares_dir.

    Returns True when nothing is left. A failure is logged (the share is refused anyway once the
    project is deleted), not raised."""
    try:
        path = folder(settings, project_id)
    except ValueError:
        log.error("refusing to remove a shared folder for %r: not a project id", project_id)
        return False
    for partial in _partials(settings, project_id):  # uploads into it cut off by a dead process
        try:
            os.unlink(partial.path)
        except OSError:
            pass
    try:
        if path.is_symlink():  # never follow it out of shares_dir
            path.unlink()
            return True
        if not path.exists():
            return True
        root = settings.effective_shares_dir.resolve()
        if path.resolve().parent != root:
            log.error("refusing to remove %s: not inside %s", path, root)
            return False
        shutil.rmtree(path)  # does not follow symlinks inside (fd-based on Linux)
        return True
    except OSError as exc:
        log.error("could not remove the shared folder of project %s: %s", project_id, exc)
        return False
