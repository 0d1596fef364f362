"""Snapshots of guests, VMs and containers alike: name, take, list, revert, prune.

`pack_step` guards every pack step with one and reverts to it on failure;
`recovery` reverts to the one a killed process left behind. A VM reverts in
place; a container is made anew from its committed image, so its pack records
in the journal follow it to its new ID.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from somnus_reconciler.journal import Journal
from somnus_reconciler.providers.protocols import ContainerProvider, ProviderError, VmProvider
from somnus_reconciler.values.actual import Snapshot
from somnus_reconciler.values.desired import DesiredContainer

DEFAULT_RETAIN = 5  # containers have no snapshot policy in their spec, nor has an undeclared VM


class Snapshots(Protocol):
    """What both providers offer for snapshots."""

    def snapshot(self, name: str, snapshot: str, description: str) -> object: ...
    def snapshots(self, name: str) -> list[Snapshot]: ...
    def delete_snapshot(self, name: str, snapshot: str) -> None: ...


def snapshot_name(step: str, at: float) -> str:
    """somnus-<step>-<timestamp> (SPEC section 6), usable as a libvirt name and a Docker tag."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(at)) + f"{int(at * 1000) % 1000:03d}Z"
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in step)
    return f"somnus-{safe}-{stamp}"


@dataclass(frozen=True)
class GuestSnapshots:
    """The snapshots of both kinds of guest, by kind ("vm" or "container") and name."""

    vms: VmProvider
    containers: ContainerProvider
    journal: Journal

    def of(self, kind: str) -> Snapshots:
        return self.vms if kind == "vm" else self.containers

    def listed(self, kind: str, name: str) -> list[Snapshot]:
        """Oldest first; empty when the backend cannot say."""
        try:
            return self.of(kind).snapshots(name)
        except ProviderError:
            return []

    def revert(self, kind: str, name: str, container: DesiredContainer | None, snapshot: str) -> None:
        """Put the guest back as it was at `snapshot`; ProviderError when that fails.

        A container is made anew from the snapshot with `container`, its declared
        spec: without one it cannot be, and stays as it is.
        """
        if kind == "vm":
            self.vms.revert(name, snapshot)
            return
        if container is None:
            raise ProviderError(f"container/{name}", "rollback", "no longer declared; use somnus rollback")
        replaced = self.containers.observe_one(name)  # the container the snapshot was taken of
        restored = self.containers.restore(container, snapshot)
        self.journal.move_container_packs(name, replaced.container_id if replaced else None, restored)

    def prune(self, kind: str, name: str, retain: int) -> None:
        """Keep the newest `retain` snapshots, after a step whether it succeeded or was rolled back."""
        snapshots = self.of(kind)
        try:
            for old in snapshots.snapshots(name)[:-retain]:
                snapshots.delete_snapshot(name, old.name)
        except ProviderError:
            pass  # retention is housekeeping; the next successful step tries again
