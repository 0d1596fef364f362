"""Desired state: validated manifests resolved into values the planner compares.

`manifests.references.resolve` builds a `DesiredState` from loaded manifests (profiles
folded into VMs, packs ordered by `requires`). Everything here is a frozen value
with a stable `spec_hash`, recorded in the ownership mark of what gets created.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from somnus_reconciler.values.diagnostics import Source
from somnus_reconciler.values.model import BackupPolicy, CapabilityPackSpec, PoolSpec

# Objects applied without a Pool belong to this one. The Pool's name scopes
# ownership: `--prune` and leftovers only concern objects of the same Pool.
DEFAULT_POOL = "default"


def _hash(value: object) -> str:
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class VmResources:
    vcpus: int
    memory: int  # bytes
    max_vcpus: int
    max_memory: int  # bytes


@dataclass(frozen=True)
class DesiredVm:
    name: str
    resources: VmResources
    image: str
    disk_size: int  # bytes
    os_family: str
    running: bool
    packs: tuple[str, ...]  # install order, requirements first
    snapshot_retain: int
    owner: str | None
    profile: str | None
    source: Source = field(compare=False)
    pool: str = DEFAULT_POOL
    drift_policy: str = "correct"  # correct | warn
    backup: BackupPolicy | None = None  # the VM's, else the Pool's

    @property
    def address(self) -> str:
        return f"vm/{self.name}"

    @property
    def spec_hash(self) -> str:
        return _spec_hash(self)


@dataclass(frozen=True)
class DesiredContainer:
    name: str
    image: str
    command: tuple[str, ...] | None
    cpus: float
    memory: int  # bytes
    network: str
    env: tuple[tuple[str, str], ...]  # sorted
    packs: tuple[str, ...]
    owner: str | None
    source: Source = field(compare=False)
    pool: str = DEFAULT_POOL
    drift_policy: str = "correct"  # correct | warn
    volumes: tuple[tuple[str, str], ...] = ()  # (volume name, mount path), as declared

    @property
    def address(self) -> str:
        return f"container/{self.name}"

    @property
    def spec_hash(self) -> str:
        return _spec_hash(self)


def _spec_hash(obj: DesiredVm | DesiredContainer) -> str:
    """Hash of what the object is, without its packs: those are tracked one by one
    with their fingerprints, so adding a pack never recreates anything. Nor does
    the drift policy count: it says what a resync does, not what the object is.
    A backup policy does, so that a new one reaches the mark (a mark-only update)."""
    data = asdict(obj)
    data.pop("source")
    data.pop("packs")
    data.pop("drift_policy")
    for optional in ("backup", "volumes"):  # absent ones keep the hashes objects had before them
        if not data.get(optional):
            data.pop(optional, None)
    return _hash(data)


@dataclass(frozen=True)
class DesiredPack:
    name: str
    spec: CapabilityPackSpec
    source: Source = field(compare=False)


@dataclass(frozen=True)
class DesiredState:
    vms: dict[str, DesiredVm]
    containers: dict[str, DesiredContainer]
    packs: dict[str, DesiredPack]
    pool: PoolSpec
    pool_source: Source | None = None
    pool_name: str | None = None  # None: no Pool declared, the defaults apply
    # pack name -> fingerprint of its spec and playbook files; filled in by
    # passes.prepare.load_desired (it reads files) so that planning stays pure.
    pack_fingerprints: dict[str, str] = field(default_factory=dict)

    @property
    def scope(self) -> str:
        """The Pool name that owned objects of this desired state carry."""
        return self.pool_name or DEFAULT_POOL
