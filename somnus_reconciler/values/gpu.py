"""GPUs: what `gpu:` takes in a manifest, the desired values it becomes, and what a host offers.

A VM's GPU (`ResourceProfile.spec.gpu`, `VirtualMachine.spec.resources.gpu`) is PCI
passthrough: `true` (any GPU of the host), `{pci: 0000:01:00.0}` or `{vendorProduct:
10de:2204}`; `providers.domain_xml` renders it as a libvirt `<hostdev>`. A container's
(`Container.spec.resources.gpu`) is a Docker device request: `true` (one GPU, capabilities
[[gpu]]) or `{count, capabilities, driver, deviceIds}`, as `docker run --gpus` takes it;
`providers.docker_provider` passes it as a `DeviceRequest`. `manifests.references` makes
the desired values, `providers.host_gpus` reads the host into `HostGpus`, and
`planning.gpus` matches one against the other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Literal, Union

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PositiveInt,
    Tag,
    model_validator,
)

from somnus_reconciler.values.fields import Strict

VFIO_DRIVER = "vfio-pci"
DISPLAY_CLASS = 0x03  # PCI base class of display controllers (VGA 0x0300, 3D 0x0302, ...)
# dockerd registers its `nvidia` device driver only when this hook is on its PATH
# (moby daemon/nvidia_linux.go), with these capabilities; it has no other GPU driver.
NVIDIA_DRIVER = "nvidia"
NVIDIA_HOOK = "nvidia-container-runtime-hook"
NVIDIA_CAPABILITIES = frozenset({"gpu", "nvidia", "compute", "compat32", "graphics", "utility", "video", "display"})

_PCI_ADDRESS = r"^([0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$"
_VENDOR_PRODUCT = r"^[0-9a-fA-F]{4}:[0-9a-fA-F]{4}$"
# The YAML type tells the forms apart, so that a wrong one gets its own kind's error only.
# The tags hold "=", which no field name does: `manifests.loader` leaves them out of paths.
UNION_TAGS = ("=flag", "=device", "=request", "=count", "=all")


def _pci_address(address: str) -> str:
    """Lowercase, with the PCI domain (`lspci` leaves out 0000: unless given -D)."""
    if not re.fullmatch(_PCI_ADDRESS, address):
        raise ValueError(f"{address[:40]!r} is not a PCI address (domain:bus:slot.function in hex, "
                         "as `lspci -D` shows it: 0000:01:00.0)")
    address = address.lower()
    return address if address.count(":") == 2 else f"0000:{address}"


def _vendor_product(ids: str) -> str:
    if not re.fullmatch(_VENDOR_PRODUCT, ids):
        raise ValueError(f"{ids[:40]!r} is not vendor:product (four hex digits each, as `lspci -nn` "
                         "shows them: 10de:2204)")
    return ids.lower()


def _device_id(value: object) -> object:
    """GPU indexes may be written as numbers (deviceIds: [0, 1])."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _flag(value: object) -> object:
    if not isinstance(value, bool):
        raise ValueError(f"expected true, false or a mapping, got {str(value)[:40]!r}")
    return value


PciAddress = Annotated[str, AfterValidator(_pci_address), Field(json_schema_extra={"pattern": _PCI_ADDRESS},
                       description="domain:bus:slot.function as `lspci -D` shows it (the domain may be left out)")]
VendorProduct = Annotated[str, AfterValidator(_vendor_product), Field(json_schema_extra={
    "pattern": _VENDOR_PRODUCT}, description="vendor:product ids as `lspci -nn` shows them")]
_DEVICE_ID = r"^[A-Za-z0-9][A-Za-z0-9:._-]*$"
DeviceId = Annotated[str, BeforeValidator(_device_id), Field(
    pattern=_DEVICE_ID, json_schema_extra={"type": ["string", "integer"], "pattern": _DEVICE_ID, "minimum": 0})]
Flag = Annotated[bool, BeforeValidator(_flag)]


class PciGpuSpec(Strict):
    """One GPU of the host for a VM, by PCI address or by vendor:product."""

    model_config = ConfigDict(json_schema_extra={"oneOf": [
        {"required": [name], "properties": {name: {"type": "string"}}} for name in ("pci", "vendorProduct")]})

    pci: PciAddress | None = None
    vendor_product: VendorProduct | None = Field(default=None, description=(
        "the first device of these ids that is bound to vfio-pci and given to no other guest"))

    @model_validator(mode="after")
    def _one_way_to_name_it(self) -> PciGpuSpec:
        if (self.pci is None) == (self.vendor_product is None):
            raise ValueError("give exactly one of pci or vendorProduct")
        return self


Capability = Annotated[str, Field(pattern=r"^[a-z0-9_]+$")]
GpuCount = Annotated[
    Union[Annotated[PositiveInt, Tag("=count")], Annotated[Literal["all"], Tag("=all")]],
    Discriminator(lambda value: "=all" if isinstance(value, str) else "=count"),
]


