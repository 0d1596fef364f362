"""The long-running reconcile loop behind `somnus watch` and `somnus gitops`.

A `Loop` runs passes (`converge.run_pass`) with the libvirt connection and the
Docker client kept open between them, and turns each pass into typed events
(`loop_events`): `Planned` when its plan starts, `StepFinished` per finished
step, and `Reconciled` (or `PassAborted`) at its end. `passes.watch` and
`passes.gitops` call `Loop.run_pass` when a trigger comes; the CLI
(`cli/loop_commands.py`) passes in `emit`, a view from `cli/loop_views.py`.

Stopping: SIGINT or SIGTERM sets `Loop.stop`; the engine lets the current step
finish or roll back and starts no other, the loop returns, the CLI exits 0.
After a pass that changed or found something, the history index
(`history.index_new_events`) catches up in a background thread.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from somnus_reconciler import settings as settings_mod
from somnus_reconciler.engine.executor import StepResult
from somnus_reconciler.passes import converge, loop_events
from somnus_reconciler.passes.backup_schedule import BackupScheduler
from somnus_reconciler.passes.converge import PassReport
from somnus_reconciler.planning.plan import Change, Plan
from somnus_reconciler.providers import backends as backends_mod
from somnus_reconciler.providers.backends import Backends
from somnus_reconciler.providers.protocols import ProviderError
from somnus_reconciler.semantic.triage import FailureClassifier
from somnus_reconciler.values.desired import DesiredState
from somnus_reconciler.values.diagnostics import InvalidInput


class _StepEvents:
    """Engine hook turning finished steps into `StepFinished` events."""

    def __init__(self, emit: loop_events.Emit) -> None:
        self._emit = emit

    def step_started(self, change: Change) -> None:
        pass

    def step_event(self, change: Change, line: str) -> None:
        pass

    def step_finished(self, result: StepResult) -> None:
        change = result.change
        self._emit(loop_events.StepFinished(
            at=time.time(), address=change.address, action=change.action.value, pack=change.pack,
            drift=change.drift, ok=result.ok, message=result.message, duration_s=round(result.duration_s, 3),
            category=result.category.value if result.category else None, attempts=result.attempts,
        ))


@dataclass
class Loop:
    """Passes with the backends kept open between them; see the module docstring."""

    emit: loop_events.Emit
    prune: bool = False
    state_dir: str | None = None
    classifier: FailureClassifier | None = None
    parallelism: int = converge.DEFAULT_PARALLELISM
    stop: threading.Event = field(default_factory=threading.Event)
    _backends: Backends | None = None
    _indexer: threading.Thread | None = None
    _backups: BackupScheduler | None = None

    def install_signal_handlers(self) -> None:
        """SIGINT and SIGTERM stop the loop after the current step (no KeyboardInterrupt)."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda _signum, _frame: self.stop.set())

    def run_pass(self, load: Callable[[], DesiredState], trigger: loop_events.Trigger, *,
                 check_packs: bool = False) -> PassReport:
        """Load, plan and apply once; emits `Planned` and `Reconciled`, or `PassAborted`."""
        try:
            desired = load()
        except InvalidInput as e:
            return self._aborted(trigger, PassReport(invalid=tuple(str(d) for d in e.diagnostics)))

        def on_plan(plan: Plan) -> bool:
            self.emit(loop_events.Planned(time.time(), trigger, len(plan.changes)))
            return True

        options = converge.PassOptions(
            prune=self.prune, check_packs=check_packs, revision=trigger.revision,
            hooks=[_StepEvents(self.emit)], on_plan=on_plan, should_stop=self.stop.is_set,
            classifier=self.classifier, parallelism=self.parallelism,
        )
        started = time.time()
        try:
            report = converge.run_pass(desired, self._open(desired), options)
        except InvalidInput as e:
            return self._aborted(trigger, PassReport(invalid=tuple(str(d) for d in e.diagnostics)))
        except ProviderError as e:
            self._close()  # a daemon went away: connect afresh next time
            return self._aborted(trigger, PassReport(unavailable=str(e)))
        self.emit(_reconciled(report, trigger, started))
        self._schedule_backups(desired, report)
        if report.results or report.reported_drift or report.recovered:
            self._index_history(self._open(desired).settings.state_dir)
        return report

    def _schedule_backups(self, desired: DesiredState, report: PassReport) -> None:
        """Hand the scheduler what it backs up, and the VMs a pack step changed."""
        if self._backups is None:
            self._backups = BackupScheduler(self.emit, self.stop, state_dir=self.state_dir)
        changed = {r.change.name for r in report.results
                   if r.ok and r.change.kind == "vm" and r.change.action.is_guest_step}
        self._backups.update(desired, changed)

    def _aborted(self, trigger: loop_events.Trigger, report: PassReport) -> PassReport:
        self.emit(loop_events.PassAborted(time.time(), trigger, report.verdict, report.errors))
        return report

    def _open(self, desired: DesiredState) -> Backends:
        """The open backends, made anew when the Pool now names other daemons or state."""
        settings = settings_mod.resolve(desired.pool, state_dir=self.state_dir)
        if self._backends is not None and self._backends.settings != settings:
            self._close()
        if self._backends is None:
            self._backends = backends_mod.open_backends(desired, state_dir=self.state_dir)
        return self._backends

    def _close(self) -> None:
        if self._backends is not None:
            self._backends.close()
            self._backends = None

    def _index_history(self, state_dir: Path) -> None:
        """Let the history index catch up in the background (the model loads once)."""
        if self._indexer is not None and self._indexer.is_alive():
            return

        def index() -> None:
            from somnus_reconciler.semantic import history

            try:
                history.index_new_events(state_dir)
            except Exception as e:  # the index is a convenience; `history --rebuild-index` mends it
                print(f"somnus: history index not updated: {e}", file=sys.stderr)

        self._indexer = threading.Thread(target=index, name="history-index", daemon=True)
        self._indexer.start()

    def close(self) -> None:
        if self._indexer is not None:
            self._indexer.join(timeout=60)
        self._close()


def _reconciled(report: PassReport, trigger: loop_events.Trigger, started: float) -> loop_events.Reconciled:
    at = time.time()
    return loop_events.Reconciled(
        at=at, trigger=trigger, outcome=report.verdict, changes=len(report.plan.changes),
        failed=len(report.failed), drift_corrected=sum(1 for r in report.results if r.change.drift and r.ok),
        drift_reported=len(report.reported_drift), recovered=report.recovered,
        duration_s=round(at - started, 3), errors=report.errors,
    )


def wait(stop: threading.Event, seconds: float, *wake: threading.Event) -> None:
    """Sleep up to `seconds`, waking early on `stop` or any of `wake`."""
    deadline = time.monotonic() + seconds
    while not stop.is_set() and not any(w.is_set() for w in wake):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        stop.wait(min(remaining, 0.2))
