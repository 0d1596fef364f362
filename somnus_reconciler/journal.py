"""The journal: what each step did, in one SQLite file in the state directory.

The engine records one event per step (ok or failed, with its cause); `describe`
and `history` read them back. Each write is one transaction, so a crash never
leaves half a record.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    address TEXT NOT NULL,
    action TEXT NOT NULL,
    outcome TEXT NOT NULL,      -- ok | failed
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_address ON events (address, id);
"""


@dataclass(frozen=True)
class Event:
    at: float
    address: str
    action: str
    outcome: str
    message: str


class Journal:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._db = sqlite3.connect(path, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def record(self, address: str, action: str, outcome: str, message: str) -> None:
        with self._db:
            self._db.execute(
                "INSERT INTO events (at, address, action, outcome, message) VALUES (?, ?, ?, ?, ?)",
                (time.time(), address, action, outcome, message),
            )

    def recent(self, address: str | None = None, limit: int = 20) -> list[Event]:
        if address is None:
            rows = self._db.execute(
                "SELECT at, address, action, outcome, message FROM events ORDER BY id DESC LIMIT ?",
                (limit,),
            )
        else:
            rows = self._db.execute(
                "SELECT at, address, action, outcome, message FROM events WHERE address = ? "
                "ORDER BY id DESC LIMIT ?",
                (address, limit),
            )
        return [Event(*row) for row in rows]

    def close(self) -> None:
        self._db.close()
