"""The agents' figures over the last hour, sampled by `somnus serve` while it runs.

A thread asks the agent of every running VM that carries one (`agent_health.probe`,
all at once; the VMs are those of the latest overview) every `interval_s` for its
CPU, memory, disk and load, and keeps one hour of answers per VM. The object page
draws them (`charts`); the answers also give the overview its agent conditions
(`Dashboard.note_agents`); each round is published as a `samples` event, so that an
open page redraws. A VM whose agent does not answer gets no sample that round: a
gap, never a made-up zero.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from somnus_reconciler.passes import agent_health, status
from somnus_reconciler.passes.agent_health import AgentHealth, AgentStats
from somnus_reconciler.web.live import Dashboard

WINDOW_S = 3600.0
DEFAULT_INTERVAL_S = 15.0


@dataclass(frozen=True)
class Sample:
    """One answer of a VM's agent."""

    at: float  # time.time()
    cpu_percent: float
    memory_used: int  # bytes
    memory_total: int
    disk_used: int  # bytes, of the guest's root file system
    disk_total: int
    load_1m: float

    @classmethod
    def of(cls, at: float, stats: AgentStats) -> Sample:
        return cls(at, stats.cpu_percent, stats.memory.used, stats.memory.total, stats.disk.used, stats.disk.total,
                   stats.load.one_minute)


class GuestSamples:
    """The last `window_s` of samples of each VM, and the thread that takes them."""

    def __init__(self, dashboard: Dashboard, *, interval_s: float = DEFAULT_INTERVAL_S,
                 window_s: float = WINDOW_S, clock: Callable[[], float] = time.time) -> None:
        self._dashboard = dashboard
        self.interval_s = interval_s
        self._window_s = window_s
        self._clock = clock
        self._series: dict[str, deque[Sample]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def series(self, vm: str) -> tuple[Sample, ...]:
        """The VM's samples of the last `window_s`, oldest first (none for a VM asked no more)."""
        since = self._clock() - self._window_s
        with self._lock:
            return tuple(s for s in self._series.get(vm, ()) if s.at >= since)

    def record(self, vm: str, sample: Sample) -> None:
        with self._lock:
            kept = self._series.setdefault(vm, deque())
            kept.append(sample)
            while kept and kept[0].at < sample.at - self._window_s:
                kept.popleft()

    def sample_once(self) -> int:
        """Ask every agent once; how many answered."""
        vms = [vm for vm in self._dashboard.overview.vms if vm.running and status.carries_agent(vm)]
        answers: dict[str, AgentHealth] = {}
        if vms:
            state_dir = self._dashboard.settings.state_dir
            with ThreadPoolExecutor(max_workers=min(16, len(vms))) as pool:
                healths = pool.map(lambda vm: agent_health.probe(vm, state_dir), vms)
                answers = {vm.name: health for vm, health in zip(vms, healths) if health is not None}
        at = self._clock()
        answered = 0
        for name, health in answers.items():
            if health.connected and health.report is not None:
                self.record(name, Sample.of(at, health.report.stats))
                answered += 1
        self._dashboard.note_agents(answers)
        self._dashboard.publish("samples", str(answered))
        return answered

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="guest-samples", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._dashboard.computed.wait(0.2):  # the VMs to ask are the overview's
            if self._stop.is_set():
                return
        self.sample_once()
        while not self._stop.wait(self.interval_s):
            self.sample_once()

