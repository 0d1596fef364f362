"""The manifest kinds of SPEC section 2 as frozen pydantic models.

The loader validates every YAML document into one of these; `somnus schema`
prints the JSON Schema generated from `MANIFEST_ADAPTER`. Fields are snake_case
in Python and camelCase in YAML. Unknown fields are errors.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, TypeAdapter, model_validator
from pydantic.alias_generators import to_camel

from somnus_reconciler.quantity import Quantity, format_bytes

API_VERSION = "somnus/v1"
DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

Name = Annotated[str, Field(pattern=DNS1123_LABEL, min_length=1, max_length=63)]


class Strict(BaseModel):
    """Base of every manifest model: camelCase aliases, frozen, no unknown fields."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


class Metadata(Strict):
    name: Name
    labels: dict[str, str] = Field(default_factory=dict)


class Resources(Strict):
    """vCPUs and memory, with the headroom a running VM can be resized into live."""

    vcpus: PositiveInt
    memory: Quantity
    max_vcpus: PositiveInt | None = None
    max_memory: Quantity | None = None
    gpu: bool = False

    @model_validator(mode="after")
    def _headroom_covers_current(self) -> Resources:
        if self.max_vcpus is not None and self.max_vcpus < self.vcpus:
            raise ValueError(f"maxVcpus ({self.max_vcpus}) is below vcpus ({self.vcpus})")
        if self.max_memory is not None and self.max_memory < self.memory:
            raise ValueError(
                f"maxMemory ({format_bytes(self.max_memory)}) is below memory ({format_bytes(self.memory)})"
            )
        return self


class PackPackages(Strict):
    apt: list[str] = Field(default_factory=list)
    winget: list[str] = Field(default_factory=list)
    brew: list[str] = Field(default_factory=list)


class CapabilityPackSpec(Strict):
    description: str = ""
    requires: list[Name] = Field(default_factory=list)
    packages: PackPackages = Field(default_factory=PackPackages)
    playbook: str | None = None
    verify: list[str] = Field(default_factory=list)


# What a resync does with an out-of-band change (resized, stopped, removed, a pack's
# verify failing): put it back, or only report it.
DriftPolicy = Literal["correct", "warn"]


class SnapshotPolicy(Strict):
    retain: Annotated[int, Field(ge=1, le=100)] = 5


class VirtualMachineSpec(Strict):
    profile: Name | None = None
    resources: Resources | None = None
    image: Annotated[str, Field(min_length=1)]
    disk_size: Quantity = 10 * 2**30
    os_family: Literal["debian", "windows", "macos"] = "debian"
    running: bool = True
    packs: list[Name] = Field(default_factory=list)
    snapshots: SnapshotPolicy = Field(default_factory=SnapshotPolicy)
    drift_policy: DriftPolicy = "correct"

    @model_validator(mode="after")
    def _one_source_of_resources(self) -> VirtualMachineSpec:
        if (self.profile is None) == (self.resources is None):
            raise ValueError("give exactly one of profile or resources")
        return self


class ContainerResources(Strict):
    cpus: Annotated[float, Field(gt=0)] = 1.0
    memory: Quantity = 2**30


class ContainerSpec(Strict):
    image: Annotated[str, Field(min_length=1)]
    command: list[str] | None = None
    resources: ContainerResources = Field(default_factory=ContainerResources)
    packs: list[Name] = Field(default_factory=list)
    network: Literal["none", "host"] = "none"
    env: dict[str, str] = Field(default_factory=dict)
    drift_policy: DriftPolicy = "correct"


class Reserved(Strict):
    vcpus: Annotated[int, Field(ge=0)] = 1
    memory: Quantity = 2 * 2**30


class PoolSpec(Strict):
    libvirt_uri: str = "qemu:///system"
    domain_type: Literal["kvm", "qemu"] = "qemu"
    max_vms: Annotated[int, Field(ge=0)] = 10
    max_vms_per_owner: Annotated[int, Field(ge=0)] = 5
    reserved: Reserved = Field(default_factory=Reserved)
    cpu_overcommit: Annotated[float, Field(gt=0)] = 4.0
    state_dir: str = "~/.local/state/somnus"


class _Document(Strict):
    api_version: Literal["somnus/v1"]
    metadata: Metadata


class ResourceProfile(_Document):
    kind: Literal["ResourceProfile"]
    spec: Resources


class CapabilityPack(_Document):
    kind: Literal["CapabilityPack"]
    spec: CapabilityPackSpec


class VirtualMachine(_Document):
    kind: Literal["VirtualMachine"]
    spec: VirtualMachineSpec


class Container(_Document):
    kind: Literal["Container"]
    spec: ContainerSpec


class Pool(_Document):
    kind: Literal["Pool"]
    spec: PoolSpec = Field(default_factory=PoolSpec)


Manifest = Annotated[
    Union[ResourceProfile, CapabilityPack, VirtualMachine, Container, Pool],
    Field(discriminator="kind"),
]
MANIFEST_ADAPTER: TypeAdapter[Manifest] = TypeAdapter(Manifest)

KINDS: dict[str, type[_Document]] = {
    "ResourceProfile": ResourceProfile,
    "CapabilityPack": CapabilityPack,
    "VirtualMachine": VirtualMachine,
    "Container": Container,
    "Pool": Pool,
}
# Short kind names used in addresses (`vm/coder-1`) and on the command line.
SHORT_KIND: dict[str, str] = {
    "VirtualMachine": "vm",
    "Container": "container",
    "CapabilityPack": "pack",
    "ResourceProfile": "profile",
    "Pool": "pool",
}
KIND_BY_SHORT: dict[str, str] = {short: kind for kind, short in SHORT_KIND.items()}


def json_schema() -> dict[str, object]:
    """JSON Schema of every kind, as `somnus schema` prints it."""
    schema = MANIFEST_ADAPTER.json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Somnus manifest (somnus/v1)"
    return schema
