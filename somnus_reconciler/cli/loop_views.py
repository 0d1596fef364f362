"""Rendering the reconcile loop's events (`passes.loop_events`) for `watch` and `gitops`.

`loop_commands` picks a view with `for_output("text" | "json")` and hands its
`show` to the `Loop` as `emit`:
- `TextView`: one line per pass (the end of each), for a terminal or a log;
- `JsonLinesView`: one JSON object per event and line, flushed at once, with the
  keys and values docs/output.md documents (tests/integration/event_stream.py and
  bench/watch.py read them).
"""

from __future__ import annotations

import datetime
import json
import sys
from typing import Protocol, TextIO

from somnus_reconciler.passes import loop_events
from somnus_reconciler.passes.converge import PassVerdict

JsonValue = str | int | float | bool | None | list[str]


class LoopView(Protocol):
    """What `Loop.emit` is given: a view's `show`."""

    def show(self, event: loop_events.LoopEvent) -> None: ...


class TextView:
    """`event_line` of each event that has one."""

    def __init__(self, out: TextIO | None = None) -> None:
        self._out = out or sys.stdout

    def show(self, event: loop_events.LoopEvent) -> None:
        if (line := event_line(event)) is not None:
            self._out.write(line + "\n")
            self._out.flush()


class JsonLinesView:
    """`event_json` of every event, one per line."""

    def __init__(self, out: TextIO | None = None) -> None:
        self._out = out or sys.stdout

    def show(self, event: loop_events.LoopEvent) -> None:
        self._out.write(json.dumps(event_json(event)) + "\n")
        self._out.flush()  # a reader follows the stream as it comes


def for_output(output: str, out: TextIO | None = None) -> LoopView:
    """The view `-o` names: "json" or "text"."""
    return JsonLinesView(out) if output == "json" else TextView(out)


# -- text -----------------------------------------------------------------------------
def event_line(event: loop_events.LoopEvent) -> str | None:
    """One line per pass, at its end (`Reconciled`, `PassAborted`, `FetchFailed`); None for the others.

    e.g. `14:02:11  change vm.yaml               converged  1 change(s), 0 failed in 1.37s`
    """
    if isinstance(event, (loop_events.Planned, loop_events.StepFinished)):
        return None
    if isinstance(event, loop_events.FetchFailed):
        return _line(event.at, "fetch" + _at_revision(event.revision), PassVerdict.ERROR, event.error)
    if isinstance(event, loop_events.BackedUp):
        return _line(event.at, f"backup {event.address}", "done" if event.ok else "failed",
                     f"{event.backup}: {event.message}" if event.backup else event.message)
    what = _what(event.trigger)
    if isinstance(event, loop_events.PassAborted) or event.outcome in (PassVerdict.INVALID, PassVerdict.ERROR):
        return _line(event.at, what, event.outcome, "; ".join(event.errors))
    drift = [f"{count} drift {word}" for count, word in ((event.drift_corrected, "corrected"),
                                                         (event.drift_reported, "reported")) if count]
    detail = ", ".join([f"{event.changes} change(s), {event.failed} failed", *drift])
    detail += f" in {event.duration_s:.2f}s" + (": " + "; ".join(event.errors) if event.errors else "")
    return _line(event.at, what, event.outcome, detail)


def _line(at: float, what: str, outcome: str, detail: str) -> str:
    clock = datetime.datetime.fromtimestamp(at).strftime("%H:%M:%S")
    return f"{clock}  {what:<28} {outcome:<10} {detail}"


def _what(trigger: loop_events.Trigger) -> str:
    """The trigger, the first three files' names (and how many more), the revision's first 12 digits."""
    what: str = trigger.reason
    if trigger.files:
        names = [f.rsplit("/", 1)[-1] for f in trigger.files]
        what += " " + ",".join(names[:3]) + (f" +{len(names) - 3}" if len(names) > 3 else "")
    return what + _at_revision(trigger.revision)


def _at_revision(revision: str | None) -> str:
    return f" @{revision[:12]}" if revision else ""


# -- JSON -----------------------------------------------------------------------------
def event_json(event: loop_events.LoopEvent) -> dict[str, JsonValue]:
    """The event as docs/output.md documents it (key order included)."""
    if isinstance(event, loop_events.Planned):
        return {"event": "planned", "at": event.at, **_trigger_json(event.trigger), "changes": event.changes}
    if isinstance(event, loop_events.StepFinished):
        return {
            "event": "step", "at": event.at, "address": event.address, "action": event.action,
            "pack": event.pack, "drift": event.drift, "ok": event.ok, "message": event.message,
            "durationS": event.duration_s, "category": event.category, "attempts": event.attempts,
        }
    if isinstance(event, loop_events.Reconciled):
        return {
            "event": "reconciled", "at": event.at, **_trigger_json(event.trigger),
            "outcome": event.outcome.value, "changes": event.changes, "failed": event.failed,
            "driftCorrected": event.drift_corrected, "driftReported": event.drift_reported,
            "recovered": list(event.recovered), "durationS": event.duration_s, "errors": list(event.errors),
        }
    if isinstance(event, loop_events.BackedUp):
        return {"event": "backup", "at": event.at, "address": event.address, "ok": event.ok,
                "backup": event.backup, "message": event.message}
    if isinstance(event, loop_events.PassAborted):
        return {"event": "reconciled", "at": event.at, **_trigger_json(event.trigger),
                "outcome": event.outcome.value, "errors": list(event.errors)}
    return {"event": "reconciled", "at": event.at, "trigger": "fetch", "outcome": PassVerdict.ERROR.value,
            "errors": [event.error], "revision": event.revision}


def _trigger_json(trigger: loop_events.Trigger) -> dict[str, JsonValue]:
    return {"trigger": trigger.reason, "triggeredAt": trigger.at, "files": list(trigger.files),
            "revision": trigger.revision}
