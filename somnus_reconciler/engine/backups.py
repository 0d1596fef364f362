"""VM backups: take one (full or incremental), list them, prune them, put one back.

The engine takes a full backup before any step that destroys a VM's disk (a
replace or a prune); `somnus backup`, `backups` and `restore` (passes.backup_commands)
call the same `VmBackups`. The copying itself is `providers.vm_backups`
(virtnbdbackup); this module keeps the records and decides the level.

Layout, under the backup root (`<guest dir>/backups`), 0700 since a backup holds the
guest's whole disk and its keys (`<root>/<vm>` is a link to `<dir>/<vm>` when the VM's
`backup.dir` names a directory, so that its backups are found there even once the VM is gone):

    <root>/<vm>/<chain>/                 one virtnbdbackup chain: a full, then incrementals
    <root>/<vm>/<chain>/somnus/<name>.json          the record of one backup (`BackupRecord`)
    <root>/<vm>/<chain>/somnus/<name>.domain.xml    the domain definition with its mark
    <root>/<vm>/<chain>/somnus/<name>.keys/         the VM's SSH key and agent token (0600)

A backup exists once its record does: the record is written last, by rename, so
a backup killed halfway is never listed, and a chain whose checkpoints outnumber
its records is never extended again (the next backup starts a new chain).
An incremental extends the newest chain only while the VM runs, and only if no
snapshot was reverted since (a revert changes blocks that no bitmap saw).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from somnus_reconciler.providers import guest_access, vm_backups
from somnus_reconciler.providers.protocols import ProviderError, VmProvider
from somnus_reconciler.values.actual import ActualVm
from somnus_reconciler.values.model import BackupPolicy
from somnus_reconciler.values.quantity import parse_duration

_RECORDS = "somnus"


@dataclass(frozen=True)
class BackupRecord:
    name: str
    vm: str
    at: float  # seconds since the epoch
    level: str  # full | inc | copy (a stopped VM's full copy, which starts no chain)
    chain: str  # the chain directory's name
    parent: str | None  # the backup an incremental builds on
    checkpoint: str | None  # the libvirt checkpoint it ends at; None for a copy
    spec_hash: str
    running: bool  # the VM ran when it was taken
    size: int  # bytes of data this backup wrote
    sha256: str  # of those bytes, in file name order
    reason: str  # manual, schedule, before replace, before prune, before restore

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def records(root: Path, vm: str) -> list[BackupRecord]:
    """The complete backups of `vm` under the backup root `root`, oldest first."""
    found = []
    for path in (root / vm).glob(f"*/{_RECORDS}/*.json"):
        try:
            found.append(BackupRecord(**json.loads(path.read_text())))
        except (OSError, ValueError, TypeError):
            continue  # not a record of ours
    return sorted(found, key=lambda r: (r.at, r.name))


@dataclass(frozen=True)
class Retention:
    retain: int = 7  # backups kept, newest first; also the longest chain (then a full one)
    max_age_s: float | None = None  # older ones go too; the newest backup always stays

    @classmethod
    def of(cls, policy: BackupPolicy | None) -> Retention:
        if policy is None:
            return cls()
        return cls(policy.retain, parse_duration(policy.max_age) if policy.max_age else None)


def policy_of(vm: ActualVm) -> BackupPolicy | None:
    """The backup policy recorded in the VM's mark."""
    return BackupPolicy.model_validate_json(vm.mark.backup) if vm.mark and vm.mark.backup else None


