"""Backend adapters behind narrow protocols; the engine sees only these.

Each backend library (libvirt, docker) is imported in its own adapter module
only, and its errors are mapped once into `ProviderError`: permanent, or of
the temporary kind (`TemporaryProviderError`, `BackendUnavailable`) when trying
again later may succeed. The engine decides retries by that type alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from somnus_reconciler.values.errors import DEFAULT_RETRY_DELAY_S, SomnusError, TemporaryError

if TYPE_CHECKING:  # so that catching ProviderError imports no manifest model
    from somnus_reconciler.values.actual import ActualContainer, ActualVm, Snapshot, WrittenFile
    from somnus_reconciler.values.desired import DesiredContainer, DesiredVm, Revealed, SecretFile


class ProviderError(SomnusError):
    """A backend call failed; the message names the resource and the action.

    Permanent: trying the same call again gives the same answer. A failure that
    may pass is raised as a `TemporaryProviderError` instead.
    """

    def __init__(self, address: str, action: str, cause: str) -> None:
        self.address = address
        self.action = action
        self.cause = cause
        super().__init__(f"{address}: {action} failed: {cause}")


class TemporaryProviderError(ProviderError, TemporaryError):
    """A backend call failed in a way that may pass after `delay` seconds (a daemon
    that did not answer in time, a guest whose SSH is not up yet)."""

    def __init__(self, address: str, action: str, cause: str, *,
                 delay: float = DEFAULT_RETRY_DELAY_S) -> None:
        super().__init__(address, action, cause)
        self.delay = delay


class BackendUnavailable(TemporaryProviderError):
    """The daemon itself cannot be reached (libvirtd or dockerd down).

    `kind` is "vm" (libvirtd) or "container" (dockerd): the half of the desired
    state that cannot be converged until the daemon is back.
    """

    def __init__(self, message: str, *, kind: str) -> None:
        super().__init__(f"{kind}/*", "reach the daemon", message)
        self.kind = kind
        self.args = (message,)

    def __str__(self) -> str:
        return str(self.args[0])


def as_provider_error(address: str, action: str, error: SomnusError) -> ProviderError:
    """`error` (raised by a helper that knows no address) naming `address` and
    `action`, of the temporary kind when `error` is temporary."""
    if isinstance(error, TemporaryError):
        return TemporaryProviderError(address, action, str(error), delay=error.delay)
    return ProviderError(address, action, str(error))


class VmProvider(Protocol):
    def observe(self) -> dict[str, ActualVm]: ...
    def observe_one(self, name: str) -> ActualVm | None: ...
    def create(self, vm: DesiredVm) -> None: ...
    def start(self, name: str) -> None: ...
    def stop(self, name: str) -> None: ...
    def redefine(self, vm: DesiredVm) -> None:
        """Write `vm` into the persistent config; the running guest is left as it is."""
    def resize_live(self, vm: DesiredVm) -> None: ...
    def definition(self, name: str) -> str:
        """The persistent domain XML with its mark."""
    def disk_path(self, name: str) -> Path: ...
    def end_stale_backup_job(self, name: str) -> bool:
        """Abort a backup job a killed backup left behind; whether there was one."""
    def put_back(self, name: str, definition: str, disk: Path, *, start: bool) -> None:
        """Replace the VM's disk by `disk` and its domain by `definition` (a backup's)."""
    def grow_disk(self, vm: DesiredVm) -> None:
        """The VM's disk to `vm.disk_size` in place (live while it runs); never smaller."""
    def write_mark(self, vm: DesiredVm) -> None:
        """Record `vm`'s spec hash in the ownership mark, live and persistent."""
    def write_packs(self, name: str, packs: tuple[tuple[str, str], ...]) -> None: ...
    def write_files(self, name: str, files: tuple[tuple[str, str], ...]) -> None:
        """Record the secret files written (path, keyed digest) in the mark."""
    def delete(self, name: str) -> None: ...
    def snapshot(self, name: str, snapshot: str, description: str) -> None: ...
    def revert(self, name: str, snapshot: str) -> None: ...
    def snapshots(self, name: str) -> list[Snapshot]: ...
    def delete_snapshot(self, name: str, snapshot: str) -> None: ...


class ContainerProvider(Protocol):
    def observe(self) -> dict[str, ActualContainer]: ...
    def observe_one(self, name: str) -> ActualContainer | None: ...
    def create(self, container: DesiredContainer, *, from_image: str | None = None) -> str: ...
    def start(self, name: str) -> None: ...
    def delete(self, name: str, *, keep_snapshots: bool = False) -> None: ...
    def snapshot(self, name: str, snapshot: str, description: str) -> str: ...
    def restore(self, container: DesiredContainer, snapshot: str) -> str:
        """Make the container anew from its snapshot, same spec; returns the new ID."""
    def snapshots(self, name: str) -> list[Snapshot]: ...
    def delete_snapshot(self, name: str, snapshot: str) -> None: ...
    def save_snapshot(self, name: str, snapshot: str, dest: Path) -> None:
        """The snapshot's image as a tarball at `dest` (a backup's copy)."""
    def load_snapshot(self, name: str, src: Path) -> str: ...
    def volume_mounts(self, name: str) -> list[tuple[str, str]]:
        """(volume, mount path) of the container's own named volumes."""
    def archive_path(self, name: str, path: str, dest: Path) -> None: ...
    def replace_path(self, name: str, path: str, src: Path) -> None: ...
    def write_files(self, name: str, writes: Sequence[tuple[SecretFile, Revealed]],
                    removes: Sequence[str]) -> list[WrittenFile]:
        """Secret files into the running container, then `removes` removed; as written."""
