"""An apply started from the plan page: one at a time, in a thread of its own, each
step published to the open pages as it starts and ends (`Dashboard.publish`).

It is `somnus apply` without --prune: `converge.run_pass` under the apply lock, with
the dashboard's backends. A VM whose disk the plan replaces is applied only when its
address is in `replace`, the page's ticked consent, as `apply --replace` asks.
"""

from __future__ import annotations

import json
import threading

from somnus_reconciler.engine.executor import StepResult
from somnus_reconciler.passes import converge, prepare
from somnus_reconciler.planning.plan import Change
from somnus_reconciler.planning.plan_text import describe_change
from somnus_reconciler.providers.protocols import ProviderError
from somnus_reconciler.values.diagnostics import InvalidInput
from somnus_reconciler.web.live import Dashboard


class _Published:
    """Engine hook: each step's start and end, as a `step` event of JSON."""

    def __init__(self, dashboard: Dashboard) -> None:
        self._dashboard = dashboard

    def _say(self, change: Change, state: str, message: str = "", seconds: float | None = None) -> None:
        self._dashboard.publish("step", json.dumps({
            "address": change.address, "what": describe_change(change), "state": state,
            "message": message, "seconds": None if seconds is None else round(seconds, 1)}))

    def step_started(self, change: Change) -> None:
        self._say(change, "running")

    def step_event(self, change: Change, line: str) -> None:
        self._say(change, "running", line)

    def step_finished(self, result: StepResult) -> None:
        self._say(result.change, "done" if result.ok else "failed", result.message, result.duration_s)


class ApplyRun:
    def __init__(self, dashboard: Dashboard) -> None:
        self._dashboard = dashboard
        self._busy = threading.Lock()

    def start(self, replace: frozenset[str]) -> bool:
        """Start an apply; False when one started here still runs."""
        if not self._busy.acquire(blocking=False):
            return False
        threading.Thread(target=self._run, args=(replace,), name="apply", daemon=True).start()
        return True

    def _run(self, replace: frozenset[str]) -> None:
        dashboard = self._dashboard
        try:
            desired = prepare.load_desired(dashboard.paths, state_dir=str(dashboard.settings.state_dir))
            report = converge.run_pass(desired, dashboard.backends,
                                       converge.PassOptions(replace=replace, hooks=[_Published(dashboard)]))
            said = {"ok": report.verdict.good, "verdict": report.verdict.value, "errors": list(report.errors)}
        except InvalidInput as e:
            said = {"ok": False, "verdict": "invalid", "errors": [str(d) for d in e.diagnostics]}
        except ProviderError as e:
            said = {"ok": False, "verdict": "error", "errors": [str(e)]}
        finally:
            self._busy.release()
        dashboard.publish("applied", json.dumps(said))
        dashboard.refresh()
