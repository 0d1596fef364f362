"""`somnus apply`: one converge pass over the manifests under some paths.

Loads them, opens the backends for their Pool, runs `converge.run_pass` (which
takes the apply lock, recovers, plans and executes) and closes the backends.
The caller renders through `options` (`on_plan`, engine hooks, `on_lock_wait`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from somnus_reconciler.passes import converge, prepare
from somnus_reconciler.providers import backends as backends_mod


def apply(paths: Sequence[Path], options: converge.PassOptions, *, state_dir: str | None) -> converge.PassReport:
    """InvalidInput before any change when the manifests or the plan are refused."""
    desired = prepare.load_desired(paths, state_dir=state_dir)
    backends = backends_mod.open_backends(desired, state_dir=state_dir)
    try:
        return converge.run_pass(desired, backends, options)
    finally:
        backends.close()
