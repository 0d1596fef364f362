"""Backend adapters behind narrow protocols; the engine sees only these.

Each backend library (libvirt, docker) is imported in its own adapter module
only, and its errors are mapped once into `ProviderError`.
"""

from __future__ import annotations

from typing import Protocol

from somnus_reconciler.actual import ActualContainer, ActualVm
from somnus_reconciler.desired import DesiredContainer, DesiredVm


class ProviderError(Exception):
    """A backend call failed; the message names the resource and the action."""

    def __init__(self, address: str, action: str, cause: str, *, temporary: bool = False) -> None:
        self.address = address
        self.action = action
        self.cause = cause
        self.temporary = temporary
        super().__init__(f"{address}: {action} failed: {cause}")


class BackendUnavailable(Exception):
    """The daemon itself cannot be reached (libvirtd or dockerd down)."""


class VmProvider(Protocol):
    def observe(self) -> dict[str, ActualVm]: ...
    def observe_one(self, name: str) -> ActualVm | None: ...
    def create(self, vm: DesiredVm) -> None: ...
    def start(self, name: str) -> None: ...
    def stop(self, name: str) -> None: ...
    def redefine(self, vm: DesiredVm) -> None:
        """Write `vm` into the persistent config; the running guest is left as it is."""
    def resize_live(self, vm: DesiredVm) -> None: ...
    def write_mark(self, vm: DesiredVm) -> None:
        """Record `vm`'s spec hash in the ownership mark, live and persistent."""
    def delete(self, name: str) -> None: ...


class ContainerProvider(Protocol):
    def observe(self) -> dict[str, ActualContainer]: ...
    def observe_one(self, name: str) -> ActualContainer | None: ...
    def create(self, container: DesiredContainer) -> None: ...
    def start(self, name: str) -> None: ...
    def delete(self, name: str) -> None: ...
