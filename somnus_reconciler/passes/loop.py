"""The long-running reconcile loop behind `somnus watch` and `somnus gitops`.

A `Loop` runs passes (`converge.run_pass`) with the libvirt connection and the
Docker client kept open between them, and turns each pass into events: plain
dicts, written by the CLI as JSON lines (`-o json`) or as one line of text per
pass (`views.loop_event_line`). Every pass emits "planned" (when its plan
starts: the latency that bench/watch.py measures) and "reconciled" (its
outcome: in sync, converged, failed, invalid, error, stopped); `-o json` also
gets a "step" event per finished step.

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
from typing import Any

from somnus_reconciler import settings as settings_mod
from somnus_reconciler.engine.executor import StepResult
from somnus_reconciler.passes import converge, prepare
from somnus_reconciler.planning.plan import Change, Plan
from somnus_reconciler.providers import backends as backends_mod
from somnus_reconciler.providers.backends import Backends
from somnus_reconciler.providers.protocols import ProviderError
from somnus_reconciler.semantic.triage import FailureClassifier
from somnus_reconciler.values.desired import DesiredState
from somnus_reconciler.values.diagnostics import InvalidInput

LoopEvent = dict[str, Any]
Emit = Callable[[LoopEvent], None]


@dataclass(frozen=True)
class Trigger:
    reason: str  # start | change | resync | revision
    at: float  # time.time() when it was seen: a file written, a revision fetched
    files: tuple[str, ...] = ()
    revision: str | None = None


@dataclass(frozen=True)
class PassOutcome:
    outcome: str  # in sync | converged | failed | invalid | error | stopped
    report: converge.PassReport | None = None
    message: str = ""

    @property
    def good(self) -> bool:
        """Valid and nothing failed (a step rolled back makes a revision bad)."""
        return self.outcome in ("in sync", "converged")


class _StepEvents:
    """Engine hook turning finished steps into "step" events."""

    def __init__(self, emit: Emit) -> None:
        self._emit = emit

    def step_started(self, change: Change) -> None:
        pass

    def step_event(self, change: Change, line: str) -> None:
        pass

    def step_finished(self, result: StepResult) -> None:
        self._emit({
            "event": "step", "at": time.time(), "address": result.change.address,
            "action": result.change.action.value, "pack": result.change.pack, "drift": result.change.drift,
            "ok": result.ok, "message": result.message, "durationS": round(result.duration_s, 3),
            "category": result.category.value if result.category else None, "attempts": result.attempts,
        })


@dataclass
class Loop:
    emit: Emit
    prune: bool = False
    state_dir: str | None = None
    classifier: FailureClassifier | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    _backends: Backends | None = None
    _indexer: threading.Thread | None = None

    def install_signal_handlers(self) -> None:
        """SIGINT and SIGTERM stop the loop after the current step (no KeyboardInterrupt)."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda _signum, _frame: self.stop.set())

    def run_pass(self, load: Callable[[], DesiredState], trigger: Trigger, *,
                 check_packs: bool = False) -> PassOutcome:
        """Load, plan and apply once; emits "planned" and "reconciled" (or an error)."""
        base: LoopEvent = {"trigger": trigger.reason, "triggeredAt": trigger.at,
                       "files": list(trigger.files), "revision": trigger.revision}
        try:
            desired = load()
        except InvalidInput as e:
            errors = [str(d) for d in e.diagnostics]
            self.emit({"event": "reconciled", "at": time.time(), **base, "outcome": "invalid", "errors": errors})
            return PassOutcome("invalid", message="; ".join(errors))

        def on_plan(plan: Plan) -> bool:
            self.emit({"event": "planned", "at": time.time(), **base, "changes": len(plan.changes)})
            return True

        options = converge.PassOptions(
            prune=self.prune, check_packs=check_packs, revision=trigger.revision,
            hooks=[_StepEvents(self.emit)], on_plan=on_plan, should_stop=self.stop.is_set,
            classifier=self.classifier,
        )
        started = time.time()
        try:
            report = converge.run_pass(desired, self._open(desired), options)
        except InvalidInput as e:
            errors = [str(d) for d in e.diagnostics]
            self.emit({"event": "reconciled", "at": time.time(), **base, "outcome": "invalid", "errors": errors})
            return PassOutcome("invalid", message="; ".join(errors))
        except ProviderError as e:
            self._close()  # a daemon went away: connect afresh next time
            self.emit({"event": "reconciled", "at": time.time(), **base, "outcome": "error", "errors": [str(e)]})
            return PassOutcome("error", message=str(e))
        failed = report.failed
        outcome = ("stopped" if report.stopped else "failed" if failed
                   else "error" if report.plan.unreachable  # the reachable half went on
                   else "converged" if report.results else "in sync")
        self.emit({
            "event": "reconciled", "at": time.time(), **base, "outcome": outcome,
            "changes": len(report.plan.changes), "failed": len(failed),
            "driftCorrected": sum(1 for r in report.results if r.change.drift and r.ok),
            "driftReported": len(report.reported_drift),
            "recovered": list(report.recovered), "durationS": round(time.time() - started, 3),
            "errors": [f"{r.change.address}: {r.message}" for r in failed] + list(report.plan.unreachable),
        })
        if report.results or report.reported_drift or report.recovered:
            self._index_history(self._open(desired).settings.state_dir)
        return PassOutcome(outcome, report)

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


def wait(stop: threading.Event, seconds: float, *wake: threading.Event) -> None:
    """Sleep up to `seconds`, waking early on `stop` or any of `wake`."""
    deadline = time.monotonic() + seconds
    while not stop.is_set() and not any(w.is_set() for w in wake):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        stop.wait(min(remaining, 0.2))