class GpuDeviceRequestSpec(Strict):
    """GPUs for a container, as Docker's DeviceRequest (`docker run --gpus`)."""

    model_config = ConfigDict(json_schema_extra={"not": {"required": ["count", "deviceIds"], "properties": {
        name: {"not": {"type": "null"}} for name in ("count", "deviceIds")}}})

    count: GpuCount | None = Field(default=None, description="how many GPUs, or all (default 1 unless deviceIds)")
    capabilities: list[Annotated[list[Capability], Field(min_length=1)]] = Field(
        default_factory=lambda: [["gpu"]], min_length=1,
        description="any one of these sets of capabilities (all in a set) picks the driver")
    driver: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")] | None = None
    device_ids: list[DeviceId] | None = Field(
        default=None, min_length=1, description="GPU indexes (0, 1) or UUIDs (GPU-...), instead of count")

    @model_validator(mode="after")
    def _count_or_ids(self) -> GpuDeviceRequestSpec:
        if self.count is not None and self.device_ids is not None:
            raise ValueError("count and deviceIds exclude each other (Docker refuses both)")
        return self


def _flag_or(tag: str) -> Discriminator:
    return Discriminator(lambda value: tag if isinstance(value, (dict, Strict)) else "=flag")


VmGpu = Annotated[
    Union[Annotated[Flag, Tag("=flag")], Annotated[PciGpuSpec, Tag("=device")]], _flag_or("=device"),
    Field(description="PCI passthrough: true (any GPU of the host), {pci: ADDRESS} or {vendorProduct: "
                      "VENDOR:PRODUCT}; the device must be bound to vfio-pci"),
]
ContainerGpu = Annotated[
    Union[Annotated[Flag, Tag("=flag")], Annotated[GpuDeviceRequestSpec, Tag("=request")]], _flag_or("=request"),
    Field(description="a Docker device request: true (one GPU, capabilities [[gpu]]) or {count, capabilities, "
                      "driver, deviceIds}"),
]


@dataclass(frozen=True)
class PassthroughGpu:
    """A VM's GPU as declared: any GPU of the host (both None), the one at `pci`, or one of
    `vendor_product`. Which device it gets is `planning.gpus`' choice (`DesiredVm.gpu_address`)."""

    pci: str | None = None
    vendor_product: str | None = None

    def __str__(self) -> str:
        if self.pci is not None:
            return f"pci {self.pci}"
        if self.vendor_product is not None:
            return f"vendorProduct {self.vendor_product}"
        return "any GPU"


@dataclass(frozen=True)
class GpuDeviceRequest:
    """A container's GPUs, as Docker's DeviceRequest takes them."""

    count: int  # -1: all; 0 when device_ids name them
    capabilities: tuple[tuple[str, ...], ...]
    driver: str = ""  # "": dockerd picks the driver that offers the capabilities
    device_ids: tuple[str, ...] = ()

    def __str__(self) -> str:
        which = f"deviceIds {','.join(self.device_ids)}" if self.device_ids else \
            f"count {'all' if self.count == -1 else self.count}"
        sets = ", ".join(f"[{', '.join(s)}]" for s in self.capabilities)
        return f"{which}, capabilities [{sets}]" + (f", driver {self.driver}" if self.driver else "")


def passthrough_of(value: bool | PciGpuSpec) -> PassthroughGpu | None:
    if isinstance(value, PciGpuSpec):
        return PassthroughGpu(value.pci, value.vendor_product)
    return PassthroughGpu() if value else None


def device_request_of(value: bool | GpuDeviceRequestSpec) -> GpuDeviceRequest | None:
    if not isinstance(value, GpuDeviceRequestSpec):
        return GpuDeviceRequest(1, (("gpu",),)) if value else None
    count = -1 if value.count == "all" else value.count if value.count is not None else 0 if value.device_ids else 1
    return GpuDeviceRequest(count, tuple(tuple(s) for s in value.capabilities), value.driver or "",
                            tuple(value.device_ids or ()))


@dataclass(frozen=True)
class PciDevice:
    """A PCI device as sysfs shows it (`/sys/bus/pci/devices/ADDRESS`)."""

    address: str  # 0000:01:00.0
    vendor_product: str  # 10de:2204
    pci_class: int  # 0x030000
    driver: str | None  # the bound driver's name (vfio-pci, nvidia, ...); None: none bound

    @property
    def is_gpu(self) -> bool:
        return self.pci_class >> 16 == DISPLAY_CLASS

    def __str__(self) -> str:
        return f"{self.address} ({self.vendor_product}, {self.driver or 'no driver'})"


@dataclass(frozen=True)
class HostGpus:
    """What the host offers guests: PCI devices (VM passthrough) and what dockerd's nvidia
    device driver needs (containers)."""

    pci: tuple[PciDevice, ...] = ()
    nvidia_devices: tuple[int, ...] = ()  # N of every /dev/nvidiaN
    nvidia_hook: str | None = None  # where NVIDIA_HOOK is on the PATH; None: not there


def shown(request: str | None, addresses: tuple[str, ...]) -> str:
    """A VM's GPU in a plan line: as declared (the mark's record, `str(PassthroughGpu)`) and
    the PCI addresses its definition holds (or will)."""
    if request is None:
        return ",".join(addresses) or "none"
    if not addresses:
        return f"{request} (no device)"
    if request == f"pci {','.join(addresses)}":
        return request
    return f"{request} at {','.join(addresses)}"


def wanted_addresses(request: PassthroughGpu | None, assigned: str | None, present: tuple[str, ...]) -> tuple[str, ...]:
    """The addresses a VM's definition should hold: the one `planning.gpus` assigned; without
    it (a plan made without reading the host, as the dashboard's), the named one or the one it has."""
    if request is None:
        return ()
    if assigned is not None:
        return (assigned,)
    if request.pci is not None:
        return (request.pci,)
    return present[:1] or ("(unassigned)",)
