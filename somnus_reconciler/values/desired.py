"""Desired state: validated manifests resolved into values the planner compares.

`manifests.references.resolve` builds a `DesiredState` from loaded manifests (profiles
folded into VMs, packs ordered by `requires`). Everything here is a frozen value
with a stable `spec_hash`, recorded in the ownership mark of what gets created.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from functools import cached_property

from somnus_reconciler.values.diagnostics import Source
from somnus_reconciler.values.gpu import GpuDeviceRequest, PassthroughGpu
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


class Revealed:
    """A Secret's value in clear, in memory only: its repr and str say which it is, never
    what; `reveal()` is called where it goes into a guest (the container's environment)."""

    __slots__ = ("_value", "label")

    def __init__(self, value: str, label: str) -> None:
        self._value, self.label = value, label

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"<secret {self.label}>"

    __str__ = __repr__


@dataclass(frozen=True)
class SecretEnv:
    """An environment variable from a Secret: `variable` = secret `secret`'s `key`."""

    variable: str
    secret: str
    key: str


@dataclass(frozen=True)
class SecretFile:
    """A file in the guest holding secret `secret`'s `key`, with its mode and owner."""

    path: str
    secret: str
    key: str
    mode: int  # 0o600
    owner: str  # "user" or "user:group"


@dataclass(frozen=True)
class GuestFiles:
    """A guest's secret files as `passes.prepare` reveals them: each path's keyed digest
    (of its mode, owner and value; recorded on the guest, compared by the plan) and value."""

    digests: tuple[tuple[str, str], ...] = ()  # (path, keyed digest), as declared
    values: tuple[tuple[str, Revealed], ...] = field(default=(), compare=False, repr=False)

    def value(self, path: str) -> Revealed:
        return dict(self.values)[path]


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
    secret_files: tuple[SecretFile, ...] = ()
    files: GuestFiles = GuestFiles()  # filled in by passes.prepare.load_desired, which decrypts
    gpu: PassthroughGpu | None = None  # as declared (the profile's or the VM's resources)
    gpu_source: Source | None = field(default=None, compare=False)  # where: `spec.resources.gpu` or `spec.profile`
    # The host device it gets (0000:01:00.0): planning.gpus chooses it, passes.prepare fills it in.
    gpu_address: str | None = None

    @property
    def address(self) -> str:
        return f"vm/{self.name}"

    @cached_property
    def spec_hash(self) -> str:
        return _spec_hash(self)


@dataclass(frozen=True)
class DesiredSecret:
    name: str
    recipients: tuple[str, ...]
    data: tuple[tuple[str, str], ...]  # (key, age-armored value), as declared
    source: Source = field(compare=False)
    key_sources: tuple[tuple[str, Source], ...] = field(default=(), compare=False)  # where each key is

    def value_source(self, key: str) -> Source:
        return dict(self.key_sources).get(key, self.source)

    @property
    def address(self) -> str:
        return f"secret/{self.name}"


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
    secret_env: tuple[SecretEnv, ...] = ()
    # Filled in by passes.prepare.load_desired, which decrypts: a keyed hash of the values
    # `secret_env` takes (so a new value recreates the container), and the values themselves.
    secret_digest: str = ""
    revealed_env: tuple[tuple[str, Revealed], ...] = field(default=(), compare=False, repr=False)
    secret_files: tuple[SecretFile, ...] = ()
    files: GuestFiles = GuestFiles()  # as a VM's
    gpu: GpuDeviceRequest | None = None
    gpu_source: Source | None = field(default=None, compare=False)  # where `spec.resources.gpu` is written

    @property
    def address(self) -> str:
        return f"container/{self.name}"

    @cached_property
    def spec_hash(self) -> str:
        return _spec_hash(self)


# A VM's GPU counts as declared: the device it gets is compared with the domain's by the plan.
_NOT_HASHED = frozenset({"source", "packs", "drift_policy", "revealed_env", "secret_files", "files", "gpu_source",
                         "gpu_address"})
_HASHED_IF_SET = ("backup", "volumes", "secret_env", "secret_digest", "gpu")  # absent ones keep earlier hashes


def _spec_hash(obj: DesiredVm | DesiredContainer) -> str:
    """Hash of what the object is, without its packs and secret files: those are tracked
    one by one with their fingerprints, so adding a pack never recreates anything. Nor does
    the drift policy count: it says what a resync does, not what the object is.
    A backup policy does, so that a new one reaches the mark (a mark-only update).

    The JSON is the one `dataclasses.asdict` gives (the hashes in existing marks stay
    valid), built one level deep instead of through asdict's deep copy: every plan
    hashes every object, and the copy was most of a no-op resync."""
    data: dict[str, object] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if f.name in _NOT_HASHED or (f.name in _HASHED_IF_SET and not value):
            continue
        if is_dataclass(value):
            value = asdict(value)  # type: ignore[arg-type]  # an instance, never a class
        elif isinstance(value, tuple) and value and is_dataclass(value[0]):
            value = [asdict(item) for item in value]
        data[f.name] = value
    return _hash(data)


@dataclass(frozen=True)
class DesiredPack:
    name: str
    spec: CapabilityPackSpec
    source: Source = field(compare=False)

    def sparing(self, staying: Iterable[DesiredPack]) -> DesiredPack:
        """This pack without the packages that `staying` (packs the guest keeps) declare too:
        what removing it may uninstall. base-tools and research-browser both declare
        python3-venv; removing research-browser leaves it to base-tools."""
        others = list(staying)
        packages = self.spec.packages
        kept = {system: {name for pack in others for name in getattr(pack.spec.packages, system)}
                for system in ("apt", "winget", "brew")}
        left = packages.model_copy(update={system: [name for name in getattr(packages, system)
                                                    if name not in kept[system]] for system in kept})
        return DesiredPack(self.name, self.spec.model_copy(update={"packages": left}), self.source)


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
    secrets: dict[str, DesiredSecret] = field(default_factory=dict)

    @property
    def scope(self) -> str:
        """The Pool name that owned objects of this desired state carry."""
        return self.pool_name or DEFAULT_POOL
