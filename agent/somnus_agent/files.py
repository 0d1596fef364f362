"""Secret files written for the host (``POST /files``): atomically, with mode and owner.

The host sends each file's content (base64) with its mode and owner; every file is
written to a temporary file in its own directory (made 0755 when missing), given its
mode and owner, synced and renamed over the old one, so a reader sees the old file
or the new one, never half of either. What the host gets back is each file's SHA-256,
mode and owner as written (its verify); neither a content nor a path is logged.
"""

from __future__ import annotations

import base64
import binascii
import grp
import hashlib
import os
import pwd
import tempfile
from typing import Any


class FileError(Exception):
    """A file could not be written or removed; the message names the path, never the content."""


def _owner_ids(owner: str) -> tuple[int, int]:
    user, _, group = owner.partition(":")
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise FileError(f"no user {user!r} in the guest") from None
    if not group:
        return entry.pw_uid, entry.pw_gid
    try:
        return entry.pw_uid, grp.getgrnam(group).gr_gid
    except KeyError:
        raise FileError(f"no group {group!r} in the guest") from None


def write(path: str, content: bytes, mode: int, owner: str) -> dict[str, Any]:
    """Replace `path` by `content` with `mode` and `owner`; what was written."""
    if not os.path.isabs(path) or not 0 <= mode <= 0o7777:
        raise FileError(f"{path!r}: an absolute path and a mode in 0..7777 are needed")
    uid, gid = _owner_ids(owner)
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=".somnus-", dir=directory)
    except OSError as e:
        raise FileError(f"{path}: {e.strerror or e}") from None
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except OSError as e:
        os.unlink(temporary)
        raise FileError(f"{path}: {e.strerror or e}") from None
    return written(path)


def written(path: str) -> dict[str, Any]:
    """What is at `path` now: its SHA-256, mode and owner."""
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    st = os.stat(path)
    return {"path": path, "sha256": digest, "mode": st.st_mode & 0o7777, "uid": st.st_uid, "gid": st.st_gid}


def remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise FileError(f"{path}: {e.strerror or e}") from None


def apply(body: dict[str, Any]) -> dict[str, Any]:
    """``{"write": [{path, content (base64), mode, owner}], "remove": [path]}``, in that order."""
    writes, removes = body.get("write", []), body.get("remove", [])
    if not (isinstance(writes, list) and isinstance(removes, list) and all(isinstance(p, str) for p in removes)):
        raise FileError("write must be a list of files and remove a list of paths")
    done = []
    for entry in writes:
        if not (isinstance(entry, dict) and isinstance(entry.get("path"), str) and isinstance(entry.get("mode"), int)
                and isinstance(entry.get("owner"), str) and isinstance(entry.get("content"), str)):
            raise FileError("each file needs path, content, mode and owner")
        try:
            content = base64.b64decode(entry["content"], validate=True)
        except (binascii.Error, ValueError):
            raise FileError(f"{entry['path']}: content is not base64") from None
        done.append(write(entry["path"], content, entry["mode"], entry["owner"]))
    for path in removes:
        remove(path)
    return {"written": done, "removed": removes}
