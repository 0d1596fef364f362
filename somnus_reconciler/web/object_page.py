"""One object's page beyond its overview row: its snapshots and its events, and the
rollback its buttons ask for (`passes.rollback`, under the apply lock, recorded)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from somnus_reconciler.journal import Event, Journal
from somnus_reconciler.passes import rollback
from somnus_reconciler.providers.protocols import ProviderError
from somnus_reconciler.settings import Settings
from somnus_reconciler.values.actual import Snapshot
from somnus_reconciler.values.diagnostics import InvalidInput
from somnus_reconciler.web.overview import Row

EVENTS_SHOWN = 50


@dataclass(frozen=True)
class Details:
    snapshots: tuple[Snapshot, ...]  # newest first
    events: tuple[Event, ...]  # newest first
    problem: str = ""  # why the snapshots could not be listed


@dataclass(frozen=True)
class Said:
    ok: bool
    message: str


def details(row: Row, settings: Settings) -> Details:
    with Journal(settings.journal_path) as journal:
        events = tuple(journal.recent(row.address, limit=EVENTS_SHOWN))
    if row.state == "absent":
        return Details((), events)
    try:
        listing = rollback.snapshots(rollback.Guest(row.kind, row.name), state_dir=str(settings.state_dir))
    except ProviderError as e:
        return Details((), events, str(e))
    return Details(tuple(reversed(listing.snapshots)), events)


def roll_back(kind: str, name: str, snapshot: str, paths: Sequence[Path], settings: Settings) -> Said:
    """`somnus rollback KIND/NAME SNAPSHOT -f PATHS`, its refusals said, not raised."""
    try:
        done = rollback.rollback(rollback.Guest(kind, name), snapshot, paths, state_dir=str(settings.state_dir),
                                 on_lock_wait=lambda message: None)
    except InvalidInput as e:
        return Said(False, "; ".join(str(d) for d in e.diagnostics))
    except (ProviderError, rollback.RollbackRefused) as e:
        return Said(False, str(e))
    return Said(True, f"{done.guest.address} reverted to {done.snapshot} at {time.strftime('%H:%M:%S')}")
