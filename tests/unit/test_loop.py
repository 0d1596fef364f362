"""passes/loop.py and gitops.py without daemons: which events a pass emits, how a
`PassReport` says how it ended, what gitops does with a fetch that fails.

`converge.run_pass` is replaced by a double that walks the plan through the
hooks, as the engine does; the real pass runs in tests/integration.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from somnus_reconciler.engine.executor import StepResult
from somnus_reconciler.journal import Journal
from somnus_reconciler.passes import converge, gitops, loop_events
from somnus_reconciler.passes.converge import PassReport, PassVerdict
from somnus_reconciler.passes.loop import Loop
from somnus_reconciler.planning.plan import Action, Change, Disruption, Plan
from somnus_reconciler.providers.backends import Backends
from somnus_reconciler.providers.protocols import BackendUnavailable
from somnus_reconciler.semantic.triage import Category
from somnus_reconciler.values.desired import DesiredState
from somnus_reconciler.values.diagnostics import Diagnostic, InvalidInput
from somnus_reconciler.values.model import PoolSpec

UPDATE = Change("vm/a", Action.UPDATE, Disruption.LIVE, drift=True)
PACK = Change("container/b", Action.PACK_INSTALL, Disruption.NONE, pack="tools")
DONE = StepResult(UPDATE, True, "done", 1.23456)
BOOM = StepResult(PACK, False, "task 'apt' failed", 2.0, Category.NETWORK_FAILURE, 3)
TRIGGER = loop_events.Trigger("change", 5.0, ("/m/vm.yaml",))
NOTHING = DesiredState({}, {}, {}, PoolSpec())


def plan(*changes: Change, unreachable: tuple[str, ...] = ()) -> Plan:
    return Plan(changes, (), (), unreachable)


@pytest.mark.parametrize("report, verdict, errors", [
    (PassReport(), PassVerdict.IN_SYNC, ()),
    (PassReport(plan(UPDATE), results=(DONE,)), PassVerdict.CONVERGED, ()),
    (PassReport(plan(UPDATE, PACK), results=(DONE, BOOM)), PassVerdict.FAILED, ("container/b: task 'apt' failed",)),
    (PassReport(plan(UPDATE, PACK), results=(BOOM,), stopped=True), PassVerdict.STOPPED,
     ("container/b: task 'apt' failed",)),
    (PassReport(plan(UPDATE, unreachable=("libvirtd: gone",)), results=(DONE,)), PassVerdict.ERROR,
     ("libvirtd: gone",)),
    (PassReport(invalid=("m.yaml:1: bad",)), PassVerdict.INVALID, ("m.yaml:1: bad",)),
    (PassReport(unavailable="dockerd: gone"), PassVerdict.ERROR, ("dockerd: gone",)),
])
def test_a_report_says_how_its_pass_ended(report: PassReport, verdict: PassVerdict,
                                          errors: tuple[str, ...]) -> None:
    assert (report.verdict, report.errors) == (verdict, errors)
    assert report.verdict.good == (verdict in ("in sync", "converged"))


RunPass = Callable[[DesiredState, Backends, converge.PassOptions], PassReport]


def run(monkeypatch: pytest.MonkeyPatch, run_pass: RunPass,
        load: Callable[[], DesiredState] = lambda: NOTHING) -> tuple[list[loop_events.LoopEvent], PassReport]:
    """One `Loop.run_pass` with `run_pass` as `converge.run_pass`; its events and its report."""
    monkeypatch.setattr(converge, "run_pass", run_pass)
    backends = SimpleNamespace(settings=SimpleNamespace(state_dir=Path("/nonexistent")))
    monkeypatch.setattr(Loop, "_open", lambda self, desired: backends)
    monkeypatch.setattr(Loop, "_index_history", lambda self, state_dir: None)
    events: list[loop_events.LoopEvent] = []
    report = Loop(events.append).run_pass(load, TRIGGER)
    return events, report


def test_a_pass_emits_planned_a_step_per_result_and_reconciled(monkeypatch: pytest.MonkeyPatch) -> None:
    def run_pass(desired: DesiredState, backends: Backends, options: converge.PassOptions) -> PassReport:
        the_plan = plan(UPDATE, PACK)
        assert options.on_plan(the_plan)
        for result in (DONE, BOOM):
            for hook in options.hooks:
                hook.step_finished(result)
        return PassReport(the_plan, recovered=("vm/c: rolled back",), results=(DONE, BOOM))

    events, report = run(monkeypatch, run_pass)
    assert report.verdict is PassVerdict.FAILED
    planned, done, boom, reconciled = events
    assert isinstance(planned, loop_events.Planned) and (planned.trigger, planned.changes) == (TRIGGER, 2)
    assert isinstance(done, loop_events.StepFinished) and isinstance(boom, loop_events.StepFinished)
    assert (done.address, done.action, done.drift, done.ok, done.duration_s) == ("vm/a", "update", True, True, 1.235)
    assert (boom.pack, boom.category, boom.attempts) == ("tools", "NETWORK_FAILURE", 3)
    assert isinstance(reconciled, loop_events.Reconciled)
    assert (reconciled.outcome, reconciled.changes, reconciled.failed, reconciled.drift_corrected) == (
        PassVerdict.FAILED, 2, 1, 1)
    assert (reconciled.recovered, reconciled.errors) == (("vm/c: rolled back",), ("container/b: task 'apt' failed",))


def test_invalid_manifests_abort_the_pass_before_any_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    def load() -> DesiredState:
        raise InvalidInput((Diagnostic(None, "vm/x", "bad"), Diagnostic(None, None, "worse")))

    events, report = run(monkeypatch, lambda *args: pytest.fail("no pass runs"), load)
    assert events == [loop_events.PassAborted(events[0].at, TRIGGER, PassVerdict.INVALID, ("vm/x: bad", "worse"))]
    assert (report.verdict, report.invalid) == (PassVerdict.INVALID, ("vm/x: bad", "worse"))


def test_an_unreachable_daemon_aborts_the_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    def run_pass(desired: DesiredState, backends: Backends, options: converge.PassOptions) -> PassReport:
        raise BackendUnavailable("connection refused", kind="container")

    events, report = run(monkeypatch, run_pass)
    [aborted] = events
    assert isinstance(aborted, loop_events.PassAborted)
    assert (aborted.outcome, report.verdict) == (PassVerdict.ERROR, PassVerdict.ERROR)
    assert aborted.errors == (report.unavailable,) and "connection refused" in aborted.errors[0]


class StopAfterOneEvent:
    """What `gitops.follow` needs of a Loop; stops at the first event."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.events: list[loop_events.LoopEvent] = []

    def emit(self, event: loop_events.LoopEvent) -> None:
        self.events.append(event)
        self.stop.set()

    def run_pass(self, load: Callable[[], DesiredState], trigger: loop_events.Trigger, *,
                 check_packs: bool = False) -> PassReport:
        raise AssertionError("nothing was fetched, nothing is applied")


