"""The container listing of a one-shot `diff` or `apply`, read by a child process
while this one loads the manifests.

Such a command lists every container once, and importing the Docker SDK for it
(requests, urllib3, paramiko) costs ~150 ms, as long as reading and validating
150 manifests. `start()` runs `python -m somnus_reconciler.providers.docker_listing`,
which imports docker, makes the same `GET /containers/json?all=1` call as
`DockerProvider.observe` and prints the answer as JSON; on another core, that
happens while this process loads the manifests. `DockerProvider.observe` takes the
answer once, if it came; otherwise (dockerd down, a slow child, a listing that
may be stale) it lists by itself, as the watch loop always does with its client
kept open.

A listing taken before `apply` held the lock may miss a change another command
made since: `converge.run_pass` drops it unless the lock's last holder let go
before the listing began (`journal.ApplyLock.previous_release`) and nothing was
recovered. `diff` takes no lock: its listing is a moment's view, as any is.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

# A child slower than this is not waited for: observe lists by itself.
_TAKE_TIMEOUT_S = 10.0


class PendingListing:
    """A listing under way in a child process of ours."""

    def __init__(self, process: subprocess.Popen[bytes], started_at: float) -> None:
        self._process = process
        self.started_at = started_at  # time.time() before the child was started

    def take(self) -> list[dict[str, Any]] | None:
        """The container summaries, or None when the child could not list them."""
        try:
            out, _ = self._process.communicate(timeout=_TAKE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.cancel()
            return None
        if self._process.returncode != 0:
            return None
        try:
            summaries = json.loads(out)
        except ValueError:
            return None
        return summaries if isinstance(summaries, list) else None

    def cancel(self) -> None:
        """End the child (ours, by its pid) if it still runs."""
        if self._process.poll() is None:
            self._process.kill()
        self._process.communicate()


_first: PendingListing | None = None  # started by `start_first`, for this process's command


def start_first() -> None:
    """Start the listing at once, before the command line is parsed (`cli.main`, for a
    `diff` or `apply`): importing the command's code takes ~35 ms it can list in."""
    global _first
    _first = start()


def started() -> PendingListing | None:
    """The listing `start_first` started, else one started now."""
    global _first
    listing, _first = _first, None
    return listing or start()


def start() -> PendingListing | None:
    """A child listing the containers of DOCKER_HOST (or the default socket); None if
    no process could be started (then observe lists by itself)."""
    started_at = time.time()
    try:
        process = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    except OSError:
        return None
    return PendingListing(process, started_at)


def _main() -> int:
    import docker

    try:
        summaries = docker.from_env(version="auto").api.containers(all=True)
    except docker.errors.DockerException:
        return 1  # the parent lists by itself and reports why it cannot
    json.dump(summaries, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
