"""`somnus watch PATH...`: reconcile on every change under PATH and on a resync interval.

A watchfiles thread turns file changes into `Trigger`s on a queue. watchfiles
groups the changes of one save (an editor writes a temporary file and renames
it) into one batch: it yields once `step_ms` pass without another change. The
main thread waits on the queue until the next resync is due; changes that
arrive while a pass runs are merged into the next one. A resync (every
`interval_s`, and the first pass) also runs the packs' verify commands, to find
drift nobody announced. A file that does not parse is reported and nothing is
changed; the watcher keeps running.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from somnus_reconciler.passes import prepare
from somnus_reconciler.passes.loop import Loop
from somnus_reconciler.passes.loop_events import Trigger


def watch(paths: Sequence[Path], loop: Loop, *, interval_s: float, step_ms: int = 50) -> None:
    """Run until `loop.stop` is set; see the module docstring."""
    changes: queue.Queue[Trigger] = queue.Queue()
    watcher = threading.Thread(target=_watch_files, args=(paths, changes, loop.stop, step_ms),
                               name="watchfiles", daemon=True)
    watcher.start()
    trigger = Trigger("start", time.time())
    next_resync = time.monotonic()
    while not loop.stop.is_set():
        resync = trigger.reason in ("start", "resync")
        loop.run_pass(lambda: prepare.load_desired(paths, state_dir=loop.state_dir), trigger, check_packs=resync)
        if resync:
            next_resync = time.monotonic() + interval_s
        next_trigger = _next(changes, loop.stop, next_resync)
        if next_trigger is None:
            break
        trigger = next_trigger
    watcher.join(timeout=5)


def _next(changes: queue.Queue[Trigger], stop: threading.Event, resync_at: float) -> Trigger | None:
    """The next change (all queued ones merged), a resync when it is due, None once stopped."""
    while not stop.is_set():
        remaining = resync_at - time.monotonic()
        if remaining <= 0:
            return Trigger("resync", time.time())
        try:
            first = changes.get(timeout=min(remaining, 0.2))
        except queue.Empty:
            continue
        files = list(first.files)
        while True:
            try:
                files += changes.get_nowait().files
            except queue.Empty:
                break
        return Trigger("change", first.at, tuple(dict.fromkeys(files)))
    return None


def _watch_files(paths: Sequence[Path], changes: queue.Queue[Trigger], stop: threading.Event, step_ms: int) -> None:
    import watchfiles

    for batch in watchfiles.watch(*paths, step=step_ms, stop_event=stop, raise_interrupt=False,
                                  watch_filter=watchfiles.DefaultFilter()):
        seen = time.time()
        files = tuple(sorted({path for _, path in batch}))
        changes.put(Trigger("change", seen, files))
