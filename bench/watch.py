"""`somnus watch` latency: from a manifest file being written to its plan starting,
and to the (no-op) reconcile finishing, with N VMs (defined, shut off) + N containers.

    python bench/watch.py [--objects 100] [--edits 20]

Converges the objects with `somnus apply`, starts `somnus watch -o json` on the
directory (resync interval far away), then `--edits` times rewrites one manifest
file with a new comment: the desired state is unchanged, so each reconcile is a
full no-op pass (load, observe libvirt and Docker, plan). For each edit it takes
the time from just before the write to the watcher's "planned" event and to its
"reconciled" event (both carry time.time() stamps), and prints median and p95.
For comparison, Flux and Argo CD poll every 1 to 3 minutes by default.
Everything it creates is named `bench-noop-*` (the layout of bench/noop.py) and
removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.noop import manifests, somnus  # noqa: E402
from testkit.backups import remove_backups  # noqa: E402


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


class WatchEvents:
    """The JSON events `somnus watch -o json` prints, read in a thread as they come."""

    def __init__(self, watcher: subprocess.Popen[str]) -> None:
        self.events: list[dict[str, object]] = []
        self._watcher = watcher
        self._arrived = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._watcher.stdout is not None
        for line in self._watcher.stdout:
            with self._arrived:
                self.events.append(json.loads(line))
                self._arrived.notify_all()

    def next_reconciled(self, after: int) -> int:
        """Index of the first `reconciled` event from `after` on, waited for up to 60 s."""
        events = self.events
        with self._arrived:
            while not any(e["event"] == "reconciled" for e in events[after:]):
                if not self._arrived.wait(60):
                    raise SystemExit(f"no reconcile within 60 s; events: {events[after:]}")
            return next(i for i in range(after, len(events)) if events[i]["event"] == "reconciled")


def time_edits(path: Path, stream: WatchEvents, edits: int) -> tuple[list[float], list[float]]:
    """Seconds from each write of `path` to the plan's start and to the reconcile's end."""
    events = stream.events
    to_plan: list[float] = []
    to_done: list[float] = []
    stream.next_reconciled(0)  # the first pass, at start
    body = path.read_text()
    for edit in range(edits):
        time.sleep(0.5)
        mark = len(events)
        written = time.time()
        path.write_text(f"# edit {edit}\n{body}")
        done = stream.next_reconciled(mark)
        planned = next(e for e in events[mark:done] if e["event"] == "planned")
        assert events[done]["outcome"] == "in sync", events[done]
        to_plan.append(float(planned["at"]) - written)  # type: ignore[arg-type]
        to_done.append(float(events[done]["at"]) - written)  # type: ignore[arg-type]
    return to_plan, to_done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=100, help="VMs + containers, half each")
    parser.add_argument("--edits", type=int, default=20)
    args = parser.parse_args()
    n = args.objects // 2

    with tempfile.TemporaryDirectory(prefix="bench-watch-") as tmp:
        root = Path(tmp)
        env = dict(os.environ, SOMNUS_STATE_DIR=str(root / "state"))
        docs = manifests(n, n)
        (root / "m").mkdir()
        path = root / "m" / "objects.yaml"
        path.write_text(yaml.safe_dump_all(docs))
        started = time.perf_counter()
        applied = somnus("apply", str(root / "m"), "-y", env=env)
        if applied.returncode != 0:
            raise SystemExit(applied.stdout + applied.stderr)
        print(f"converged {n} VMs + {n} containers in {time.perf_counter() - started:.1f} s")

        watcher = subprocess.Popen(
            [sys.executable, "-m", "somnus_reconciler", "watch", str(root / "m"), "--interval", "1h", "-o", "json"],
            stdout=subprocess.PIPE, text=True, env=env, cwd=REPO,
        )
        try:
            to_plan, to_done = time_edits(path, WatchEvents(watcher), args.edits)
        finally:
            watcher.terminate()
            watcher.wait(timeout=60)
            path.write_text(yaml.safe_dump_all(docs[:1]))  # the Pool alone: prune everything else
            somnus("apply", str(root / "m"), "--prune", "-y", env=env)
            remove_backups("bench-noop")

    print(f"{args.edits} edits of one file, {n} VMs + {n} containers, no-op reconciles:")
    print(f"  write -> plan starts:     median {statistics.median(to_plan) * 1000:6.0f} ms"
          f"   p95 {percentile(to_plan, 0.95) * 1000:6.0f} ms")
    print(f"  write -> reconcile done:  median {statistics.median(to_done) * 1000:6.0f} ms"
          f"   p95 {percentile(to_done, 0.95) * 1000:6.0f} ms")


if __name__ == "__main__":
    main()
