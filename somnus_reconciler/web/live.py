"""Keeps the overview current while `somnus serve` runs, and tells the open pages.

A thread computes the overview (`overview.compute`) at start, whenever a file under
the manifest paths is written (watchfiles, as `somnus watch` does) and at every
resync interval (out-of-band changes: a VM stopped by hand). Each new overview has a
higher `version`; every page's event stream (`subscribe`) is handed ("overview",
that number), and the page fetches its rows again; an apply started from the page
publishes its steps the same way (`publish`). The backends stay open between
computations. The agents' latest answers (`note_agents`, from `guest_samples`) go into
each computation; a VM whose agent connected or went away is recomputed at once.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import watchfiles

from somnus_reconciler.passes.agent_health import AgentHealth
from somnus_reconciler.providers import backends as backends_mod
from somnus_reconciler.providers.protocols import ProviderError
from somnus_reconciler.settings import Settings
from somnus_reconciler.web import overview as overview_mod

DEFAULT_RESYNC_S = 10.0
Published = tuple[str, str]  # (event name, one line of data)


class Dashboard:
    """The latest overview and the pages listening for the next one."""

    def __init__(self, paths: Sequence[Path], backends: backends_mod.Backends, *,
                 resync_s: float = DEFAULT_RESYNC_S) -> None:
        self.paths = list(paths)
        self._backends = backends
        self._resync_s = resync_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._listeners: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue[Published]]] = []
        self.version = 0
        self.overview = overview_mod.Overview((), ("starting",), 0.0)
        self._agents: dict[str, AgentHealth] = {}
        self.computed = threading.Event()  # set once the first overview is there

    def refresh(self) -> None:
        """Compute the overview now and tell every listener."""
        try:
            latest = overview_mod.compute(self.paths, self._backends, dict(self._agents))
        except ProviderError as e:
            latest = overview_mod.Overview((), (str(e),), self.overview.at)
        with self._lock:
            self.overview, self.version = latest, self.version + 1
            version = self.version
        self.computed.set()
        self.publish("overview", str(version))

    def note_agents(self, answers: Mapping[str, AgentHealth]) -> None:
        """The agents' latest answers, by VM name; the overview is recomputed when one of
        them connected or went away since the last ones."""
        before = {name: health.connected for name, health in self._agents.items()}
        self._agents = dict(answers)
        if {name: health.connected for name, health in answers.items()} != before:
            self.refresh()

    def publish(self, event: str, data: str) -> None:
        """Hand (event, data) to every page's stream; `data` is one line (JSON or a number)."""
        with self._lock:
            listeners = list(self._listeners)
        for loop, queue in listeners:
            loop.call_soon_threadsafe(queue.put_nowait, (event, data))

    @property
    def backends(self) -> backends_mod.Backends:
        return self._backends

    @property
    def settings(self) -> Settings:
        """The settings the backends were opened with (state directory, journal)."""
        return self._backends.settings

    def subscribe(self) -> asyncio.Queue[Published]:
        """A queue of what is published, for a page's event stream (call in the event loop)."""
        queue: asyncio.Queue[Published] = asyncio.Queue()
        with self._lock:
            self._listeners.append((asyncio.get_running_loop(), queue))
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Published]) -> None:
        with self._lock:
            self._listeners = [(loop, q) for loop, q in self._listeners if q is not queue]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dashboard", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._backends.close()

    def _run(self) -> None:
        self.refresh()
        watched = [str(p) for p in self.paths if p.exists()]
        if not watched:  # a gitops checkout not made yet: its loop's passes and the resync refresh it
            while not self._stop.wait(self._resync_s):
                self.refresh()
            return
        # Each yield is a batch of written files, or the resync interval passing without one.
        for _ in watchfiles.watch(*watched, stop_event=self._stop, rust_timeout=int(self._resync_s * 1000),
                                  yield_on_timeout=True, debounce=200, step=50):
            if self._stop.is_set():
                return
            self.refresh()