def test_a_failed_fetch_is_an_event_and_applies_nothing(tmp_path: Path) -> None:
    loop = StopAfterOneEvent()
    source = gitops.GitSource(f"file://{tmp_path}/no-such-repository", "main", ".")
    gitops.follow(source, loop, state_dir=tmp_path / "state", interval_s=60,  # type: ignore[arg-type]
                  fetch_now=threading.Event())
    [event] = loop.events
    assert isinstance(event, loop_events.FetchFailed)
    assert event.revision is None
    assert event.error.startswith("git fetch") and "no-such-repository" in event.error


class ScriptedLoop(StopAfterOneEvent):
    """Answers each pass with the next report of `reports` (calling `load`, which checks the
    revision out), and stops after the last."""

    state_dir = None

    def __init__(self, reports: list[Callable[[], PassReport]]) -> None:
        super().__init__()
        self.reports = reports
        self.triggers: list[loop_events.Trigger] = []

    def run_pass(self, load: Callable[[], DesiredState], trigger: loop_events.Trigger, *,
                 check_packs: bool = False) -> PassReport:
        self.triggers.append(trigger)
        with contextlib.suppress(InvalidInput):  # no manifests in these revisions
            load()
        report = self.reports.pop(0)()
        if not self.reports:
            self.stop.set()
        return report


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                               "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}).stdout.strip()


def test_gitops_quarantines_an_invalid_revision_and_applies_the_good_one_again(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "--quiet", "--initial-branch=main")
    git(repo, "commit", "--quiet", "--allow-empty", "-m", "good")
    good = git(repo, "rev-parse", "HEAD")

    def push_a_bad_revision() -> PassReport:
        git(repo, "commit", "--quiet", "--allow-empty", "-m", "bad")
        return PassReport()

    loop = ScriptedLoop([push_a_bad_revision, lambda: PassReport(invalid=("ws.yaml:1: bad",)), PassReport])
    gitops.follow(gitops.GitSource(f"file://{repo}", "main", "."), loop,  # type: ignore[arg-type]
                  state_dir=tmp_path / "state", interval_s=0.01, fetch_now=threading.Event())
    bad = git(repo, "rev-parse", "HEAD")
    assert [(t.reason, t.revision) for t in loop.triggers] == [("revision", good), ("revision", bad),
                                                                ("revision", good)]
    with Journal(tmp_path / "state" / "journal.sqlite") as journal:
        key = gitops.GitSource(f"file://{repo}", "main", ".").key
        states = {r.revision: r.state for r in journal.revisions(key)}
        assert (states[good], states[bad]) == ("good", "quarantined")
        assert [r.revision for r in journal.revisions(key) if r.state == "good"][0] == good
    with contextlib.closing(sqlite3.connect(tmp_path / "state" / "journal.sqlite")) as db:
        assert db.execute("SELECT reason FROM revisions WHERE revision = ?", (bad,)).fetchall() == [
            ("ws.yaml:1: bad",)]
