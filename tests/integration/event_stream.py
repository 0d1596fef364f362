"""A `somnus watch` / `somnus gitops` process run by a test, and its `-o json` events.

A reader thread (testkit/output_lines.py) collects the JSON lines; `wait_for` blocks
until an event matches. `stop` sends SIGTERM and returns the exit code, and
hands the events and stderr to the session's secret scan (secret_scan.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from testkit.output_lines import OutputLines
from tests.integration import secret_scan

Event = dict[str, Any]


class EventStream:
    def __init__(self, args: Sequence[str], state_dir: Path) -> None:
        self.args = tuple(args)
        env = dict(os.environ, SOMNUS_STATE_DIR=str(state_dir), SOMNUS_SHUTDOWN_TIMEOUT="15")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "somnus_reconciler", *args, "-o", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        assert self.proc.stdout is not None
        self._lines: OutputLines[Event] = OutputLines(self.proc.stdout, json.loads)
        self.events = self._lines.items

    def wait_for(self, matches: Callable[[Event], bool], timeout_s: float = 120.0, *, after: int = 0) -> Event:
        """The first event at index >= `after` that `matches`; AssertionError after `timeout_s`
        or once the process has ended without one."""
        index = self._lines.wait_for(matches, timeout_s, after=after)
        if index is not None:
            return self.events[index]
        ended = self.proc.poll() is not None
        stderr = self.proc.stderr.read() if ended and self.proc.stderr else ""
        raise AssertionError(
            f"no matching event within {timeout_s:.0f}s (exit code {self.proc.poll()}); "
            f"events: {json.dumps(self.events[after:], indent=1)[-3000:]}\nstderr: {stderr[-3000:]}"
        )

    def reconciled(self, timeout_s: float = 120.0, *, after: int = 0, **fields: Any) -> Event:
        """The next "reconciled" event with these field values."""
        return self.wait_for(lambda e: e["event"] == "reconciled" and all(e.get(k) == v for k, v in fields.items()),
                             timeout_s, after=after)

    def mark(self) -> int:
        """An index for `after=`: only events from now on."""
        return self._lines.mark()

    def stop(self, timeout_s: float = 120.0) -> int:
        """SIGTERM, then the exit code; what it printed goes to the session's secret scan."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self._lines.join(timeout_s=5)
            command = " ".join(self.args)
            secret_scan.SESSION.record_output(f"events of somnus {command}",
                                              "\n".join(json.dumps(e) for e in self.events))
            if self.proc.stderr is not None and not self.proc.stderr.closed:
                secret_scan.SESSION.record_output(f"stderr of somnus {command}", self.proc.stderr.read())
