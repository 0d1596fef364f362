"""Bearer-token authentication for every request.

The token lives in a file that only the agent's user may access; it is read at
start and on ``POST /config/reload``. :mod:`somnus_agent.server` calls
:meth:`TokenStore.verify` before it routes anything.
"""

from __future__ import annotations

import hmac
import os
import pathlib
import stat
import threading


class TokenFileError(Exception):
    """The token file is unreadable, empty or accessible to group/others."""


def read_token(path: pathlib.Path) -> str:
    """Return the token in ``path``, refusing files with any group/other permission."""
    try:
        mode = os.stat(path).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise TokenFileError(
                f"token file {path} has mode {stat.S_IMODE(mode):04o}; it must not be "
                f"accessible to group or others (chmod 600 {path})"
            )
        token = path.read_text(encoding="utf-8").strip()
    except OSError as e:
        raise TokenFileError(f"cannot read token file {path}: {e.strerror}") from e
    if not token:
        raise TokenFileError(f"token file {path} is empty")
    return token


class TokenStore:
    """Holds the current token; swapped atomically on reload."""

    def __init__(self, path: pathlib.Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._token = read_token(path).encode("utf-8")

    @property
    def path(self) -> pathlib.Path:
        return self._path

    def reload(self) -> None:
        """Re-read the token file; on error the previous token stays in force."""
        token = read_token(self._path).encode("utf-8")
        with self._lock:
            self._token = token

    def verify(self, authorization: str | None) -> bool:
        """True when the header is ``Bearer <current token>``."""
        if not authorization:
            return False
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != "bearer" or not presented:
            return False
        with self._lock:
            expected = self._token
        return hmac.compare_digest(presented.strip().encode("utf-8"), expected)
