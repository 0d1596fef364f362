"""cli/loop_views.py: the exact text lines and JSON lines `watch` and `gitops` print.

The JSON keys and values are the ones docs/output.md documents and
tests/integration/event_stream.py and bench/watch.py read.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator

import pytest

from somnus_reconciler.cli import loop_views
from somnus_reconciler.passes import loop_events
from somnus_reconciler.passes.converge import PassVerdict

AT = 1795290668.2  # 19:51:08 UTC
REVISION = "0123456789abcdef0123456789abcdef01234567"
CHANGE = loop_events.Trigger("change", 1795290666.8, ("/home/me/m/vm.yaml",))
MANY_FILES = loop_events.Trigger("change", 1795290666.8, tuple(f"/m/{name}.yaml" for name in "abcde"))
GITOPS = loop_events.Trigger("revision", 1795290666.8, revision=REVISION)

PLANNED = loop_events.Planned(1795290666.83, CHANGE, 1)
STEP = loop_events.StepFinished(1795290668.1, "vm/coder-1", "pack install", "tools", False, False,
                                "task 'apt' failed", 1.234, "NETWORK_FAILURE", 3)
CONVERGED = loop_events.Reconciled(AT, CHANGE, PassVerdict.CONVERGED, changes=1, failed=0, drift_corrected=0,
                                   drift_reported=0, recovered=(), duration_s=1.37, errors=())
FAILED = loop_events.Reconciled(AT, MANY_FILES, PassVerdict.FAILED, changes=3, failed=1, drift_corrected=2,
                                drift_reported=1, recovered=("vm/a: rolled back",), duration_s=12.346,
                                errors=("vm/coder-1: boom",))
UNREACHABLE = loop_events.Reconciled(AT, GITOPS, PassVerdict.ERROR, changes=2, failed=0, drift_corrected=0,
                                     drift_reported=0, recovered=(), duration_s=0.5, errors=("libvirtd: gone",))
INVALID = loop_events.PassAborted(AT, CHANGE, PassVerdict.INVALID, ("/home/me/m/vm.yaml:3: vm/x: bad", "second"))
FETCH_FAILED = loop_events.FetchFailed(AT, "git fetch: fatal: no such repository", REVISION)


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Text lines show local time: make it UTC here."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("event, line", [
    (PLANNED, None),
    (STEP, None),
    (CONVERGED, "19:51:08  change vm.yaml               converged  1 change(s), 0 failed in 1.37s"),
    (FAILED, "19:51:08  change a.yaml,b.yaml,c.yaml +2 failed     3 change(s), 1 failed, 2 drift corrected, "
             "1 drift reported in 12.35s: vm/coder-1: boom"),
    (UNREACHABLE, "19:51:08  revision @0123456789ab       error      libvirtd: gone"),
    (INVALID, "19:51:08  change vm.yaml               invalid    /home/me/m/vm.yaml:3: vm/x: bad; second"),
    (FETCH_FAILED, "19:51:08  fetch @0123456789ab          error      git fetch: fatal: no such repository"),
])
def test_text_line_per_pass(event: loop_events.LoopEvent, line: str | None) -> None:
    assert loop_views.event_line(event) == line
    out = io.StringIO()
    loop_views.for_output("text", out).show(event)
    assert out.getvalue() == ("" if line is None else line + "\n")


@pytest.mark.parametrize("event, expected", [
    (PLANNED, '{"event": "planned", "at": 1795290666.83, "trigger": "change", "triggeredAt": 1795290666.8, '
              '"files": ["/home/me/m/vm.yaml"], "revision": null, "changes": 1}'),
    (STEP, '{"event": "step", "at": 1795290668.1, "address": "vm/coder-1", "action": "pack install", '
           '"pack": "tools", "drift": false, "ok": false, "message": "task \'apt\' failed", "durationS": 1.234, '
           '"category": "NETWORK_FAILURE", "attempts": 3}'),
    (CONVERGED, '{"event": "reconciled", "at": 1795290668.2, "trigger": "change", "triggeredAt": 1795290666.8, '
                '"files": ["/home/me/m/vm.yaml"], "revision": null, "outcome": "converged", "changes": 1, '
                '"failed": 0, "driftCorrected": 0, "driftReported": 0, "recovered": [], "durationS": 1.37, '
                '"errors": []}'),
    (FAILED, '{"event": "reconciled", "at": 1795290668.2, "trigger": "change", "triggeredAt": 1795290666.8, '
             '"files": ["/m/a.yaml", "/m/b.yaml", "/m/c.yaml", "/m/d.yaml", "/m/e.yaml"], "revision": null, '
             '"outcome": "failed", "changes": 3, "failed": 1, "driftCorrected": 2, "driftReported": 1, '
             '"recovered": ["vm/a: rolled back"], "durationS": 12.346, "errors": ["vm/coder-1: boom"]}'),
    (INVALID, '{"event": "reconciled", "at": 1795290668.2, "trigger": "change", "triggeredAt": 1795290666.8, '
              '"files": ["/home/me/m/vm.yaml"], "revision": null, "outcome": "invalid", '
              '"errors": ["/home/me/m/vm.yaml:3: vm/x: bad", "second"]}'),
    (FETCH_FAILED, '{"event": "reconciled", "at": 1795290668.2, "trigger": "fetch", "outcome": "error", '
                   '"errors": ["git fetch: fatal: no such repository"], '
                   '"revision": "0123456789abcdef0123456789abcdef01234567"}'),
])
def test_json_line_per_event(event: loop_events.LoopEvent, expected: str) -> None:
    out = io.StringIO()
    loop_views.for_output("json", out).show(event)
    assert out.getvalue() == expected + "\n"
    assert json.loads(out.getvalue()) == loop_views.event_json(event)


def test_json_revision_under_gitops() -> None:
    assert loop_views.event_json(UNREACHABLE)["revision"] == REVISION
    assert loop_views.event_json(UNREACHABLE)["trigger"] == "revision"
