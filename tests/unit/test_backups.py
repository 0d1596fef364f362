"""engine.backups.VmBackups: records, the choice of level, retention and restore, with
virtnbdbackup replaced by a double that writes what it would (one data file per
backup, the chain's checkpoint list). The real tools run in tests/integration/test_backups.py."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
from pathlib import Path

import pytest

from somnus_reconciler.engine import backups as backups_mod
from somnus_reconciler.engine.backups import Retention, VmBackups
from somnus_reconciler.passes.backup_schedule import next_due
from somnus_reconciler.providers import vm_backups
from somnus_reconciler.values.actual import ActualVm, PowerState, VmMark
from somnus_reconciler.values.model import BackupPolicy

DAY = 86400.0


class Tools:
    """virtnbdbackup as far as VmBackups sees it; `kill_next` leaves a backup halfway."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.kill_next = False

    def backup(self, domain: str, chain_dir: Path, level: str, *, uri: str) -> list[Path]:
        self.calls.append((level, chain_dir.name))
        chain_dir.mkdir(parents=True, exist_ok=True)
        cpt = chain_dir / f"{domain}.cpt"
        names = json.loads(cpt.read_text()) if cpt.exists() else []
        if level != "copy":
            names.append(f"virtnbdbackup.{len(names)}")
            cpt.write_text(json.dumps(names))
        data = chain_dir / f"vda.{level}.{len(names)}.data"
        data.write_bytes(b"x" * (1000 if level != "inc" else 10))
        if self.kill_next:
            self.kill_next = False
            raise KeyboardInterrupt("killed halfway")
        return [data]


class Vms:
    def __init__(self) -> None:
        self.put_back_calls: list[tuple[str, str, bool]] = []

    def definition(self, name: str) -> str:
        return f"<domain><name>{name}</name></domain>"

    def disk_path(self, name: str) -> Path:
        return Path("/nonexistent") / name / "disk.qcow2"

    def end_stale_backup_job(self, name: str) -> bool:
        return False


@pytest.fixture
def tools(monkeypatch: pytest.MonkeyPatch) -> Tools:
    fake = Tools()
    monkeypatch.setattr(vm_backups, "backup", fake.backup)
    return fake


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        self.now += 60.0
        return self.now


def _vm(running: bool = True) -> ActualVm:
    return ActualVm("ws", PowerState.RUNNING if running else PowerState.SHUTOFF, 3 if running else None,
                    1, 2, 2**30, 2**30, VmMark("hash1", "debian-12", 2**30, "debian"))


def _backups(tmp_path: Path, clock: Clock | None = None) -> VmBackups:
    return VmBackups(Vms(), tmp_path / "backups", tmp_path / "state", "qemu:///system",  # type: ignore[arg-type]
                     clock=clock or Clock())


def test_a_running_vm_gets_a_full_then_incrementals_on_the_same_chain(tmp_path: Path, tools: Tools) -> None:
    backups = _backups(tmp_path)
    first, second, third = (backups.take(_vm(), "manual") for _ in range(3))
    assert [(r.level, r.parent) for r in (first, second, third)] == [
        ("full", None), ("inc", first.name), ("inc", second.name)]
    assert {r.chain for r in (first, second, third)} == {first.name}
    assert [r.checkpoint for r in (first, second, third)] == [f"virtnbdbackup.{i}" for i in range(3)]
    assert (second.size, len(second.sha256)) == (10, 64)
    assert backups.records("ws") == [first, second, third]
    records_dir = tmp_path / "backups" / "ws" / first.chain / "somnus"
    assert (records_dir / f"{first.name}.domain.xml").read_text() == "<domain><name>ws</name></domain>"
    assert oct(os.stat(tmp_path / "backups" / "ws").st_mode & 0o777) == "0o700"


def _vm_with_dir(directory: Path | None) -> ActualVm:
    policy = BackupPolicy(dir=str(directory)) if directory is not None else BackupPolicy()
    return dataclasses.replace(_vm(), mark=VmMark("hash1", "debian-12", 2**30, "debian",
                                                    backup=policy.model_dump_json()))


