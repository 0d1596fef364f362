"""engine.Engine with recording provider doubles: the order of snapshot -> act -> record,
rollback on failure, recovery of interrupted steps. Real backends: tests/integration."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from somnus_reconciler.engine.executor import Engine
from somnus_reconciler.engine.pack_step import PackSteps
from somnus_reconciler.engine.resource_step import changes_guest
from somnus_reconciler.engine.retry import RetryPolicy
from somnus_reconciler.engine.snapshots import snapshot_name
from somnus_reconciler.journal import Journal
from somnus_reconciler.planning.plan import Action, Change, Disruption, Plan
from somnus_reconciler.providers.protocols import BackendUnavailable, ProviderError, TemporaryProviderError
from somnus_reconciler.semantic.triage import Category, Triage
from somnus_reconciler.values.actual import ActualContainer, ActualVm, PowerState, Snapshot, VmMark
from somnus_reconciler.values.desired import DesiredContainer, DesiredPack, DesiredState, DesiredVm, VmResources
from somnus_reconciler.values.diagnostics import Source
from somnus_reconciler.values.model import CapabilityPackSpec, PoolSpec

SRC = Source(Path("m.yaml"), 1)
VM = DesiredVm("vm1", VmResources(1, 2**30, 1, 2**30), "debian-12", 2**30, "debian", True,
               ("tools",), 2, None, None, SRC)
BOX = DesiredContainer("box1", "img", None, 1.0, 2**30, "none", (), ("tools",), None, SRC)
PACK = DesiredPack("tools", CapabilityPackSpec(), SRC)


class Recorder:
    """Both provider protocols, recording calls; `fail` names calls that raise a
    ProviderError (of the temporary kind when `temporary`)."""

    def __init__(self, fail: set[str] | None = None, *, temporary: bool = False) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.fail = fail or set()
        self.error = TemporaryProviderError if temporary else ProviderError
        self.snaps: dict[str, list[str]] = {}

    def _call(self, *call: str) -> None:
        self.calls.append(call)
        if call[0] in self.fail:
            raise self.error(f"x/{call[1]}", call[0], "boom")

    def snapshot(self, name: str, snapshot: str, description: str) -> str:
        self._call("snapshot", name, snapshot)
        self.snaps.setdefault(name, []).append(snapshot)
        return snapshot

    def snapshots(self, name: str) -> list[Snapshot]:
        return [Snapshot(s, float(i)) for i, s in enumerate(self.snaps.get(name, []))]

    def delete_snapshot(self, name: str, snapshot: str) -> None:
        self._call("delete_snapshot", name, snapshot)
        self.snaps[name].remove(snapshot)

    def revert(self, name: str, snapshot: str) -> None:
        self._call("revert", name, snapshot)

    def restore(self, c: DesiredContainer, snapshot: str) -> str:
        self._call("restore", c.name, snapshot)
        return "new-id"

    def write_packs(self, name: str, packs: tuple[tuple[str, str], ...]) -> None:
        self._call("write_packs", name, repr(packs))

    def observe_one(self, name: str) -> ActualContainer:
        return ActualContainer(name, "cid", "img", "running", BOX.spec_hash)

    def create(self, vm: object, **_: object) -> str:
        self._call("create", getattr(vm, "name"))
        return "cid"


@dataclasses.dataclass
class Outcome:
    ok: bool
    failed_task: str | None = None
    message: str = ""


class Runner:
    def __init__(self, outcome: Outcome, log: list[tuple[str, ...]]) -> None:
        self.outcome, self.log = outcome, log

    def run(self, guest: DesiredVm | DesiredContainer, pack: DesiredPack, action: str,
            on_event: Callable[[str], None]) -> Outcome:
        self.log.append(("run", guest.name, pack.name, action))
        return self.outcome


def engine(tmp_path: Path, recorder: Recorder, outcome: Outcome) -> tuple[Engine, Journal]:
    journal = Journal(tmp_path / "journal.sqlite")
    steps = PackSteps(Runner(outcome, recorder.calls), {"tools": PACK}, {"tools": "fp1"}, clock=lambda: 0.0)
    return Engine(recorder, recorder, journal, pack_steps=steps), journal  # type: ignore[arg-type]


def pack_change(want: DesiredVm | DesiredContainer, action: Action = Action.PACK_INSTALL) -> Change:
    return Change(want.address, action, Disruption.NONE, desired=want, pack="tools")


SNAP = snapshot_name("pack-tools", 0.0)


def test_snapshot_names_follow_the_spec_and_sort_by_time() -> None:
    assert SNAP == "somnus-pack-tools-19700101T000000000Z"
    assert snapshot_name("pack-a b", 1.5) == "somnus-pack-a-b-19700101T000001500Z"


def test_a_pack_step_snapshots_then_runs_then_records(tmp_path: Path) -> None:
    rec = Recorder()
    eng, journal = engine(tmp_path, rec, Outcome(True))
    [result] = eng.execute(Plan((pack_change(VM),), (), ()))
    assert result.ok
    assert rec.calls == [("snapshot", "vm1", SNAP), ("run", "vm1", "tools", "install"),
                         ("write_packs", "vm1", "(('tools', 'fp1'),)")]
    assert journal.open_steps() == []
    assert journal.recent("vm/vm1")[0].outcome == "ok"


def test_a_failed_pack_step_reverts_to_its_snapshot_and_says_which_task(tmp_path: Path) -> None:
    rec = Recorder()
    eng, journal = engine(tmp_path, rec, Outcome(False, "apt", "No package matching 'nope'"))
    [result] = eng.execute(Plan((pack_change(VM),), (), ()))
    assert not result.ok
    assert rec.calls[-1] == ("revert", "vm1", SNAP)
    assert "write_packs" not in [c[0] for c in rec.calls]
    event = journal.recent("vm/vm1")[0]
    assert (event.action, event.outcome) == ("pack install tools", "rolled back")
    assert "task 'apt' failed: No package matching 'nope'" in event.message and SNAP in event.message


def test_a_failed_container_step_restores_the_committed_image_and_keeps_pack_records(tmp_path: Path) -> None:
    rec = Recorder()
    eng, journal = engine(tmp_path, rec, Outcome(False, "verify", "exit 1"))
    journal.set_container_pack("box1", "cid", "older", "fp0")
    [result] = eng.execute(Plan((pack_change(BOX),), (), ()))
    assert not result.ok and rec.calls[-1] == ("restore", "box1", SNAP)
    assert journal.container_packs()["box1"] == ("new-id", (("older", "fp0"),))


def test_no_snapshot_means_nothing_is_run(tmp_path: Path) -> None:
    rec = Recorder(fail={"snapshot"})
    eng, journal = engine(tmp_path, rec, Outcome(True))
    [result] = eng.execute(Plan((pack_change(VM),), (), ()))
    assert not result.ok and "no snapshot" in result.message
    assert [c[0] for c in rec.calls] == ["snapshot"]
    assert journal.recent("vm/vm1")[0].outcome == "failed"  # nothing to roll back


def test_snapshots_are_pruned_to_the_vm_retention(tmp_path: Path) -> None:
    rec = Recorder()
    rec.snaps["vm1"] = ["somnus-a", "somnus-b"]
    eng, _ = engine(tmp_path, rec, Outcome(True))
    eng.execute(Plan((pack_change(VM),), (), ()))
    assert rec.snaps["vm1"] == ["somnus-b", SNAP]  # retain: 2


def test_a_rolled_back_step_prunes_too_so_failures_cannot_pile_up_snapshots(tmp_path: Path) -> None:
    rec = Recorder()
    rec.snaps["vm1"] = ["somnus-a", "somnus-b"]
    eng, _ = engine(tmp_path, rec, Outcome(False, "apt", "boom"))
    [result] = eng.execute(Plan((pack_change(VM),), (), ()))
    assert not result.ok and ("revert", "vm1", SNAP) in rec.calls
    assert rec.snaps["vm1"] == ["somnus-b", SNAP]  # retain: 2; the one rolled back to stays


def test_pack_steps_of_a_guest_whose_own_change_failed_are_skipped(tmp_path: Path) -> None:
    rec = Recorder(fail={"create"})
    eng, _ = engine(tmp_path, rec, Outcome(True))
    create = Change(VM.address, Action.CREATE, Disruption.NONE, desired=VM)
    results = eng.execute(Plan((create, pack_change(VM)), (), ()))
    assert [r.ok for r in results] == [False, False]
    assert "skipped" in results[1].message
    assert [c[0] for c in rec.calls] == ["create"]


@pytest.mark.parametrize("snapshot_exists", [True, False])
def test_recover_rolls_back_steps_left_open_by_a_killed_process(tmp_path: Path, snapshot_exists: bool) -> None:
    rec = Recorder()
    eng, journal = engine(tmp_path, rec, Outcome(True))
    journal.open_step("vm/vm1", "pack install tools", SNAP, '{"kind": "vm", "name": "vm1"}')
    if snapshot_exists:
        rec.snaps["vm1"] = [SNAP]
    desired = DesiredState({"vm1": VM}, {}, {"tools": PACK}, PoolSpec())
    [message] = eng.recover(desired)
    assert journal.open_steps() == []
    if snapshot_exists:
        assert rec.calls == [("revert", "vm1", SNAP)] and "rolled back to" in message
        rec.snaps["vm1"] = ["somnus-a", "somnus-b", SNAP]
        journal.open_step("vm/vm1", "pack install tools", SNAP, '{"kind": "vm", "name": "vm1"}')
        eng.recover(desired)
        assert rec.snaps["vm1"] == ["somnus-b", SNAP]  # pruned to the VM's retention (2)
    else:
        assert rec.calls == [] and "never taken" in message


class Verdicts:
    """A FailureClassifier double: one fixed category, recording what it was asked."""

    def __init__(self, category: Category) -> None:
        self.category, self.texts = category, []  # type: list[str]

    def classify(self, text: str) -> Triage:
        self.texts.append(text)
        return Triage(self.category, 0.9)


def classified_engine(tmp_path: Path, rec: Recorder, outcome: Outcome, category: Category,
                      slept: list[float]) -> tuple[Engine, Journal, Verdicts]:
    journal = Journal(tmp_path / "journal.sqlite")
    steps = PackSteps(Runner(outcome, rec.calls), {"tools": PACK}, {"tools": "fp1"}, clock=lambda: 0.0)
    verdicts = Verdicts(category)
    eng = Engine(rec, rec, journal, pack_steps=steps, classifier=verdicts,  # type: ignore[arg-type]
                 retry=RetryPolicy(attempts=3, first_delay_s=2.0, factor=4.0), sleep=slept.append)
    return eng, journal, verdicts


def test_a_network_failure_is_retried_with_backoff_each_time_from_a_new_snapshot(tmp_path: Path) -> None:
    rec, slept = Recorder(), []  # type: Recorder, list[float]
    eng, journal, verdicts = classified_engine(
        tmp_path, rec, Outcome(False, "apt", "Temporary failure resolving 'deb.debian.org'"),
        Category.NETWORK_FAILURE, slept)
    [result] = eng.execute(Plan((pack_change(VM),), (), ()))
    assert not result.ok and result.attempts == 3 and result.category is Category.NETWORK_FAILURE
    assert slept == [2.0, 8.0]
    assert [c[0] for c in rec.calls].count("snapshot") == 3
    assert [c[0] for c in rec.calls].count("revert") == 3
    assert "Temporary failure resolving" in verdicts.texts[0]
    events = journal.recent("vm/vm1")
    assert [e.outcome for e in events] == ["rolled back", "retrying", "retrying"]
    assert {e.category for e in events} == {"NETWORK_FAILURE"}


def test_a_permanent_failure_is_rolled_back_once_and_not_retried(tmp_path: Path) -> None:
    rec, slept = Recorder(), []  # type: Recorder, list[float]
    eng, journal, _ = classified_engine(
        tmp_path, rec, Outcome(False, "apt", "No package matching 'nope' is available"),
        Category.DEPENDENCY_MISSING, slept)
    [result] = eng.execute(Plan((pack_change(VM),), (), ()))
    assert not result.ok and result.attempts == 1 and result.category is Category.DEPENDENCY_MISSING
    assert slept == []
    [event] = journal.recent("vm/vm1")
    assert (event.outcome, event.category) == ("rolled back", "DEPENDENCY_MISSING")


def test_a_temporary_provider_failure_is_replanned_and_stops_once_converged(tmp_path: Path) -> None:
    rec, slept = Recorder(fail={"create"}, temporary=True), []  # type: Recorder, list[float]
    eng, journal, verdicts = classified_engine(tmp_path, rec, Outcome(True), Category.DEPENDENCY_MISSING, slept)
    create = Change(BOX.address, Action.CREATE, Disruption.NONE, desired=BOX)
    [result] = eng.execute(Plan((create,), (), ()))
    # The first create failed; the re-plan observes the container running with its spec.
    assert result.ok and result.attempts == 2 and slept == [2.0]
    assert [c[0] for c in rec.calls] == ["create"]
    assert [e.outcome for e in journal.recent("container/box1")] == ["ok", "retrying"]
    assert journal.recent("container/box1")[1].category == "NETWORK_FAILURE"
    assert verdicts.texts == []  # the type decided; the classifier reads only what guests say


def test_a_permanent_provider_failure_is_not_retried_whatever_its_words(tmp_path: Path) -> None:
    rec, slept = Recorder(fail={"create"}), []  # type: Recorder, list[float]
    eng, journal, verdicts = classified_engine(tmp_path, rec, Outcome(True), Category.NETWORK_FAILURE, slept)
    create = Change(BOX.address, Action.CREATE, Disruption.NONE, desired=BOX)
    [result] = eng.execute(Plan((create,), (), ()))
    assert not result.ok and result.attempts == 1 and slept == []
    assert result.category is Category.UNKNOWN and verdicts.texts == []
    [event] = journal.recent("container/box1")
    assert (event.outcome, event.message) == ("failed", "x/box1: create failed: boom")


class DockerdBackAfterOneSnapshot(Recorder):
    """The first snapshot meets dockerd gone; the next works."""

    def snapshot(self, name: str, snapshot: str, description: str) -> str:
        if not self.calls:
            self.calls.append(("snapshot", name, snapshot))
            raise BackendUnavailable("dockerd cannot be reached", kind="container")
        return super().snapshot(name, snapshot, description)


def test_a_pack_step_whose_snapshot_meets_a_daemon_that_went_away_is_retried(tmp_path: Path) -> None:
    rec, slept = DockerdBackAfterOneSnapshot(), []  # type: Recorder, list[float]
    eng, journal, verdicts = classified_engine(tmp_path, rec, Outcome(True), Category.DEPENDENCY_MISSING, slept)
    [result] = eng.execute(Plan((pack_change(BOX),), (), ()))
    assert result.ok and result.attempts == 2 and slept == [2.0] and verdicts.texts == []
    assert [c[0] for c in rec.calls] == ["snapshot", "snapshot", "run"]
    retrying = journal.recent("container/box1")[1]
    assert (retrying.outcome, retrying.category) == ("retrying", "NETWORK_FAILURE")
    assert "no snapshot, so nothing was done: dockerd cannot be reached" in retrying.message


class BusyForLong(Recorder):
    """Every create is refused for now, asking for 30 s; the container never appears."""

    def create(self, c: DesiredContainer, **_: object) -> str:
        self.calls.append(("create", c.name))
        raise TemporaryProviderError("container/box1", "create", "busy", delay=30.0)

    def observe_one(self, name: str) -> None:  # type: ignore[override]
        return None


def test_a_temporary_error_waits_at_least_its_own_delay(tmp_path: Path) -> None:
    rec, slept = BusyForLong(), []  # type: Recorder, list[float]
    eng, _, _ = classified_engine(tmp_path, rec, Outcome(True), Category.UNKNOWN, slept)
    create = Change(BOX.address, Action.CREATE, Disruption.NONE, desired=BOX)
    [result] = eng.execute(Plan((create,), (), ()))
    assert not result.ok and result.attempts == 3
    assert slept == [30.0, 30.0]  # the policy alone would wait 2 s, then 8 s


def test_only_the_guests_failure_text_is_classified(tmp_path: Path) -> None:
    rec, slept = Recorder(), []  # type: Recorder, list[float]
    eng, _, verdicts = classified_engine(tmp_path, rec, Outcome(False, "apt", "E: Unable to locate package nope"),
                                         Category.DEPENDENCY_MISSING, slept)
    eng.execute(Plan((pack_change(VM),), (), ()))
    assert verdicts.texts == ["task 'apt' failed: E: Unable to locate package nope"]  # not the rollback's words


class Recreating(Recorder):
    """A container provider double that can delete; `fail` may name "create"."""

    def delete(self, name: str, **_: object) -> None:
        self._call("delete", name)


RECREATE = Change(BOX.address, Action.REPLACE, Disruption.RECREATE, desired=BOX)
RECREATE_SNAP = snapshot_name("recreate", 0.0)


def test_a_container_recreate_is_guarded_by_a_snapshot_taken_first(tmp_path: Path) -> None:
    rec = Recreating()
    eng, journal = engine(tmp_path, rec, Outcome(True))
    [result] = eng.execute(Plan((RECREATE,), (), ()))
    assert result.ok
    assert [c[0] for c in rec.calls] == ["snapshot", "delete", "create"]
    assert rec.calls[0][2].startswith("somnus-recreate-")
    assert journal.open_steps() == [] and "(snapshot somnus-recreate-" in result.message


def test_a_failed_container_recreate_is_rolled_back_to_its_snapshot(tmp_path: Path) -> None:
    rec = Recreating(fail={"create"})
    eng, journal = engine(tmp_path, rec, Outcome(True))
    [result] = eng.execute(Plan((RECREATE,), (), ()))
    assert not result.ok
    assert [c[0] for c in rec.calls] == ["snapshot", "delete", "create", "restore"]
    assert rec.calls[3][2] == rec.calls[0][2]  # back to the snapshot taken before
    [event] = journal.recent("container/box1")
    assert event.outcome == "rolled back" and f"rolled back to {rec.calls[0][2]}" in event.message
    assert journal.open_steps() == []


def test_only_steps_that_change_a_guest_are_guarded() -> None:
    vm_change = Change(VM.address, Action.UPDATE, Disruption.LIVE, desired=VM)
    assert changes_guest(vm_change) is None
    assert changes_guest(dataclasses.replace(vm_change, disruption=Disruption.RESTART)) == "restart"
    assert changes_guest(Change(VM.address, Action.STOP, Disruption.RESTART, desired=VM)) == "stop"
    assert changes_guest(Change(VM.address, Action.START, Disruption.NONE, desired=VM)) is None
    assert changes_guest(RECREATE) == "recreate"
    assert changes_guest(Change(BOX.address, Action.CREATE, Disruption.NONE, desired=BOX)) is None


class VmGuest(Recorder):
    """A VM provider double: `fail` may name "start" (the first start, inside the step)."""

    def stop(self, name: str) -> None:
        self._call("stop", name)

    def start(self, name: str) -> None:
        try:
            self._call("start", name)
        finally:
            self.fail.discard("start")  # the rollback's start works

    def redefine(self, vm: DesiredVm) -> None:
        self._call("redefine", vm.name)

    def observe_one(self, name: str) -> ActualVm:  # type: ignore[override]
        r = VM.resources
        return ActualVm(name, PowerState.RUNNING, 7, r.vcpus, r.max_vcpus, r.memory, r.max_memory,
                        VmMark(VM.spec_hash, VM.image, VM.disk_size, VM.os_family), balloon=r.memory)


RESTART = Change(VM.address, Action.UPDATE, Disruption.RESTART, desired=VM)


def test_a_vm_restart_is_shut_down_before_its_snapshot_so_the_snapshot_holds_no_running_state(
        tmp_path: Path) -> None:
    rec = VmGuest()
    eng, journal = engine(tmp_path, rec, Outcome(True))
    [result] = eng.execute(Plan((RESTART,), (), ()))
    assert result.ok, result.message
    assert [c[0] for c in rec.calls] == ["stop", "snapshot", "redefine", "stop", "start"]
    assert rec.calls[1][2].startswith("somnus-restart-") and journal.open_steps() == []


def test_a_failed_vm_restart_is_reverted_and_started_again(tmp_path: Path) -> None:
    rec = VmGuest(fail={"start"})
    eng, journal = engine(tmp_path, rec, Outcome(True))
    [result] = eng.execute(Plan((RESTART,), (), ()))
    assert not result.ok and "rolled back to somnus-restart-" in result.message
    assert [c[0] for c in rec.calls] == ["stop", "snapshot", "redefine", "stop", "start", "revert", "start"]
    assert journal.open_steps() == []


def test_removing_a_pack_leaves_the_packages_that_a_pack_the_guest_keeps_declares_too(tmp_path: Path) -> None:
    def pack(name: str, apt: list[str]) -> DesiredPack:
        return DesiredPack(name, CapabilityPackSpec.model_validate({"packages": {"apt": apt}}), SRC)

    given: list[tuple[str, str, list[str]]] = []

    class PackagesRunner:
        def run(self, guest: DesiredVm | DesiredContainer, pack: DesiredPack, action: str,
                on_event: Callable[[str], None]) -> Outcome:
            given.append((pack.name, action, pack.spec.packages.apt))
            return Outcome(True)

    packs = {"base": pack("base", ["git", "python3-venv"]), "browser": pack("browser", ["chromium", "python3-venv"])}
    steps = PackSteps(PackagesRunner(), packs, {"base": "fp1"}, clock=lambda: 0.0)
    rec = Recorder()
    eng = Engine(rec, rec, Journal(tmp_path / "journal.sqlite"), pack_steps=steps)  # type: ignore[arg-type]
    keeps_base = dataclasses.replace(VM, packs=("base",))
    removal = Change(VM.address, Action.PACK_REMOVE, Disruption.NONE, desired=keeps_base, pack="browser")
    [result] = eng.execute(Plan((removal,), (), ()))
    assert result.ok and given == [("browser", "uninstall", ["chromium"])]
    assert packs["browser"].spec.packages.apt == ["chromium", "python3-venv"]  # the declaration is untouched
