"""Snapshots by hand: `somnus snapshots` lists a guest's, `somnus rollback` reverts to one.

A VM is reverted to a libvirt snapshot in place; a container is made anew from
its snapshot image with its declared spec, and the journal's record of its
installed packs moves to the new container. A rollback holds the apply lock, so
it never runs alongside an apply, and is recorded in the journal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from somnus_reconciler.engine.snapshots import GuestSnapshots
from somnus_reconciler.journal import ApplyLock, Journal
from somnus_reconciler.passes import prepare
from somnus_reconciler.providers import backends as backends_mod
from somnus_reconciler.values.actual import Snapshot
from somnus_reconciler.values.errors import PermanentError
from somnus_reconciler.values.outcome import Outcome

ROLLBACK_ACTION = "rollback"  # the journal action a rollback by hand records


@dataclass(frozen=True)
class Guest:
    """A VM or a container: what somnus takes snapshots of."""

    kind: str  # "vm" or "container"
    name: str

    @property
    def address(self) -> str:
        return f"{self.kind}/{self.name}"


@dataclass(frozen=True)
class SnapshotListing:
    guest: Guest
    snapshots: tuple[Snapshot, ...]  # oldest first


@dataclass(frozen=True)
class RollbackDone:
    guest: Guest
    snapshot: str  # the snapshot it was reverted to


class RollbackRefused(PermanentError):
    """Nothing to revert to, or not enough to make a container anew; nothing was changed."""


def snapshots(guest: Guest, *, state_dir: str | None) -> SnapshotListing:
    """The snapshots somnus took of `guest`, oldest first."""
    backends = backends_mod.open_backends(None, state_dir=state_dir)
    provider = backends.vms if guest.kind == "vm" else backends.containers
    try:
        return SnapshotListing(guest, tuple(provider.snapshots(guest.name)))
    finally:
        backends.close()


def rollback(guest: Guest, snapshot: str | None, manifests: Sequence[Path], *, state_dir: str | None,
             on_lock_wait: Callable[[str], None]) -> RollbackDone:
    """Revert `guest` to `snapshot` (None: its newest), under the apply lock.

    A container needs `manifests` declaring it. RollbackRefused or InvalidInput
    before any change; ProviderError when the backend fails.
    """
    desired = None
    if guest.kind == "container":
        if not manifests:
            raise RollbackRefused("a container is made anew from its snapshot with its declared spec: "
                                  "give -f MANIFESTS")
        desired = prepare.load_desired(manifests, state_dir=state_dir)
        if guest.name not in desired.containers:
            raise RollbackRefused(f"{guest.address} is not declared in {', '.join(map(str, manifests))}")
    backends = backends_mod.open_backends(desired, state_dir=state_dir)
    with ApplyLock(backends.settings.state_dir, on_wait=on_lock_wait), \
            Journal(backends.settings.journal_path) as journal:
        try:
            guests = GuestSnapshots(backends.vms, backends.containers, journal)
            target = snapshot or _newest(guests.of(guest.kind).snapshots(guest.name), guest)
            # A container is made anew with its declared spec; its pack records follow it.
            guests.revert(guest.kind, guest.name, desired.containers[guest.name] if desired else None, target)
        finally:
            backends.close()
        journal.record(guest.address, ROLLBACK_ACTION, Outcome.OK, f"reverted by hand to {target}")
    return RollbackDone(guest, target)


def _newest(available: Sequence[Snapshot], guest: Guest) -> str:
    if not available:
        raise RollbackRefused(f"no snapshots of {guest.address}")
    return available[-1].name
