"""`somnus backup`, `backups` and `restore`: backups of VMs and containers by hand.

Each runs under the apply lock (a backup and a step must not meet on one
guest), through `engine.backups.VmBackups` or `engine.container_backups.ContainerBackups`,
and records what it did in the journal. A restore first backs the guest up as it
is now, so that nothing is lost by going back. A container is made anew with its
declared spec, so its restore needs the manifests that declare it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from somnus_reconciler import settings as settings_mod
from somnus_reconciler.engine.backups import BackupRecord, Retention, VmBackups, policy_of, records
from somnus_reconciler.engine.container_backups import ContainerBackupRecord, ContainerBackups, container_records
from somnus_reconciler.journal import ApplyLock, Journal
from somnus_reconciler.passes import prepare
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
class ContainerRestored:
    record: ContainerBackupRecord
    before: ContainerBackupRecord | None


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


def backup(name: str, *, state_dir: str | None) -> BackupRecord:
    """A backup of vm/`name` now (incremental when its chain allows), then the retention
    of its backup policy (from its mark; none: keep 7)."""
    with _session(state_dir) as (backends, backups, journal):
        vm, address = _managed(backends, name), f"vm/{name}"
        retention = Retention.of(policy_of(vm))
        record = backups.take(vm, "manual", reverted_since=last_revert(journal, address), chain_length=retention.retain)
        journal.record(address, "backup", Outcome.OK, f"{record.level} backup {record.name}")
        for gone in backups.prune(name, retention):
            journal.record(address, "backup prune", Outcome.OK, f"backup {gone} removed by retention")
    return record


def listing(kind: str | None, name: str | None, *,
            state_dir: str | None) -> list[BackupRecord | ContainerBackupRecord]:
    """The backups of `kind`/`name` (None: of every VM, then every container), oldest first per object."""
    settings = settings_mod.resolve(None, state_dir=state_dir)
    found: list[BackupRecord | ContainerBackupRecord] = []
    if kind in (None, "vm"):
        found += [r for vm in _names(settings.backups_dir, name) for r in records(settings.backups_dir, vm)]
    if kind in (None, "container"):
        root = settings.container_backups_dir
        found += [r for c in _names(root, name) for r in container_records(root, c)]
    return found


def _names(root: Path, name: str | None) -> list[str]:
    if name is not None:
        return [name]
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def backup_container(name: str, *, state_dir: str | None) -> ContainerBackupRecord:
    """container/`name`'s image and named volumes, copied out now."""
    with _session(state_dir) as (backends, _, journal):
        actual = backends.containers.observe_one(name)
        if actual is None or not actual.managed:
            raise BackupRefused(f"container/{name} not found among the containers somnus manages")
        record = ContainerBackups(backends.containers, backends.settings.container_backups_dir).take(actual, "manual")
        journal.record(f"container/{name}", "backup", Outcome.OK, f"backup {record.name}")
    return record


def restore_container(name: str, backup_name: str | None, manifests: Sequence[Path], *,
                      state_dir: str | None) -> ContainerRestored:
    """container/`name` as backup `backup_name` (None: the newest) had it, with the spec
    `manifests` declare for it; its present state is backed up first."""
    desired = prepare.load_desired(manifests, state_dir=state_dir) if manifests else None
    if desired is None or name not in desired.containers:
        raise BackupRefused(f"container/{name} is made anew with its declared spec: give -f MANIFESTS declaring it")
    with _session(state_dir) as (backends, _, journal):
        backups = ContainerBackups(backends.containers, backends.settings.container_backups_dir)
        record = backups.find(name, backup_name)
        current = backends.containers.observe_one(name)
        before = backups.take(current, "before restore") if current is not None and current.managed else None
        backups.restore(record, desired.containers[name])
        journal.record(f"container/{name}", "restore", Outcome.OK, f"restored backup {record.name}")
    return ContainerRestored(record, before)


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
