"""One object's page beyond its overview row: its declaration as written, its snapshots,
backups and events, and the
rollback and restore its buttons ask for (`passes.rollback`, `passes.backup_commands`:
under the apply lock, recorded; a restore backs the guest up as it is first)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from somnus_reconciler.engine.backups import BackupRecord
from somnus_reconciler.engine.container_backups import ContainerBackupRecord
from somnus_reconciler.journal import Event, Journal
from somnus_reconciler.manifests import guarded_yaml
from somnus_reconciler.passes import backup_commands, rollback
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
    backups: tuple[BackupRecord | ContainerBackupRecord, ...] = ()  # newest first
    declared: str = ""  # its YAML document, as the manifest file has it
    problem: str = ""  # why the snapshots could not be listed


@dataclass(frozen=True)
class Said:
    ok: bool
    message: str


def details(row: Row, settings: Settings) -> Details:
    with Journal(settings.journal_path) as journal:
        events = tuple(journal.recent(row.address, limit=EVENTS_SHOWN))
    backups = tuple(reversed(backup_commands.listing(row.kind, row.name, state_dir=str(settings.state_dir))))
    declared = declaration(row.source) if row.source else ""
    if row.state == "absent":
        return Details((), events, backups, declared)
    try:
        listing = rollback.snapshots(rollback.Guest(row.kind, row.name), state_dir=str(settings.state_dir))
    except ProviderError as e:
        return Details((), events, backups, declared, str(e))
    return Details(tuple(reversed(listing.snapshots)), events, backups, declared)


def declaration(source: str) -> str:
    """The YAML document that starts at `source` (FILE:LINE), between its `---` lines;
    "" when the file cannot be read now (the overview says why)."""
    file, _, line = source.rpartition(":")
    text = guarded_yaml.read_text(Path(file))
    if not isinstance(text, str) or not line.isdigit():
        return ""
    lines = text.splitlines()
    at = min(int(line) - 1, len(lines) - 1)
    start = next((i + 1 for i in range(at, -1, -1) if lines[i].startswith("---")), 0)
    end = next((i for i in range(at + 1, len(lines)) if lines[i].startswith("---")), len(lines))
    return "\n".join(lines[start:end]).strip("\n")


Revert = Callable[[str, str, str, Sequence[Path], Settings], Said]  # kind, name, to what, manifests


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


def restore(kind: str, name: str, backup: str, paths: Sequence[Path], settings: Settings) -> Said:
    """`somnus restore KIND/NAME BACKUP -f PATHS`, its refusals said, not raised."""
    state_dir = str(settings.state_dir)
    before: BackupRecord | ContainerBackupRecord | None
    try:
        if kind == "container":
            before = backup_commands.restore_container(name, backup, paths, state_dir=state_dir).before
        else:
            before = backup_commands.restore(name, backup, state_dir=state_dir).before
    except InvalidInput as e:
        return Said(False, "; ".join(str(d) for d in e.diagnostics))
    except (ProviderError, backup_commands.BackupRefused) as e:
        return Said(False, str(e))
    kept = f"; as it was: backup {before.name}" if before is not None else ""
    return Said(True, f"{kind}/{name} restored from {backup} at {time.strftime('%H:%M:%S')}{kept}")
