"""A guest-changing step between a snapshot and its record or rollback (SPEC section 6).

Every step that changes a guest goes through `guarded`: pack steps (`pack_step`)
and the resource steps `resource_step.changes_guest` names (a VM's restart or
stop, a container's recreate). The step is open in the journal from before the
snapshot until it is recorded or rolled back, so that `recovery` can roll back a
step a killed process left open. On any failure after the snapshot the guest is
reverted to it; either way the guest's snapshots are pruned to its retention.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable

from somnus_reconciler.engine import retry
from somnus_reconciler.engine.snapshots import DEFAULT_RETAIN, GuestSnapshots, snapshot_name
from somnus_reconciler.planning.plan import Change
from somnus_reconciler.providers.protocols import ProviderError
from somnus_reconciler.values.desired import DesiredContainer, DesiredVm
from somnus_reconciler.values.outcome import Outcome


def guarded(snapshots: GuestSnapshots, change: Change, step: str, act: Callable[[], retry.Attempt], *,
            slug: str | None = None, clock: Callable[[], float] = time.time,
            shut_down: Callable[[], None] | None = None, after_rollback: Callable[[], None] | None = None,
            ) -> retry.Attempt:
    """snapshot -> `act` -> record | roll back. `step` names it in the journal ("pack install
    tools", "restart"); `slug` (default: `step`) goes into the snapshot's name.

    `shut_down` runs before the snapshot (a VM's restart or stop: the snapshot is then of
    the disk and definition alone, which reverts even after vCPUs were hot-plugged; a
    running snapshot would not); `after_rollback` after a revert (start it again)."""
    want = change.desired
    assert isinstance(want, (DesiredVm, DesiredContainer))
    snapshot = snapshot_name(slug or step, clock())
    journal = snapshots.journal
    step_id = journal.open_step(change.address, step, snapshot, json.dumps({"kind": change.kind, "name": want.name}))
    try:
        if shut_down is not None:
            shut_down()
        snapshots.of(change.kind).snapshot(want.name, snapshot, f"before {step}")
    except ProviderError as e:
        journal.close_step(step_id, Outcome.FAILED)
        return retry.failed(e, message=f"no snapshot, so nothing was done: {e}")
    journal.step_phase(step_id, "snapshot taken")
    attempt = act()
    journal.step_phase(step_id, "acted")
    retain = want.snapshot_retain if isinstance(want, DesiredVm) else DEFAULT_RETAIN
    if attempt.ok:
        journal.close_step(step_id, Outcome.OK)
        snapshots.prune(change.kind, want.name, retain)
        return dataclasses.replace(attempt, message=f"{attempt.message} (snapshot {snapshot})")
    try:
        snapshots.revert(change.kind, want.name, want if isinstance(want, DesiredContainer) else None, snapshot)
        if after_rollback is not None:
            after_rollback()
        rolled = f"rolled back to {snapshot}"
    except ProviderError as e:
        rolled = f"ROLLBACK FAILED ({e}); the snapshot {snapshot} is kept"
    journal.close_step(step_id, Outcome.ROLLED_BACK)
    snapshots.prune(change.kind, want.name, retain)
    return dataclasses.replace(attempt, outcome=Outcome.ROLLED_BACK, message=f"{attempt.message}; {rolled}")
