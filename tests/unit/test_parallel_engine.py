"""The engine converges objects at the same time (issue 14, item 1), with recording
doubles: a barrier proves that steps of different objects overlap, the bound is kept,
one object's steps keep their order, and a failure stops only its own object."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner

from somnus_reconciler.cli.commands import cli
from somnus_reconciler.engine.executor import Engine
from somnus_reconciler.engine.pack_step import PackSteps
from somnus_reconciler.journal import Journal
from somnus_reconciler.passes import converge
from somnus_reconciler.planning.plan import Action, Change, Disruption, Plan
from somnus_reconciler.values.desired import DesiredContainer, DesiredPack, DesiredVm
from tests.unit.test_engine import PACK, VM, Outcome, Recorder


class ConcurrentRunner:
    """Runs "playbooks" that take `seconds`, counting how many run at once; `wait` is a
    barrier each run must pass (it breaks, and the run raises, unless enough overlap)."""

    def __init__(self, *, seconds: float = 0.0, wait: threading.Barrier | None = None,
                 fails: Callable[[str, str], bool] = lambda guest, pack: False) -> None:
        self.seconds, self.wait, self.fails = seconds, wait, fails
        self.log: list[tuple[str, str]] = []
        self.running = self.most = 0
        self._lock = threading.Lock()

    def run(self, guest: DesiredVm | DesiredContainer, pack: DesiredPack, action: str,
            on_event: Callable[[str], None]) -> Outcome:
        with self._lock:
            self.log.append((guest.name, pack.name))
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            if self.wait is not None:
                self.wait.wait()
            time.sleep(self.seconds)
        finally:
            with self._lock:
                self.running -= 1
        return Outcome(not self.fails(guest.name, pack.name), "verify", "exit 1")


def _vms(count: int) -> list[DesiredVm]:
    return [dataclasses.replace(VM, name=f"vm{i}", packs=("tools", "more")) for i in range(count)]


def _plan(vms: list[DesiredVm], packs: tuple[str, ...] = ("tools",)) -> Plan:
    return Plan(tuple(Change(vm.address, Action.PACK_INSTALL, Disruption.NONE, desired=vm, pack=pack)
                      for vm in vms for pack in packs), (), ())


def _engine(tmp_path: Path, runner: ConcurrentRunner) -> Engine:
    recorder = Recorder()
    steps = PackSteps(runner, {"tools": PACK, "more": dataclasses.replace(PACK, name="more")},
                      {"tools": "fp1", "more": "fp2"}, clock=time.time)
    return Engine(recorder, recorder, Journal(tmp_path / "journal.sqlite"), pack_steps=steps)  # type: ignore[arg-type]


def test_steps_of_different_objects_overlap(tmp_path: Path) -> None:
    runner = ConcurrentRunner(wait=threading.Barrier(2, timeout=10))  # broken unless both run at once
    results = _engine(tmp_path, runner).execute(_plan(_vms(2)), parallelism=2)
    assert [r.ok for r in results] == [True, True], [r.message for r in results]


def test_no_more_objects_than_the_bound_run_at_once(tmp_path: Path) -> None:
    runner = ConcurrentRunner(seconds=0.05, wait=threading.Barrier(3, timeout=10))
    results = _engine(tmp_path, runner).execute(_plan(_vms(6)), parallelism=3)
    assert all(r.ok for r in results) and runner.most == 3


def test_one_objects_steps_keep_their_order_and_results_come_in_plan_order(tmp_path: Path) -> None:
    runner = ConcurrentRunner(seconds=0.01)
    plan = _plan(_vms(4), packs=("tools", "more"))
    results = _engine(tmp_path, runner).execute(plan, parallelism=4)
    assert [r.change for r in results] == list(plan.changes)
    for vm in _vms(4):
        assert [pack for guest, pack in runner.log if guest == vm.name] == ["tools", "more"]


def test_a_failure_stops_only_its_own_objects_later_steps(tmp_path: Path) -> None:
    runner = ConcurrentRunner(fails=lambda guest, pack: guest == "vm0")
    results = _engine(tmp_path, runner).execute(_plan(_vms(3), packs=("tools", "more")), parallelism=3)
    by_step = {(r.change.name, r.change.pack): r for r in results}
    assert not by_step[("vm0", "tools")].ok and by_step[("vm0", "more")].message.startswith("skipped")
    assert all(by_step[(vm, pack)].ok for vm in ("vm1", "vm2") for pack in ("tools", "more"))
    assert ("vm0", "more") not in runner.log


def test_the_clis_default_is_the_passes_default() -> None:
    shown = CliRunner().invoke(cli, ["apply", "--help"]).output
    assert f"default: {converge.DEFAULT_PARALLELISM}" in shown and converge.DEFAULT_PARALLELISM == 10
