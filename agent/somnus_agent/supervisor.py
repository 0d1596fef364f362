"""Starts, reports on and restarts the monitored processes.

The agent launches each configured process itself, in its own session, so it
can signal the whole process group on ``POST /soft-reboot`` and on shutdown.
Used by :mod:`somnus_agent.runtime`.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import threading
import time

from somnus_agent import config

#: How long a started process must stay alive to count as running.
START_SETTLE_S = 0.2


@dataclasses.dataclass
class _Managed:
    spec: config.ProcessSpec
    popen: subprocess.Popen[bytes] | None


@dataclasses.dataclass(frozen=True)
class RestartOutcome:
    """What a restart achieved: new pids per name, and names that did not make it."""

    pids: dict[str, int | None]
    stop_timed_out: tuple[str, ...]
    not_running: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.stop_timed_out and not self.not_running


def _signal_group(popen: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(popen.pid, sig)
    except ProcessLookupError:
        pass


def stop_process(popen: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """SIGTERM the group, SIGKILL after half the budget; True once it has exited."""
    if popen.poll() is not None:
        return True
    _signal_group(popen, signal.SIGTERM)
    try:
        popen.wait(timeout=timeout_s / 2)
        return True
    except subprocess.TimeoutExpired:
        _signal_group(popen, signal.SIGKILL)
    try:
        popen.wait(timeout=timeout_s / 2)
        return True
    except subprocess.TimeoutExpired:
        return False


class ProcessSupervisor:
    """The set of monitored processes, keyed by name; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: dict[str, _Managed] = {}

    @staticmethod
    def _spawn(spec: config.ProcessSpec) -> subprocess.Popen[bytes] | None:
        try:
            return subprocess.Popen(
                list(spec.argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError:
            return None

    def apply(self, specs: tuple[config.ProcessSpec, ...], stop_timeout_s: float = 10.0) -> None:
        """Converge on ``specs``: stop removed or changed processes, start new ones."""
        wanted = {s.name: s for s in specs}
        with self._lock:
            for name in list(self._procs):
                managed = self._procs[name]
                if wanted.get(name) != managed.spec:
                    if managed.popen is not None:
                        stop_process(managed.popen, stop_timeout_s)
                    del self._procs[name]
            for name, spec in wanted.items():
                if name not in self._procs:
                    self._procs[name] = _Managed(spec=spec, popen=self._spawn(spec))

    def status(self) -> list[dict[str, object]]:
        """``[{name, pid, running}]`` in configuration order."""
        with self._lock:
            return [
                {
                    "name": name,
                    "pid": m.popen.pid if m.popen else None,
                    "running": m.popen is not None and m.popen.poll() is None,
                }
                for name, m in self._procs.items()
            ]

    def restart_all(self, stop_timeout_s: float = 10.0) -> RestartOutcome:
        """Stop every process, start it again and confirm it stays up."""
        stop_timed_out: list[str] = []
        with self._lock:
            for name, m in self._procs.items():
                if m.popen is not None and not stop_process(m.popen, stop_timeout_s):
                    stop_timed_out.append(name)
            for name, m in self._procs.items():
                if name not in stop_timed_out:
                    m.popen = self._spawn(m.spec)
            time.sleep(START_SETTLE_S)
            not_running = [
                name for name, m in self._procs.items()
                if name not in stop_timed_out and (m.popen is None or m.popen.poll() is not None)
            ]
            pids = {name: (m.popen.pid if m.popen else None) for name, m in self._procs.items()}
        return RestartOutcome(pids, tuple(stop_timed_out), tuple(not_running))

    def stop_all(self, stop_timeout_s: float = 5.0) -> None:
        """Stop every process; called when the agent shuts down."""
        with self._lock:
            for m in self._procs.values():
                if m.popen is not None:
                    stop_process(m.popen, stop_timeout_s)
            self._procs.clear()
