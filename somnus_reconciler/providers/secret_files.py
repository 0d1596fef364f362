"""Files of the host's secrets: written once with mode 0600, public halves 0644.

`guest_access` (a VM's SSH key and agent token) and `guest_identity` (its host key
and agent certificate) write through these, under `state_dir/keys/<vm>/` (0700).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def publish_secret(path: Path, data: bytes) -> None:
    """Write `data` to `path` with mode 0600 unless it exists.

    Concurrent first calls agree on one secret: it is published with link(2),
    which never replaces an existing file.
    """
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        os.unlink(temporary)


def write_public(path: Path, content: str) -> None:
    """`content` at `path`, mode 0644, replaced atomically when it differs."""
    with contextlib.suppress(OSError):
        if path.read_text() == content:
            return
    fd, temporary = tempfile.mkstemp(prefix=".pub.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(content)
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)
