"""`somnus apply`: one converge pass over the manifests under some paths.

Loads them, opens the backends for their Pool, runs `converge.run_pass` (which
takes the apply lock, recovers, plans and executes) and closes the backends.
The caller renders through `options` (`on_plan`, engine hooks, `on_lock_wait`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from somnus_reconciler.passes import converge, prepare
from somnus_reconciler.providers.docker_listing import PendingListing


def apply(paths: Sequence[Path], options: converge.PassOptions, *, state_dir: str | None,
          listing: PendingListing | None = None) -> converge.PassReport:
    """InvalidInput before any change when the manifests or the plan are refused
    (`listing`: see `prepare.load_and_open`)."""
    desired, backends = prepare.load_and_open(paths, state_dir=state_dir, listing=listing)
    try:
        return converge.run_pass(desired, backends, options)
    finally:
        backends.close()
