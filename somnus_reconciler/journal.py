"""The journal: what each step did, in one SQLite file in the state directory.

Opened with `with Journal(path) as journal:` by `passes` (converge, gitops,
status), `providers.backends`, the history index and the CLI; the engine writes
to the one it is given. Every write is one transaction, so a crash never
leaves half a record. Tables:
- `events`: one line per finished step, drift found, soft reboot or rollback by
  hand, with its `Outcome` (values/outcome.py), read by `describe`, `get` and
  `history`;
- `steps`: a guest-changing step from its start to its end, with the snapshot
  taken before it. A step still open when a process starts again was interrupted:
  `Engine.recover` (run by `passes.converge` before each pass) rolls it back first;
- `container_packs`: packs applied to each container with their fingerprints.
  A container's labels cannot change after creation, so this is the part of its
  ownership mark that lives here, tied to the container's ID;
- `applied`: the declaration (and gitops revision) last applied to each object;
- `revisions`: gitops revisions found good or quarantined;
- `triage_cache`: triage categories of failure texts already classified.

`ApplyLock` keeps applies to one at a time per state directory.
"""

from __future__ import annotations

import fcntl
import functools
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Concatenate, ParamSpec, TypeVar

from somnus_reconciler.values.outcome import Outcome

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    address TEXT NOT NULL,
    action TEXT NOT NULL,
    outcome TEXT NOT NULL,      -- an Outcome: ok | failed | rolled back | retrying | ...
    message TEXT NOT NULL,
    category TEXT               -- failures: the triage category (NETWORK_FAILURE, ...)
);
CREATE INDEX IF NOT EXISTS events_by_address ON events (address, id);
CREATE TABLE IF NOT EXISTS steps (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at REAL NOT NULL,
    address TEXT NOT NULL,
    step TEXT NOT NULL,         -- e.g. "pack web-development"
    snapshot TEXT,              -- libvirt snapshot name or committed image ID
    state TEXT NOT NULL,        -- open, then done (Outcome.OK) | rolled back | failed
    phase TEXT NOT NULL DEFAULT 'started',  -- started | snapshot taken | acted
    pid INTEGER NOT NULL,
    detail TEXT NOT NULL DEFAULT ''   -- what is needed to roll back (JSON)
);
CREATE TABLE IF NOT EXISTS container_packs (
    name TEXT NOT NULL,
    container_id TEXT NOT NULL,
    pack TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    PRIMARY KEY (name, pack)
);
CREATE TABLE IF NOT EXISTS applied (
    address TEXT PRIMARY KEY,
    spec_hash TEXT NOT NULL,       -- of the declaration last applied to it
    revision TEXT,                 -- the git revision it came from (gitops), else NULL
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS revisions (
    source TEXT NOT NULL,          -- a gitops source: URL, branch and path
    revision TEXT NOT NULL,
    state TEXT NOT NULL,           -- good | quarantined
    reason TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (source, revision)
);
CREATE TABLE IF NOT EXISTS triage_cache (
    text_sha256 TEXT PRIMARY KEY,  -- of a failure text, e.g. an error line in a guest log
    category TEXT NOT NULL,
    score REAL NOT NULL
);
"""
_STEP_DONE = "done"  # `steps.state` of a step that ended well
# Columns added after the first release: (table, column, definition).
_ADDED_COLUMNS = (
    ("steps", "phase", "TEXT NOT NULL DEFAULT 'started'"),
    ("events", "category", "TEXT"),
    ("events", "started_at", "REAL"),  # a step's start: steps of different objects overlap
)


@dataclass(frozen=True)
class Event:
    """One row of `events`: what `describe` shows, `somnus history` lists and its index holds."""

    id: int
    at: float
    address: str
    action: str
    # A word this version does not know (a journal written by a newer somnus, or by
    # hand) stays the plain string: shown and filtered as written, never a crash.
    outcome: Outcome | str
    message: str
    category: str | None = None
    started_at: float | None = None  # a step's start (its end is `at`); None for other events

    @classmethod
    def from_row(cls, id: int, at: float, address: str, action: str, outcome: str, message: str,
                 category: str | None, started_at: float | None) -> Event:
        return cls(id, at, address, action, read_outcome(outcome), message, category, started_at)


def read_outcome(word: str) -> Outcome | str:
    """The Outcome a stored word names; an unknown word as it is (see `Event.outcome`)."""
    try:
        return Outcome(word)
    except ValueError:
        return word


@dataclass(frozen=True)
class OpenStep:
    id: int
    address: str
    step: str
    snapshot: str | None
    pid: int
    detail: str


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _serialized(method: Callable[Concatenate[Journal, _P], _R]) -> Callable[Concatenate[Journal, _P], _R]:
    """The journal method runs holding the journal's lock (its statements are not
    interleaved with another thread's)."""
    @functools.wraps(method)
    def locked(self: Journal, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self._lock:
            return method(self, *args, **kwargs)

    return locked


# A container's secret files are recorded beside its packs, as "file:<path>": no pack name
# holds a ":", so the two never meet, and both follow the container to a new ID alike.
FILE_RECORD = "file:"
ContainerRecords = dict[str, tuple[str, tuple[tuple[str, str], ...]]]  # name -> (container ID, records)


@dataclass(frozen=True)
class RevisionRecord:
    """One row of `revisions`: what gitops made of a revision of a source."""

    source: str
    revision: str
    state: str  # good | quarantined
    reason: str
    at: float


class Journal:
    """The open journal: `with Journal(path) as journal:` closes it on the way out."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # The engine's steps of different objects run in threads and share this one
        # connection: `_serialized` lets one method at a time use it.
        self._db = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        for table, column, definition in _ADDED_COLUMNS:  # a journal written before them
            if column not in {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- events -------------------------------------------------------------------
    @_serialized
    def record(self, address: str, action: str, outcome: Outcome, message: str,
               category: str | None = None, *, started_at: float | None = None) -> None:
        """One event, its outcome stored as its word; a step's with when it started."""
        with self._db:
            self._db.execute(
                "INSERT INTO events (at, address, action, outcome, message, category, started_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (time.time(), address, action, outcome.value, message, category, started_at),
            )

    @_serialized
    def recent(self, address: str | None = None, limit: int = 20, *, action: str | None = None) -> list[Event]:
        """Newest first; optionally only one object's events, or one action's."""
        where = [(clause, value) for clause, value in (("address = ?", address), ("action = ?", action))
                 if value is not None]
        query = "SELECT id, at, address, action, outcome, message, category, started_at FROM events"
        if where:
            query += " WHERE " + " AND ".join(clause for clause, _ in where)
        rows = self._db.execute(query + " ORDER BY id DESC LIMIT ?", (*[v for _, v in where], limit))
        return [Event.from_row(*row) for row in rows]

    @_serialized
    def history(self, *, address: str | None = None, since: float | None = None,
                outcome: Outcome | str | None = None, after_id: int = 0,
                limit: int | None = None) -> list[Event]:
        """Events oldest first: of one object, at or after `since` (unix time), with one
        outcome (its word: `history --outcome` passes what it is given), with an id above
        `after_id`; with `limit`, the newest `limit` of them."""
        where = [(clause, value) for clause, value in (
            ("address = ?", address), ("at >= ?", since), ("outcome = ?", outcome), ("id > ?", after_id),
        ) if value is not None]
        query = ("SELECT id, at, address, action, outcome, message, category, started_at FROM events WHERE "
                 + " AND ".join(clause for clause, _ in where))
        parameters = [value for _, value in where]
        if limit is None:
            rows = list(self._db.execute(query + " ORDER BY id", parameters))
        else:
            rows = list(self._db.execute(query + " ORDER BY id DESC LIMIT ?", (*parameters, limit)))[::-1]
        return [Event.from_row(*row) for row in rows]

    # -- triage cache ---------------------------------------------------------------
    @_serialized
    def cached_triage(self, text_sha256: str) -> tuple[str, float] | None:
        row = self._db.execute("SELECT category, score FROM triage_cache WHERE text_sha256 = ?",
                               (text_sha256,)).fetchone()
        return (row[0], row[1]) if row else None

    @_serialized
    def cache_triage(self, text_sha256: str, category: str, score: float) -> None:
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO triage_cache VALUES (?, ?, ?)",
                             (text_sha256, category, score))

    # -- steps --------------------------------------------------------------------
    @_serialized
    def open_step(self, address: str, step: str, snapshot: str | None, detail: str = "") -> int:
        with self._db:
            cursor = self._db.execute(
                "INSERT INTO steps (started_at, address, step, snapshot, state, pid, detail) "
                "VALUES (?, ?, ?, ?, 'open', ?, ?)",
                (time.time(), address, step, snapshot, os.getpid(), detail),
            )
        return int(cursor.lastrowid or 0)

    @_serialized
    def close_step(self, step_id: int, outcome: Outcome) -> None:
        """The step ended: stored as "done" for Outcome.OK (this table's word since the first
        release), else as the Outcome's word (rolled back, failed)."""
        state = _STEP_DONE if outcome is Outcome.OK else outcome.value
        with self._db:
            self._db.execute("UPDATE steps SET state = ? WHERE id = ?", (state, step_id))

    @_serialized
    def step_phase(self, step_id: int, phase: str) -> None:
        with self._db:
            self._db.execute("UPDATE steps SET phase = ? WHERE id = ?", (phase, step_id))

    @_serialized
    def open_steps(self) -> list[OpenStep]:
        rows = self._db.execute(
            "SELECT id, address, step, snapshot, pid, detail FROM steps WHERE state = 'open' ORDER BY id"
        )
        return [OpenStep(*row) for row in rows]

    # -- container packs ----------------------------------------------------------
    @_serialized
    def container_packs(self, *, files: bool = False) -> dict[str, tuple[str, tuple[tuple[str, str], ...]]]:
        """name -> (container ID, ((pack, fingerprint), ...)) for every container; with
        `files`, its secret files instead: ((path, keyed digest), ...)."""
        return self.container_records()[1 if files else 0]

    @_serialized
    def container_records(self) -> tuple[ContainerRecords, ContainerRecords]:
        """(packs, secret files) of every container, as `container_packs` gives each, in one read."""
        found: tuple[dict[str, tuple[str, list[tuple[str, str]]]], ...] = ({}, {})
        for name, container_id, pack, fingerprint in self._db.execute(
            "SELECT name, container_id, pack, fingerprint FROM container_packs ORDER BY name, rowid"
        ):
            kind = found[1] if pack.startswith(FILE_RECORD) else found[0]
            kind.setdefault(name, (container_id, []))[1].append((pack.removeprefix(FILE_RECORD), fingerprint))
        packs, files = ({name: (cid, tuple(rows)) for name, (cid, rows) in kind.items()} for kind in found)
        return packs, files

    @_serialized
    def set_container_file(self, name: str, container_id: str, path: str, digest: str | None) -> None:
        """Record (or with digest None, forget) one secret file written into one container."""
        self.set_container_pack(name, container_id, FILE_RECORD + path, digest)

    @_serialized
    def set_container_pack(self, name: str, container_id: str, pack: str, fingerprint: str | None) -> None:
        """Record (or with fingerprint None, forget) one pack of one container. Records of
        an earlier container of that name (gone: names are unique) are forgotten."""
        with self._db:
            self._db.execute("DELETE FROM container_packs WHERE name = ? AND container_id != ?", (name, container_id))
            if fingerprint is None:
                self._db.execute("DELETE FROM container_packs WHERE name = ? AND pack = ?", (name, pack))
            else:
                self._db.execute(
                    "INSERT OR REPLACE INTO container_packs (name, container_id, pack, fingerprint) "
                    "VALUES (?, ?, ?, ?)", (name, container_id, pack, fingerprint),
                )

    @_serialized
    def move_container_packs(self, name: str, replaced_id: str | None, container_id: str | None) -> None:
        """Container `replaced_id` was made anew as `container_id` from its own snapshot: its
        records move along; those of any other container of that name are forgotten.
        Either ID None (nothing was there to replace, or it was made from scratch): all are forgotten."""
        with self._db:
            if replaced_id is None or container_id is None:
                self._db.execute("DELETE FROM container_packs WHERE name = ?", (name,))
                return
            self._db.execute("DELETE FROM container_packs WHERE name = ? AND container_id != ?", (name, replaced_id))
            self._db.execute("UPDATE container_packs SET container_id = ? WHERE name = ?", (container_id, name))

    # -- applied declarations and revisions ---------------------------------------
    @_serialized
    def set_applied(self, address: str, spec_hash: str, revision: str | None) -> None:
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO applied VALUES (?, ?, ?, ?)",
                             (address, spec_hash, revision, time.time()))

    @_serialized
    def forget_applied(self, address: str) -> None:
        with self._db:
            self._db.execute("DELETE FROM applied WHERE address = ?", (address,))

    @_serialized
    def applied(self) -> dict[str, tuple[str, str | None]]:
        """address -> (spec hash, revision) of what was last applied to it."""
        return {row[0]: (row[1], row[2]) for row in
                self._db.execute("SELECT address, spec_hash, revision FROM applied")}

    @_serialized
    def mark_revision(self, source: str, revision: str, state: str, reason: str) -> None:
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO revisions VALUES (?, ?, ?, ?, ?)",
                             (source, revision, state, reason, time.time()))

    @_serialized
    def revisions(self, source: str | None = None) -> list[RevisionRecord]:
        """gitops revisions, good or quarantined, newest first: one source's, or all."""
        where, values = (" WHERE source = ?", (source,)) if source else ("", ())
        return [RevisionRecord(*row) for row in self._db.execute(
            f"SELECT source, revision, state, reason, at FROM revisions{where} ORDER BY at DESC, rowid DESC", values)]

    @_serialized
    def close(self) -> None:
        self._db.close()


class ApplyLock:
    """One apply at a time per state directory; a second one waits and says for whom. The
    file holds the holder's pid, then "released <time>" (`previous_release` reads it)."""

    def __init__(self, state_dir: Path, on_wait: Callable[[str], None] = lambda message: None) -> None:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._path = state_dir / "apply.lock"
        self._on_wait = on_wait
        self._fd: int | None = None
        self.waited = False  # another process held it when this one came
        # When the holder before let go (0: none ever held it); None: it was killed holding it.
        self.previous_release: float | None = 0.0

    def __enter__(self) -> ApplyLock:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            self._on_wait(f"waiting for the apply lock on {self._path.parent} (held by pid {holder})")
            fcntl.flock(fd, fcntl.LOCK_EX)
            self.waited = True
        left = os.pread(fd, 64, 0).decode(errors="replace").split()  # [], [pid] or ["released", time]
        self.previous_release = float(left[1]) if left[:1] == ["released"] else None if left else 0.0
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"released {time.time()}".encode(), 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

