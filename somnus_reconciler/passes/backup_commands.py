"""`somnus backup`, `backups` and `restore`: VM backups by hand.

Each runs under the apply lock (a backup and a step must not meet on one
domain), through `engine.backups.VmBackups`, and records what it did in the
journal. A restore first takes a full backup of the VM as it is now, so that
nothing is lost by going back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from somnus_reconciler import settings as settings_mod
from somnus_reconciler.engine.backups import BackupRecord, Retention, VmBackups, records
from somnus_reconciler.journal import ApplyLock, Journal
from somnus_reconciler.providers import backends as backends_mod
from somnus_reconciler.providers.backends import Backends
from somnus_reconciler.values.actual import ActualVm
from somnus_reconciler.values.errors import PermanentError
from somnus_reconciler.values.outcome import Outcome

# Journal actions after which a VM's disk holds blocks no checkpoint bitmap saw.
_REVERTING_ACTIONS = ("rollback", "recover", "restore")


class BackupRefused(PermanentError):
    """No managed VM of that name, or no backup to restore."""


@dataclass(frozen=True)
class Restored:
    record: BackupRecord  # the backup put back
    before: BackupRecord | None  # the backup of the VM as it was, taken first


@contextmanager
def _session(state_dir: str | None) -> Iterator[tuple[Backends, VmBackups, Journal]]:
    backends = backends_mod.open_backends(None, state_dir=state_dir)
    settings = backends.settings
    try:
        with ApplyLock(settings.state_dir), Journal(settings.journal_path) as journal:
            yield backends, VmBackups(backends.vms, settings.backups_dir, settings.state_dir,
                                      settings.libvirt_uri), journal
    finally:
        backends.close()


def _managed(backends: Backends, name: str) -> ActualVm:
    vm = backends.vms.observe_one(name)
    if vm is None or not vm.managed:
        raise BackupRefused(f"vm/{name} not found among the VMs somnus manages")
    return vm


def last_revert(journal: Journal, address: str) -> float | None:
    """When the VM's disk was last put back to an earlier state (rolled back, restored)."""
    for event in journal.recent(address, limit=200):
        if event.outcome == Outcome.ROLLED_BACK or event.action in _REVERTING_ACTIONS:
            return event.at
    return None


def backup(name: str, *, state_dir: str | None, retention: Retention = Retention()) -> BackupRecord:
    """A backup of vm/`name` now (incremental when its chain allows), then retention."""
    with _session(state_dir) as (backends, backups, journal):
        vm, address = _managed(backends, name), f"vm/{name}"
        record = backups.take(vm, "manual", reverted_since=last_revert(journal, address))
        journal.record(address, "backup", Outcome.OK, f"{record.level} backup {record.name}")
        for gone in backups.prune(name, retention):
            journal.record(address, "backup prune", Outcome.OK, f"backup {gone} removed by retention")
    return record


def listing(name: str | None, *, state_dir: str | None) -> list[BackupRecord]:
    """The backups of vm/`name` (None: of every VM), oldest first per VM."""
    root = settings_mod.resolve(None, state_dir=state_dir).backups_dir
    if name is not None:
        names = [name]
    else:
        names = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    return [record for vm in names for record in records(root, vm)]


def restore(name: str, backup_name: str | None, *, state_dir: str | None) -> Restored:
    """vm/`name` as backup `backup_name` (None: the newest) had it; running afterwards
    if it runs now (or, when it is gone, if it ran when the backup was taken)."""
    with _session(state_dir) as (backends, backups, journal):
        record = backups.find(name, backup_name)
        current = backends.vms.observe_one(name)
        before = None
        if current is not None and current.managed:
            before = backups.take(current, "before restore", full=True)
            journal.record(f"vm/{name}", "backup", Outcome.OK, f"{before.level} backup {before.name} before restore")
        start = current.running if current is not None else record.running
        backups.restore(record, start=start)
        journal.record(f"vm/{name}", "restore", Outcome.OK, f"restored backup {record.name}")
    return Restored(record, before)
