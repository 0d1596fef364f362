"""The manifest kinds of SPEC section 2 as frozen pydantic models.

`manifests.loader` validates every YAML document into one of these; `somnus schema`
prints the JSON Schema generated from `MANIFEST_ADAPTER`. Fields are snake_case
in Python and camelCase in YAML. Unknown fields are errors.

Strings that reach something which interprets them are held to a syntax here,
so that a hostile manifest is refused before anything runs: label keys and
values follow Kubernetes' rules (they end up in the domain XML and in Docker
labels), strings handed to Ansible carry no template markers (Ansible would
evaluate `{{ lookup('pipe', ...) }}` on the host), and a Pool names only a
local libvirt URI (the `ext` and `ssh` transports run commands).
"""

from __future__ import annotations

import os
from typing import Annotated, Literal, Union

# No pydantic plugin is used here; looking for them scans every installed distribution's
# metadata when the first validator is built (~15 ms of each `somnus diff`). Set before
# that, and only when the user has not chosen otherwise.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

from pydantic import (
    AfterValidator,
    ConfigDict,
    Discriminator,
    Field,
    PositiveInt,
    Tag,
    TypeAdapter,
    field_validator,
    model_validator,
)

from somnus_reconciler.values.fields import (
    AbsolutePath,
    AgeArmored,
    AgeRecipient,
    AnsibleText,
    GuestFilePath,
    LabelValue,
    LibvirtUri,
    Name,
    PackageName,
    Quantity,
    SecretKey,
    Strict,
    label_key_problem,
)
from somnus_reconciler.values.gpu import UNION_TAGS as GPU_UNION_TAGS
from somnus_reconciler.values.gpu import ContainerGpu, VmGpu
from somnus_reconciler.values.quantity import format_bytes, parse_duration

API_VERSION = "somnus/v1"


class Metadata(Strict):
    name: Name
    labels: dict[str, LabelValue] = Field(
        default_factory=dict,
        description="Kubernetes label syntax: keys [prefix/]name, values of at most 63 characters",
    )

    @field_validator("labels")
    @classmethod
    def _label_keys(cls, labels: dict[str, str]) -> dict[str, str]:
        # The message starts with the key, so that the loader points at the key's line.
        problems = [f"{key} is not a valid label key: {problem}"
                    for key in labels if (problem := label_key_problem(key)) is not None]
        if problems:
            raise ValueError("; ".join(problems))
        return labels


class Resources(Strict):
    """vCPUs and memory, with the headroom a running VM can be resized into live."""

    vcpus: PositiveInt
    memory: Quantity
    max_vcpus: PositiveInt | None = None
    max_memory: Quantity | None = None
    gpu: VmGpu = False

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
    apt: list[PackageName] = Field(default_factory=list)
    winget: list[PackageName] = Field(default_factory=list)
    brew: list[PackageName] = Field(default_factory=list)


class CapabilityPackSpec(Strict):
    description: str = ""
    requires: list[Name] = Field(default_factory=list)
    packages: PackPackages = Field(default_factory=PackPackages)
    playbook: AnsibleText | None = Field(default=None, description=(
        "path relative to the directory of the manifest file that declares the pack; it must "
        "resolve (symbolic links followed) to a file inside that directory or below it"
    ))
    verify: list[AnsibleText] = Field(default_factory=list, description=(
        "shell commands run in the guest that must exit 0 once the pack is installed"
    ))


# What a resync does with an out-of-band change (resized, stopped, removed, a pack's
# verify failing): put it back, or only report it.
DriftPolicy = Literal["correct", "warn"]


class SnapshotPolicy(Strict):
    retain: Annotated[int, Field(ge=1, le=100)] = 5


ON_PACK_CHANGE = "onPackChange"


