"""VM backups as `somnus backup`, `backups` and `restore` show them: text, or JSON
(`backups -o json`: `{"items": [...]}` like `get`, documented in docs/output.md)."""

from __future__ import annotations

import datetime
from collections.abc import Sequence

from somnus_reconciler.cli import views
from somnus_reconciler.cli.views import JsonValue
from somnus_reconciler.engine.backups import BackupRecord
from somnus_reconciler.engine.container_backups import ContainerBackupRecord
from somnus_reconciler.passes.backup_commands import ContainerRestored, Restored
from somnus_reconciler.values.quantity import format_bytes_rounded

BACKUP_COLUMNS = ("OBJECT", "BACKUP", "LEVEL", "SIZE", "TAKEN", "REASON")
AnyRecord = BackupRecord | ContainerBackupRecord


def _address(record: AnyRecord) -> str:
    return f"vm/{record.vm}" if isinstance(record, BackupRecord) else f"container/{record.container}"


def _taken(record: AnyRecord) -> str:
    return datetime.datetime.fromtimestamp(record.at).strftime("%Y-%m-%d %H:%M:%S")


def backup_json(record: AnyRecord) -> dict[str, JsonValue]:
    if isinstance(record, ContainerBackupRecord):
        return {
            "container": record.container, "name": record.name, "level": "full", "at": record.at,
            "specHash": record.spec_hash, "volumes": [{"name": v, "mountPath": m} for v, m in record.volumes],
            "size": record.size, "sha256": record.sha256, "reason": record.reason,
        }
    return {
        "vm": record.vm, "name": record.name, "level": record.level, "chain": record.chain,
        "parent": record.parent, "checkpoint": record.checkpoint, "at": record.at,
        "specHash": record.spec_hash, "running": record.running, "size": record.size,
        "sha256": record.sha256, "reason": record.reason,
    }


class BackupsHuman(views.View):
    def backups(self, found: Sequence[AnyRecord]) -> None:
        rows = [BACKUP_COLUMNS] + [(_address(r), r.name, r.level if isinstance(r, BackupRecord) else "full",
                                    format_bytes_rounded(r.size), _taken(r), r.reason) for r in found]
        widths = [max(len(row[i]) for row in rows) for i in range(len(BACKUP_COLUMNS))]
        for row in rows:
            self.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())

    def taken(self, record: AnyRecord) -> None:
        level = record.level if isinstance(record, BackupRecord) else "full"
        self.echo(f"{_address(record)}: {level} backup {record.name} "
                  f"({format_bytes_rounded(record.size)}, sha256 {record.sha256[:12]})")

    def restored(self, restored: Restored | ContainerRestored) -> None:
        if restored.before is not None:
            self.taken(restored.before)
        self.echo(f"{_address(restored.record)}: restored backup {restored.record.name} "
                  f"(taken {_taken(restored.record)})")


class BackupsJson(views.View):
    def backups(self, found: Sequence[AnyRecord]) -> None:
        self.json({"items": [backup_json(r) for r in found]})
