"""One guest by hand: `somnus snapshots`, `rollback` and `soft-reboot`, as text."""

from __future__ import annotations

import datetime

from somnus_reconciler.cli import views
from somnus_reconciler.passes.rollback import RollbackDone, SnapshotListing
from somnus_reconciler.providers.agent_client import SoftRebootConfirmation


class SnapshotsHuman(views.View):
    def snapshots(self, found: SnapshotListing) -> None:
        """One line each, oldest first: name, when, and (VMs only) libvirt's description."""
        for snap in found.snapshots:
            at = datetime.datetime.fromtimestamp(snap.created).strftime("%Y-%m-%d %H:%M:%S")
            detail = snap.description if found.guest.kind == "vm" else ""
            self.echo(f"{snap.name:<56} {at}  {detail}".rstrip())
        if not found.snapshots:
            self.echo(f"no snapshots of {found.guest.address}")


class RollbackHuman(views.HumanView):
    def lock_wait(self, message: str) -> None:
        """An apply holds the lock: who, on stderr."""
        self.echo_err(message)

    def done(self, rollback: RollbackDone) -> None:
        self.echo(f"{rollback.guest.address}: reverted to {rollback.snapshot}")


class SoftRebootHuman(views.View):
    def result(self, address: str, result: SoftRebootConfirmation) -> None:
        verdict = "confirmed" if result.confirmed else "NOT confirmed"
        self.echo(f"{address}: soft reboot {verdict} in {result.duration_s:.1f}s: {result.message}")