class BackupPolicy(Strict):
    """Backups outside the VM's disk (engine.backups): when, and how many for how long."""

    schedule: str | None = Field(default=None, description=(
        "a cron expression (\"0 3 * * *\"), an interval (\"24h\", at least 1m), or onPackChange (after every "
        "pack step that changed the guest); none: only by hand and before a disk is replaced"))
    retain: Annotated[int, Field(ge=1, le=1000)] = 7
    max_age: str | None = Field(default=None, description="backups older than this go (e.g. 30d); never the newest")
    dir: AbsolutePath | None = Field(default=None, description="where the backups go, in a directory named "
                                     "after the VM (default: the guest directory's backups/); not a system directory")

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, schedule: str | None) -> str | None:
        if schedule is None or schedule == ON_PACK_CHANGE:
            return schedule
        try:
            seconds = parse_duration(schedule)
        except ValueError:
            from croniter import croniter

            if not croniter.is_valid(schedule):
                raise ValueError(f"{schedule!r} is neither a cron expression, an interval (24h) "
                                 f"nor {ON_PACK_CHANGE}") from None
            return schedule
        if seconds < 60:
            raise ValueError(f"{schedule!r}: an interval of at least 1m")
        return schedule

    @field_validator("max_age")
    @classmethod
    def _max_age(cls, max_age: str | None) -> str | None:
        if max_age is not None:
            parse_duration(max_age)
        return max_age


class VirtualMachineSpec(Strict):
    profile: Name | None = None
    resources: Resources | None = None
    image: Annotated[str, Field(min_length=1, description=(
        "a base image name (tiny-linux, debian-12) or the path of a standalone qcow2 file "
        "inside the guest directory's images/ or a root the Pool lists in allowedImageRoots"
    ))]
    disk_size: Quantity = 10 * 2**30
    os_family: Literal["debian", "windows", "macos"] = "debian"
    running: bool = True
    packs: list[Name] = Field(default_factory=list)
    snapshots: SnapshotPolicy = Field(default_factory=SnapshotPolicy)
    backup: BackupPolicy | None = None  # none: the Pool's, else backups only by hand
    drift_policy: DriftPolicy = "correct"
    files: SecretFiles = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_source_of_resources(self) -> VirtualMachineSpec:
        if (self.profile is None) == (self.resources is None):
            raise ValueError("give exactly one of profile or resources")
        return self


class ContainerResources(Strict):
    cpus: Annotated[float, Field(gt=0)] = 1.0
    memory: Quantity = 2**30
    gpu: ContainerGpu = False


class VolumeMount(Strict):
    """A named Docker volume somnus owns (`somnus-<container>-<name>`), kept across recreates."""

    name: Name
    mount_path: AbsolutePath


class SecretRef(Strict):
    name: Name
    key: SecretKey


class FromSecret(Strict):
    """An environment variable's value taken from a Secret (`{secretRef: {name, key}}`)."""

    secret_ref: SecretRef


class SecretFile(Strict):
    """A file in the guest holding one Secret value, written through the agent (VMs) or
    `docker exec` (containers) as a snapshot-guarded step."""

    path: Annotated[GuestFilePath, Field(description="where in the guest; its directory is made when missing")]
    secret_ref: SecretRef
    mode: Annotated[str, Field(pattern=r"^0?[0-7]{3}$", description="octal, as chmod takes it")] = "0600"
    owner: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_-]*(:[a-z_][a-z0-9_-]*)?$",
                                description="user or user:group in the guest")] = "root"


def _distinct_file_paths(files: list[SecretFile]) -> list[SecretFile]:
    paths = [f.path for f in files]
    problems = [f"path {path!r} is given twice" for path in sorted(set(paths)) if paths.count(path) > 1]
    if problems:
        raise ValueError("; ".join(problems))
    return files


SecretFiles = Annotated[list[SecretFile], AfterValidator(_distinct_file_paths),
                        Field(description="files written from Secrets, recorded by a keyed hash")]


# An env value is text or a reference to a Secret, told apart by its YAML type, so that a
# wrong one gets the error of its own kind only. The tags hold "=", which no variable
# name does: `manifests.loader` leaves them out of the field paths it shows.
UNION_TAGS = ("=text", "=secretRef", *GPU_UNION_TAGS)
EnvValue = Annotated[
    Union[Annotated[str, Tag("=text")], Annotated[FromSecret, Tag("=secretRef")]],
    Discriminator(lambda value: "=secretRef" if isinstance(value, (dict, FromSecret)) else "=text"),
]