@dataclass(frozen=True)
class VmBackups:
    vms: VmProvider
    root: Path  # the backup root; each VM has a directory below it
    state_dir: Path  # where the VMs' keys are (guest_access)
    uri: str  # libvirt's, for virtnbdbackup
    clock: Callable[[], float] = time.time

    def _now(self) -> float:
        return self.clock()

    def records(self, vm: str) -> list[BackupRecord]:
        return records(self.root, vm)

    def take(self, vm: ActualVm, reason: str, *, full: bool = False, reverted_since: float | None = None,
             chain_length: int = 7) -> BackupRecord:
        """A backup of `vm` now: an incremental on the newest chain when it can be one
        (running, chain intact and shorter than `chain_length`, no revert since
        `reverted_since`) and `full` is False; else a full one, starting a chain."""
        assert vm.mark is not None
        policy = policy_of(vm)
        self._place(vm.name, policy.dir if policy is not None else None)
        self.vms.end_stale_backup_job(vm.name)
        self._remove_partial(vm.name)
        now = self._now()
        name = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now * 1000) % 1000:03d}Z"
        records = self.records(vm.name)
        chain_of = None if full else self._extendable(vm, records, reverted_since, chain_length)
        level = "inc" if chain_of is not None else ("full" if vm.running else "copy")
        chain = chain_of.chain if chain_of is not None else name
        chain_dir = self.root / vm.name / chain
        self._private(self.root / vm.name)
        written = vm_backups.backup(vm.name, chain_dir, level, uri=self.uri)
        checkpoints = vm_backups.checkpoints(chain_dir, vm.name)
        size, digest = digest_files(written)
        record = BackupRecord(
            name=name, vm=vm.name, at=now, level=level, chain=chain,
            parent=chain_of.name if chain_of is not None else None,
            checkpoint=checkpoints[-1] if checkpoints and level != "copy" else None,
            spec_hash=vm.mark.spec_hash, running=vm.running, size=size, sha256=digest, reason=reason,
        )
        self._write_record(chain_dir / _RECORDS, record, self.vms.definition(vm.name))
        return record

    def _extendable(self, vm: ActualVm, records: list[BackupRecord], reverted_since: float | None,
                    chain_length: int) -> BackupRecord | None:
        """The newest backup, when an incremental may follow it in its chain."""
        if not vm.running or not records:
            return None
        last = records[-1]
        if last.level == "copy" or (reverted_since is not None and reverted_since >= last.at):
            return None
        chain_dir = self.root / vm.name / last.chain
        in_chain = [r for r in records if r.chain == last.chain]
        if len(in_chain) >= chain_length:
            return None  # a periodic full backup, so that retention can let old chains go
        if len(vm_backups.checkpoints(chain_dir, vm.name)) != len(in_chain):
            return None  # a backup of this chain was killed halfway: start anew
        return last

    def _place(self, vm: str, directory: str | None) -> None:
        """Make `<root>/<vm>` the VM's own directory, or a link to `<directory>/<vm>`;
        the backups already taken move along, so that a chain stays whole."""
        here, target = self.root / vm, Path(directory).expanduser() / vm if directory is not None else None
        if (here.is_symlink() and target is not None and here.resolve() == target.resolve()
                or not here.is_symlink() and target is None):
            return
        self._private(self.root)
        home = target if target is not None else self.root / f".{vm}.moving"
        self._private(home)
        if here.is_dir():
            for chain in list(here.iterdir()):
                shutil.move(chain, home / chain.name)
        if here.is_symlink():
            here.unlink()
        elif here.exists():
            here.rmdir()
        if target is not None:
            here.symlink_to(target)
        else:
            home.rename(here)

    def _remove_partial(self, vm: str) -> None:
        """What a backup killed halfway left: a chain directory without any record, and
        data files virtnbdbackup had not finished (`*.partial`)."""
        recorded = {r.chain for r in self.records(vm)}
        for chain_dir in (self.root / vm).glob("*/") if (self.root / vm).is_dir() else ():
            if chain_dir.name not in recorded:
                shutil.rmtree(chain_dir, ignore_errors=True)
            else:
                for partial in chain_dir.glob("*.partial"):
                    partial.unlink(missing_ok=True)

    def _write_record(self, records_dir: Path, record: BackupRecord, definition: str) -> None:
        records_dir.mkdir(mode=0o700, exist_ok=True)
        (records_dir / f"{record.name}.domain.xml").write_text(definition)
        guest_access.save_keys(self.state_dir, record.vm, records_dir / f"{record.name}.keys")
        partial = records_dir / f".{record.name}.json.partial"
        partial.write_text(json.dumps(record.to_json(), indent=2))
        partial.replace(records_dir / f"{record.name}.json")

    @staticmethod
    def _private(path: Path) -> None:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.chmod(0o700)

    def prune(self, vm: str, retention: Retention) -> list[str]:
        """Delete whole chains none of whose backups is kept; returns the backups deleted.

        Kept: the newest `retain`, minus those older than `max_age_s`, and always the
        newest one. An incremental needs its chain up to its full, so a chain goes
        only when none of its backups is kept.
        """
        records = self.records(vm)
        now = self._now()
        kept = {r.name for r in records[-retention.retain:]
                if retention.max_age_s is None or now - r.at <= retention.max_age_s}
        if records:
            kept.add(records[-1].name)
        chains_kept = {r.chain for r in records if r.name in kept}
        gone = [r for r in records if r.chain not in chains_kept]
        for chain in {r.chain for r in gone}:
            shutil.rmtree(self.root / vm / chain, ignore_errors=True)
        return [r.name for r in gone]

    def find(self, vm: str, name: str | None) -> BackupRecord:
        """The backup `name` of `vm` (None: the newest); ProviderError when there is none."""
        return chosen(self.records(vm), name, f"vm/{vm}")

    def restore(self, record: BackupRecord, *, start: bool) -> None:
        """Put the disk, the definition (with its mark) and the keys of `record` back;
        the VM runs afterwards when `start`."""
        records_dir = self.root / record.vm / record.chain / _RECORDS
        restored = self.vms.disk_path(record.vm).with_name("disk.qcow2.restored")
        restored.parent.mkdir(parents=True, exist_ok=True)
        restored.parent.chmod(0o755)
        vm_backups.restore_disk(record.vm, self.root / record.vm / record.chain, restored,
                                until=record.checkpoint, uri=self.uri)
        guest_access.load_keys(records_dir / f"{record.name}.keys", self.state_dir, record.vm)
        self.vms.put_back(record.vm, (records_dir / f"{record.name}.domain.xml").read_text(), restored, start=start)


class _Named(Protocol):
    @property
    def name(self) -> str: ...


_Record = TypeVar("_Record", bound=_Named)


def chosen(found: list[_Record], name: str | None, address: str) -> _Record:
    """The backup `name` among `found` (None: the newest, the last); ProviderError when there is none."""
    match = found[-1] if found and name is None else next((r for r in found if r.name == name), None)
    if match is None:
        known = ", ".join(r.name for r in found) or "none"
        wanted = f"no backup {name}" if name is not None else "no backup"
        raise ProviderError(address, "restore", f"{wanted} (backups: {known})")
    return match


def digest_files(files: list[Path]) -> tuple[int, str]:
    sha, size = hashlib.sha256(), 0
    for path in files:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                sha.update(chunk)
                size += len(chunk)
    return size, sha.hexdigest()