def test_backups_go_to_the_vms_backup_dir_and_move_along_when_it_changes(tmp_path: Path, tools: Tools) -> None:
    backups = _backups(tmp_path)
    first = backups.take(_vm_with_dir(tmp_path / "disk-a"), "manual")
    assert (tmp_path / "disk-a" / "ws" / first.chain / "somnus" / f"{first.name}.json").is_file()
    assert (tmp_path / "backups" / "ws").resolve() == (tmp_path / "disk-a" / "ws").resolve()
    second = backups.take(_vm_with_dir(tmp_path / "disk-b"), "manual")
    assert (second.level, second.parent) == ("inc", first.name)  # the chain moved whole
    assert sorted(p.name for p in (tmp_path / "disk-b" / "ws").iterdir()) == [first.chain]
    assert list((tmp_path / "disk-a" / "ws").iterdir()) == []
    third = backups.take(_vm_with_dir(None), "manual")
    assert not (tmp_path / "backups" / "ws").is_symlink()
    assert backups.records("ws") == [first, second, third]
    assert oct(os.stat(tmp_path / "backups" / "ws").st_mode & 0o777) == "0o700"


def test_a_stopped_vm_gets_a_full_copy_each_time(tmp_path: Path, tools: Tools) -> None:
    backups = _backups(tmp_path)
    first, second = backups.take(_vm(running=False), "manual"), backups.take(_vm(running=False), "manual")
    assert [(r.level, r.checkpoint) for r in (first, second)] == [("copy", None), ("copy", None)]
    assert first.chain != second.chain


def test_full_is_forced_after_a_revert_or_when_asked(tmp_path: Path, tools: Tools) -> None:
    backups = _backups(tmp_path)
    first = backups.take(_vm(), "manual")
    assert backups.take(_vm(), "manual", reverted_since=first.at + 1).level == "full"
    assert backups.take(_vm(), "before replace", full=True).level == "full"


def test_a_backup_killed_halfway_is_not_listed_and_its_chain_is_not_extended(tmp_path: Path, tools: Tools) -> None:
    backups = _backups(tmp_path)
    first = backups.take(_vm(), "manual")
    tools.kill_next = True
    with pytest.raises(KeyboardInterrupt):
        backups.take(_vm(), "manual")
    assert backups.records("ws") == [first]
    after = backups.take(_vm(), "manual")
    assert (after.level, after.chain != first.chain) == ("full", True)


def test_retention_keeps_every_chain_a_kept_backup_needs(tmp_path: Path, tools: Tools) -> None:
    clock = Clock()
    backups = _backups(tmp_path, clock)
    chain_a = [backups.take(_vm(), "manual") for _ in range(3)]  # full + 2 inc
    chain_b = [backups.take(_vm(), "manual", full=True), backups.take(_vm(), "manual")]
    assert backups.prune("ws", Retention(retain=3)) == []  # the third newest is chain a's last inc
    assert backups.prune("ws", Retention(retain=2)) == [r.name for r in chain_a]
    assert not (tmp_path / "backups" / "ws" / chain_a[0].chain).exists()
    assert backups.records("ws") == chain_b


def test_retention_by_age_never_removes_the_newest_backup(tmp_path: Path, tools: Tools) -> None:
    clock = Clock()
    backups = _backups(tmp_path, clock)
    old = backups.take(_vm(running=False), "manual")
    newest = backups.take(_vm(running=False), "manual")
    clock.now += 40 * DAY
    assert backups.prune("ws", Retention(retain=7, max_age_s=30 * DAY)) == [old.name]
    assert backups.records("ws") == [newest]


def test_the_newest_or_a_named_backup_is_found_and_a_missing_one_is_an_error(tmp_path: Path, tools: Tools) -> None:
    backups = _backups(tmp_path)
    first, second = backups.take(_vm(), "manual"), backups.take(_vm(), "manual")
    assert backups.find("ws", None) == second and backups.find("ws", first.name) == first
    with pytest.raises(backups_mod.ProviderError, match=f"no backup nope .backups: {first.name}, {second.name}"):
        backups.find("ws", "nope")


@pytest.mark.parametrize(("schedule", "last", "due"), [
    (None, 100.0, None),
    ("onPackChange", 100.0, None),
    ("24h", None, 0.0),
    ("24h", 1000.0, 1000.0 + DAY),
    ("1m", 1000.0, 1060.0),
])
def test_when_a_scheduled_backup_is_due(schedule: str | None, last: float | None, due: float | None) -> None:
    policy = BackupPolicy(schedule=schedule) if schedule else None
    assert next_due(policy, last) == due