class ContainerSpec(Strict):
    image: Annotated[str, Field(min_length=1)]
    command: list[str] | None = None
    resources: ContainerResources = Field(default_factory=ContainerResources)
    packs: list[Name] = Field(default_factory=list)
    network: Literal["none", "host"] = "none"
    env: dict[str, EnvValue] = Field(default_factory=dict)
    volumes: list[VolumeMount] = Field(default_factory=list, description=(
        "named volumes only, no host paths: their data outlives the container"
    ))
    drift_policy: DriftPolicy = "correct"
    files: SecretFiles = Field(default_factory=list)

    @field_validator("volumes")
    @classmethod
    def _distinct_volumes(cls, volumes: list[VolumeMount]) -> list[VolumeMount]:
        problems = [f"volume {v.name!r} cannot be mounted on /" for v in volumes if v.mount_path.rstrip("/") == ""]
        for what, values in (("name", [v.name for v in volumes]), ("mountPath", [v.mount_path for v in volumes])):
            problems += [f"{what} {value!r} is given twice" for value in sorted(set(values)) if values.count(value) > 1]
        if problems:
            raise ValueError("; ".join(problems))
        return volumes

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str | FromSecret]) -> dict[str, str | FromSecret]:
        # "A=B: c" would silently set A to "B=c"; NUL cannot pass through exec at all.
        problems = [f"{key} is not a valid variable name (empty, or holds '=' or NUL)"
                    for key in env if not key or "=" in key or "\0" in key]
        problems += [f"{key} has a value holding NUL" for key, value in env.items()
                     if isinstance(value, str) and "\0" in value]
        if problems:
            raise ValueError("; ".join(problems))
        return env


class Reserved(Strict):
    vcpus: Annotated[int, Field(ge=0)] = 1
    memory: Quantity = 2 * 2**30


class PoolSpec(Strict):
    libvirt_uri: LibvirtUri = "qemu:///system"
    domain_type: Literal["kvm", "qemu"] = "qemu"
    max_vms: Annotated[int, Field(ge=0)] = 10
    max_vms_per_owner: Annotated[int, Field(ge=0)] = 5
    reserved: Reserved = Field(default_factory=Reserved)
    cpu_overcommit: Annotated[float, Field(gt=0)] = 4.0
    # Its path reaches Ansible's inventory (the VMs' key files), which Ansible templates.
    state_dir: AnsibleText = "~/.local/state/somnus"
    allowed_image_roots: list[AbsolutePath] = Field(default_factory=list, description=(
        "directories, besides the guest directory's images/, under which a VM's image may "
        "be a qcow2 file of its own"
    ))
    backup: BackupPolicy | None = None  # the default of VMs that declare none


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


class SecretSpec(Strict):
    recipients: list[AgeRecipient] = Field(min_length=1, description=(
        "age public keys (age1...) whose identities may decrypt the values; the host's is one of them"
    ))
    data: dict[SecretKey, AgeArmored] = Field(description="each value encrypted on its own (age, ASCII armor)")


class Secret(_Document):
    kind: Literal["Secret"]
    spec: SecretSpec


class Pool(_Document):
    kind: Literal["Pool"]
    spec: PoolSpec = Field(default_factory=PoolSpec)


Manifest = Annotated[
    Union[ResourceProfile, CapabilityPack, VirtualMachine, Container, Secret, Pool],
    Field(discriminator="kind"),
]
# pydantic types TypeAdapter's argument as a PEP 747 TypeForm: mypy accepts the
# Annotated union when it reads pydantic afresh, but refuses it (as not a type[T])
# when it reads pydantic from its incremental cache. Hence both codes.
MANIFEST_ADAPTER: TypeAdapter[Manifest] = TypeAdapter(Manifest, config=ConfigDict(defer_build=True))  # type: ignore[arg-type, unused-ignore]

KINDS: dict[str, type[ResourceProfile | CapabilityPack | VirtualMachine | Container | Secret | Pool]] = {
    "ResourceProfile": ResourceProfile,
    "CapabilityPack": CapabilityPack,
    "VirtualMachine": VirtualMachine,
    "Container": Container,
    "Secret": Secret,
    "Pool": Pool,
}
# Short kind names used in addresses (`vm/coder-1`) and on the command line.
SHORT_KIND: dict[str, str] = {
    "VirtualMachine": "vm",
    "Container": "container",
    "CapabilityPack": "pack",
    "ResourceProfile": "profile",
    "Secret": "secret",
    "Pool": "pool",
}


def json_schema() -> dict[str, object]:
    """JSON Schema of every kind, as `somnus schema` prints it."""
    schema = MANIFEST_ADAPTER.json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Somnus manifest (somnus/v1)"
    return schema
