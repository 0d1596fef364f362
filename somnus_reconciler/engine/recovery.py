"""Roll back the pack steps a killed process left open in the journal.

`Engine.recover` calls `recover` at the start of every apply pass, under the
apply lock (passes.converge ends the killed run's playbooks first). A step open
in the journal was interrupted somewhere between its snapshot and its record:
the guest is reverted to that snapshot when it was taken, and the step closed.
"""

from __future__ import annotations

import json

from somnus_reconciler.engine.snapshots import DEFAULT_RETAIN, GuestSnapshots
from somnus_reconciler.journal import OpenStep
from somnus_reconciler.providers.protocols import ProviderError
from somnus_reconciler.values.desired import DesiredState
from somnus_reconciler.values.outcome import Outcome


def recover(snapshots: GuestSnapshots, desired: DesiredState) -> list[str]:
    """Roll back every step left open; returns what was done, one line per step.

    A container is made anew from its snapshot with its declared spec, so
    `desired` is needed; one no longer declared keeps its snapshot for `rollback`.
    """
    return [_recover_step(snapshots, step, desired) for step in snapshots.journal.open_steps()]


def _recover_step(snapshots: GuestSnapshots, step: OpenStep, desired: DesiredState) -> str:
    journal = snapshots.journal
    detail = json.loads(step.detail or "{}")
    kind, name = detail.get("kind", ""), detail.get("name", "")
    message = f"{step.address}: {step.step} was interrupted (pid {step.pid})"
    if step.snapshot is None or not any(s.name == step.snapshot for s in snapshots.listed(kind, name)):
        journal.close_step(step.id, Outcome.FAILED)
        outcome, said = Outcome.FAILED, f"{message}; its snapshot was never taken, nothing to roll back"
    else:
        try:
            snapshots.revert(kind, name, desired.containers.get(name) if kind != "vm" else None, step.snapshot)
            journal.close_step(step.id, Outcome.ROLLED_BACK)
            vm = desired.vms.get(name) if kind == "vm" else None
            snapshots.prune(kind, name, vm.snapshot_retain if vm is not None else DEFAULT_RETAIN)
            outcome, said = Outcome.ROLLED_BACK, f"{message}; rolled back to {step.snapshot}"
        except ProviderError as e:
            outcome, said = Outcome.FAILED, f"{message}; rollback failed: {e}"
    journal.record(step.address, "recover", outcome, said)
    return said