def test_a_cron_schedule_is_due_at_its_next_time_after_the_newest_backup() -> None:
    last = datetime.datetime(2026, 11, 30, 3, 0).timestamp()  # local time, as cron reads it
    assert next_due(BackupPolicy(schedule="0 3 * * *"), last) == last + DAY
    assert next_due(BackupPolicy(schedule="0 3 * * *"), last - 3600) == last


@pytest.mark.parametrize(("policy", "error"), [
    ({"schedule": "every tuesday"}, "neither a cron expression, an interval (24h) nor onPackChange"),
    ({"schedule": "30s"}, "an interval of at least 1m"),
    ({"maxAge": "a month"}, "is not a duration"),
    ({"retain": 0}, "greater than or equal to 1"),
])
def test_a_bad_backup_policy_is_refused(policy: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        BackupPolicy.model_validate(policy, by_alias=True, by_name=False)


def test_retention_comes_from_the_policy() -> None:
    assert Retention.of(None) == Retention()
    policy = BackupPolicy.model_validate({"retain": 3, "maxAge": "30d"}, by_alias=True)
    assert Retention.of(policy) == Retention(3, 30 * DAY)


def test_a_full_backup_killed_halfway_leaves_nothing_behind_once_the_next_one_runs(tmp_path: Path,
                                                                                   tools: Tools) -> None:
    backups = _backups(tmp_path)
    tools.kill_next = True
    with pytest.raises(KeyboardInterrupt):
        backups.take(_vm(), "manual")
    assert backups.records("ws") == [] and len(list((tmp_path / "backups" / "ws").iterdir())) == 1
    done = backups.take(_vm(), "manual")
    assert [p.name for p in (tmp_path / "backups" / "ws").iterdir()] == [done.chain]


def test_a_chain_as_long_as_asked_ends_with_a_new_full_backup(tmp_path: Path, tools: Tools) -> None:
    backups = _backups(tmp_path)
    levels = [backups.take(_vm(), "schedule", chain_length=3).level for _ in range(5)]
    assert levels == ["full", "inc", "inc", "full", "inc"]


class Containers:
    """A container provider double writing the files a backup copies, recording calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def snapshot(self, name: str, snapshot: str, description: str) -> str:
        self.calls.append(("snapshot", snapshot))
        return "image-id"

    def save_snapshot(self, name: str, snapshot: str, dest: Path) -> None:
        dest.write_bytes(b"image")

    def volume_mounts(self, name: str) -> list[tuple[str, str]]:
        return [("somnus-box-data", "/data")]

    def archive_path(self, name: str, path: str, dest: Path) -> None:
        dest.write_bytes(b"volume")

    def load_snapshot(self, name: str, src: Path) -> str:
        self.calls.append(("load", src.name))
        return "ref"

    def restore(self, declared: object, snapshot: str) -> str:
        self.calls.append(("restore", snapshot))
        return "new-id"

    def replace_path(self, name: str, path: str, src: Path) -> None:
        self.calls.append(("replace", path, src.name))


def test_a_container_backup_holds_its_image_and_volumes_and_restores_both(tmp_path: Path) -> None:
    from somnus_reconciler.engine.container_backups import ContainerBackups
    from somnus_reconciler.values.actual import ActualContainer

    fake = Containers()
    backups = ContainerBackups(fake, tmp_path / "cb", clock=Clock())  # type: ignore[arg-type]
    (tmp_path / "cb" / "box" / "killed-halfway").mkdir(parents=True)
    record = backups.take(ActualContainer("box", "cid", "img", "running", "hash1"), "manual")
    assert (record.volumes, record.size, record.spec_hash) == ((("somnus-box-data", "/data"),), 11, "hash1")
    assert sorted(p.name for p in (tmp_path / "cb" / "box").iterdir()) == [record.name]
    assert backups.find("box", None) == record
    backups.restore(record, declared=object())  # type: ignore[arg-type]
    assert fake.calls[1:] == [("load", "image.tar"), ("restore", record.snapshot),
                              ("replace", "/data", "volume-somnus-box-data.tar")]
