"""Backups on a schedule while `watch` or `gitops` runs (VirtualMachine.spec.backup).

`BackupScheduler` runs beside the loop in a thread of its own, with its own
libvirt connection: every `poll_s` it takes the backups that the declared VMs'
schedules make due (a cron expression through croniter, or an interval since
the VM's newest backup; a VM without any backup is due at once), and those a
pass asked for (`onPackChange`: a pack step that changed the guest). Each runs
under the apply lock, so it never meets a step on the same domain; retention is
applied after each. The loop hands it each desired state it loads.
"""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from somnus_reconciler import settings as settings_mod
from somnus_reconciler.engine.backups import BackupRecord, Retention, VmBackups, policy_of, records
from somnus_reconciler.journal import ApplyLock, Journal
from somnus_reconciler.passes import backup_commands, loop_events
from somnus_reconciler.providers.libvirt_provider import LibvirtProvider
from somnus_reconciler.providers.protocols import ProviderError
from somnus_reconciler.values.actual import ActualVm
from somnus_reconciler.values.desired import DesiredState, DesiredVm
from somnus_reconciler.values.model import ON_PACK_CHANGE, BackupPolicy
from somnus_reconciler.values.outcome import Outcome
from somnus_reconciler.values.quantity import format_bytes_rounded, parse_duration


def next_due(policy: BackupPolicy | None, last_at: float | None) -> float | None:
    """When the next scheduled backup is due (seconds since the epoch); None: never by
    schedule. A VM that has no backup yet is due at once."""
    if policy is None or policy.schedule is None or policy.schedule == ON_PACK_CHANGE:
        return None
    if last_at is None:
        return 0.0
    try:
        return last_at + parse_duration(policy.schedule)
    except ValueError:
        from croniter import croniter

        start = datetime.datetime.fromtimestamp(last_at).astimezone()
        return float(croniter(policy.schedule, start).get_next(float))


@dataclass(frozen=True)
class BackupStatus:
    """What `get` and `describe` show of a VM's backups."""

    last: BackupRecord | None
    next_due: float | None  # None: no schedule
    policy: BackupPolicy | None


def backup_status(vm: ActualVm, root: Path) -> BackupStatus | None:
    """From the VM's mark (its policy) and its records; None when it has neither."""
    policy = policy_of(vm)
    found = records(root, vm.name)
    if policy is None and not found:
        return None
    last = found[-1] if found else None
    return BackupStatus(last, next_due(policy, last.at if last else None), policy)


_RETRY_AFTER_S = 60.0


class BackupScheduler:
    def __init__(self, emit: loop_events.Emit, stop: threading.Event, *, state_dir: str | None,
                 poll_s: float = 5.0, clock: Callable[[], float] = time.time) -> None:
        self._emit, self._stop, self._state_dir = emit, stop, state_dir
        self._poll_s, self._clock = poll_s, clock
        self._desired: DesiredState | None = None
        self._asked: set[str] = set()
        self._failed_at: dict[str, float] = {}  # a failed backup is tried again after _RETRY_AFTER_S
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def update(self, desired: DesiredState, packs_changed: Iterable[str] = ()) -> None:
        """The desired state the loop loaded, and the VMs whose packs a pass changed."""
        with self._lock:
            self._desired = desired
            self._asked |= {name for name in packs_changed
                            if (vm := desired.vms.get(name)) is not None and vm.backup is not None
                            and vm.backup.schedule == ON_PACK_CHANGE}
        if self._thread is None and any(vm.backup and vm.backup.schedule for vm in desired.vms.values()):
            self._thread = threading.Thread(target=self._run, name="backup-schedule", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                desired, asked, self._asked = self._desired, self._asked, set()
            if desired is not None:
                self.take_due(desired, asked)
            self._stop.wait(self._poll_s)

    def take_due(self, desired: DesiredState, asked: set[str]) -> list[BackupRecord]:
        """Every backup due now, one VM after the other."""
        settings = settings_mod.resolve(desired.pool, state_dir=self._state_dir)
        provider = LibvirtProvider(settings)
        backups = VmBackups(provider, settings.backups_dir, settings.state_dir, settings.libvirt_uri)
        taken = []
        try:
            for vm in desired.vms.values():
                last = backups.records(vm.name)
                due = next_due(vm.backup, last[-1].at if last else None)
                if self._clock() - self._failed_at.get(vm.name, -_RETRY_AFTER_S) < _RETRY_AFTER_S:
                    continue
                if vm.name in asked or (due is not None and due <= self._clock()):
                    record = self._take(vm, backups, provider, settings)
                    taken += [record] if record is not None else []
        finally:
            provider.close()
        return taken

    def _take(self, want: DesiredVm, backups: VmBackups, provider: LibvirtProvider,
              settings: settings_mod.Settings) -> BackupRecord | None:
        address = want.address
        try:
            with ApplyLock(settings.state_dir), Journal(settings.journal_path) as journal:
                vm = provider.observe_one(want.name)
                if vm is None or not vm.managed:
                    return None
                record = backups.take(vm, "schedule", reverted_since=backup_commands.last_revert(journal, address),
                                      chain_length=Retention.of(want.backup).retain)
                journal.record(address, "backup", Outcome.OK, f"{record.level} backup {record.name} (schedule)")
                for gone in backups.prune(want.name, Retention.of(want.backup)):
                    journal.record(address, "backup prune", Outcome.OK, f"backup {gone} removed by retention")
        except ProviderError as e:
            self._failed_at[want.name] = self._clock()
            self._emit(loop_events.BackedUp(self._clock(), address, False, None, str(e)))
            return None
        self._failed_at.pop(want.name, None)
        self._emit(loop_events.BackedUp(self._clock(), address, True, record.name,
                                        f"{record.level}, {format_bytes_rounded(record.size)}, {record.reason}"))
        return record
