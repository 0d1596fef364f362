"""VM backups as `somnus backup`, `backups` and `restore` show them: text, or JSON
(`backups -o json`: `{"items": [...]}` like `get`, documented in docs/output.md)."""

from __future__ import annotations

import datetime
from collections.abc import Sequence

from somnus_reconciler.cli import views
from somnus_reconciler.cli.views import JsonValue
from somnus_reconciler.engine.backups import BackupRecord
from somnus_reconciler.passes.backup_commands import Restored
from somnus_reconciler.values.quantity import format_bytes_rounded

BACKUP_COLUMNS = ("VM", "BACKUP", "LEVEL", "SIZE", "TAKEN", "REASON")


def _taken(record: BackupRecord) -> str:
    return datetime.datetime.fromtimestamp(record.at).strftime("%Y-%m-%d %H:%M:%S")


def backup_json(record: BackupRecord) -> dict[str, JsonValue]:
    return {
        "vm": record.vm, "name": record.name, "level": record.level, "chain": record.chain,
        "parent": record.parent, "checkpoint": record.checkpoint, "at": record.at,
        "specHash": record.spec_hash, "running": record.running, "size": record.size,
        "sha256": record.sha256, "reason": record.reason,
    }


class BackupsHuman(views.View):
    def backups(self, found: Sequence[BackupRecord]) -> None:
        rows = [BACKUP_COLUMNS] + [(r.vm, r.name, r.level, format_bytes_rounded(r.size), _taken(r), r.reason)
                                   for r in found]
        widths = [max(len(row[i]) for row in rows) for i in range(len(BACKUP_COLUMNS))]
        for row in rows:
            self.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())

    def taken(self, record: BackupRecord) -> None:
        self.echo(f"vm/{record.vm}: {record.level} backup {record.name} "
                  f"({format_bytes_rounded(record.size)}, sha256 {record.sha256[:12]})")

    def restored(self, restored: Restored) -> None:
        if restored.before is not None:
            self.taken(restored.before)
        self.echo(f"vm/{restored.record.vm}: restored backup {restored.record.name} "
                  f"(taken {_taken(restored.record)})")


class BackupsJson(views.View):
    def backups(self, found: Sequence[BackupRecord]) -> None:
        self.json({"items": [backup_json(r) for r in found]})
