"""Actual state as the providers observe it: plain frozen values, no backend types.

The providers' `observe` (`providers.libvirt_provider`, `providers.docker_provider`)
return these; `planning.plan` compares them with `values.desired` values.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class PowerState(enum.Enum):
    RUNNING = "running"
    SHUTOFF = "shutoff"
    PAUSED = "paused"
    OTHER = "other"


@dataclass(frozen=True)
class PortForward:
    """A user-mode networking forward: 127.0.0.1:host_port -> guest guest_port."""

    name: str
    host_port: int
    guest_port: int


@dataclass(frozen=True)
class VmMark:
    """The ownership mark in a domain's <metadata> (SPEC section 3)."""

    spec_hash: str
    image: str
    disk_size: int
    os_family: str
    owner: str | None = None
    pool: str = "default"
    forwards: tuple[PortForward, ...] = ()
    packs: tuple[tuple[str, str], ...] = ()  # (pack name, fingerprint)
    files: tuple[tuple[str, str], ...] = ()  # (secret file's path, keyed digest) written
    backup: str | None = None  # the VM's backup policy as JSON (model.BackupPolicy), if it has one
    gpu: str | None = None  # the GPU as declared when applied (`str(PassthroughGpu)`), if it had one


@dataclass(frozen=True)
class ActualVm:
    name: str
    power: PowerState
    domain_id: int | None  # set while running; changes on every restart
    vcpus: int
    max_vcpus: int
    memory: int  # bytes: the balloon target the host set (the persistent definition), spec
    max_memory: int  # bytes
    mark: VmMark | None  # None: not created by somnus; never touched
    console_log: str | None = None  # where the serial console is logged, from the domain XML
    balloon: int | None = None  # bytes the guest's balloon reports while running: status, never planned on
    gpus: tuple[str, ...] = ()  # PCI addresses of the host devices its definition passes through

    @property
    def managed(self) -> bool:
        return self.mark is not None

    @property
    def running(self) -> bool:
        return self.power is PowerState.RUNNING


@dataclass(frozen=True)
class ActualContainer:
    name: str
    container_id: str
    image: str
    state: str  # docker's: running, exited, created, ...
    spec_hash: str | None  # None: not created by somnus; never touched
    pool: str = "default"  # the Pool it was applied under (meaningful when managed)
    packs: tuple[tuple[str, str], ...] = ()  # (pack, fingerprint) applied, from the journal
    files: tuple[tuple[str, str], ...] = ()  # (secret file's path, keyed digest) written, from the journal
    gpu: str | None = None  # its GPU device request as created (`str(GpuDeviceRequest)`), from its labels
    labels: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def managed(self) -> bool:
        return self.spec_hash is not None

    @property
    def running(self) -> bool:
        return self.state == "running"


@dataclass(frozen=True)
class WrittenFile:
    """A file as the guest reports it after a write: what the step verifies."""

    path: str
    sha256: str
    mode: int
    uid: int
    gid: int


@dataclass(frozen=True)
class Snapshot:
    """A snapshot somnus took: a libvirt snapshot, or a committed container image."""

    name: str  # somnus-<step>-<timestamp>
    created: float  # seconds since the epoch
    description: str = ""


@dataclass(frozen=True)
class ActualState:
    vms: dict[str, ActualVm]
    containers: dict[str, ActualContainer]
