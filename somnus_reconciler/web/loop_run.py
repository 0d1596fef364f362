"""`somnus serve --watch` and `--gitops REPO`: the loop of `somnus watch` or `somnus
gitops` in the same process, on the page.

`passes.watch.watch` or `passes.gitops.follow` runs in a thread with a `Loop` of its
own (its own backends, the apply lock, pack checks at each resync). Each loop event
goes to the open pages as a `loop` event (JSON: its kind, the object if any, one
line); after each pass the overview is computed again, so a correction shows at once.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from somnus_reconciler.passes import gitops, loop_events
from somnus_reconciler.passes import watch as watch_mod
from somnus_reconciler.passes.loop import Loop
from somnus_reconciler.web.live import Dashboard


class LoopRun:
    """A loop in a thread of its own, its events published; `follow` runs it until it stops."""

    def __init__(self, dashboard: Dashboard, follow: Callable[[Loop], None], *, state_dir: str | None) -> None:
        self._dashboard = dashboard
        self._follow = follow
        self._loop = Loop(self._emit, state_dir=state_dir)
        self._thread: threading.Thread | None = None

    @classmethod
    def watching(cls, dashboard: Dashboard, paths: Sequence[Path], *, interval_s: float,
                 state_dir: str | None) -> LoopRun:
        return cls(dashboard, lambda loop: watch_mod.watch(list(paths), loop, interval_s=interval_s),
                   state_dir=state_dir)

    @classmethod
    def following(cls, dashboard: Dashboard, source: gitops.GitSource, *, interval_s: float,
                  state_dir: Path) -> LoopRun:
        return cls(dashboard, lambda loop: gitops.follow(source, loop, state_dir=state_dir, interval_s=interval_s,
                                                         fetch_now=threading.Event()), state_dir=str(state_dir))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._follow, args=(self._loop,), name="loop", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._loop.stop.set()  # the current step finishes or rolls back first
        if self._thread is not None:
            self._thread.join(timeout=600)
        self._loop.close()

    def _emit(self, event: loop_events.LoopEvent) -> None:
        self._dashboard.publish("loop", json.dumps({
            "kind": type(event).__name__, "address": getattr(event, "address", None), "line": summary(event)}))
        if isinstance(event, (loop_events.Reconciled, loop_events.PassAborted)):
            self._dashboard.refresh()


def summary(event: loop_events.LoopEvent) -> str:
    """One line for the page's loop activity."""
    if isinstance(event, loop_events.Planned):
        return f"{event.trigger.reason}: {event.changes} change(s) planned"
    if isinstance(event, loop_events.StepFinished):
        what = f"{event.action} {event.pack}" if event.pack else event.action
        how = "done" if event.ok else f"failed: {event.message}"
        return f"{event.address}: {what}{' (drift)' if event.drift else ''}: {how}"
    if isinstance(event, loop_events.Reconciled):
        return (f"{event.trigger.reason}: {event.outcome}, {event.changes} change(s), {event.failed} failed, "
                f"{event.drift_corrected} drift corrected, {event.drift_reported} reported")
    if isinstance(event, loop_events.PassAborted):
        return f"{event.trigger.reason}: {event.outcome}: {'; '.join(event.errors)}"
    if isinstance(event, loop_events.BackedUp):
        return f"{event.address}: backup {'taken' if event.ok else 'failed'}: {event.message}"
    return f"fetch failed: {event.error}"
