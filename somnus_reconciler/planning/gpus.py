"""GPU admission: which host device each VM's `gpu:` gets, and every `gpu:` the host cannot give.

Part of admission (`planning.admission` counts sizes, this module devices); a pure function
of the desired state, the host's GPUs (`providers.host_gpus` reads them) and the PCI devices
existing libvirt domains pass through. `passes.prepare` calls it before planning, so that
the plan and the domain XML carry the device each VM gets (`DesiredVm.gpu_address`).

A VM's GPU must be a display controller (PCI class 0x03xxxx) the host has, bound to
vfio-pci (somnus never takes a device from a host driver), and given to no other guest: no
other declared VM and no other libvirt domain's definition. A VM keeps the device its
domain has while that still fits. A container's device request needs what dockerd's nvidia
device driver needs: /dev/nvidiaN devices (as many as it asks for, those it names by index)
and nvidia-container-runtime-hook on the PATH; GPUs named by UUID are not checked here.
Every refusal names the manifest's FILE:LINE, the object and the field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from somnus_reconciler.values.desired import DesiredContainer, DesiredState, DesiredVm
from somnus_reconciler.values.diagnostics import Diagnostic
from somnus_reconciler.values.gpu import (
    NVIDIA_CAPABILITIES,
    NVIDIA_DRIVER,
    NVIDIA_HOOK,
    VFIO_DRIVER,
    HostGpus,
    PassthroughGpu,
    PciDevice,
)


@dataclass(frozen=True)
class GpuAdmission:
    addresses: dict[str, str]  # VM name -> PCI address of the device it gets
    problems: tuple[Diagnostic, ...]

    def apply(self, desired: DesiredState) -> DesiredState:
        """`desired` with each VM's device filled in."""
        vms = {name: dataclasses.replace(vm, gpu_address=self.addresses[name]) if name in self.addresses else vm
               for name, vm in desired.vms.items()}
        return dataclasses.replace(desired, vms=vms)


def uses_gpus(desired: DesiredState) -> bool:
    """Whether any declared guest has a GPU (else the host need not be read)."""
    return any(vm.gpu is not None for vm in desired.vms.values()) or any(
        c.gpu is not None for c in desired.containers.values())


def admit(desired: DesiredState, host: HostGpus, domains: Mapping[str, tuple[str, ...]] = {}) -> GpuAdmission:  # noqa: B006
    """`domains`: the PCI addresses each existing libvirt domain passes through, by name
    (none when the caller did not observe libvirt, as `validate`)."""
    # address -> (the domain or VM holding it, how a message names that one)
    held = {address: (name, f"libvirt domain {name!r}") for name, addresses in domains.items() for address in addresses}
    addresses: dict[str, str] = {}
    problems: list[Diagnostic] = []
    # Named devices first, so that `gpu: true` never takes the one another VM names.
    wanting = sorted((vm for vm in desired.vms.values() if vm.gpu is not None), key=_claim_order)
    for vm in wanting:
        others = {address: who for address, (holder, who) in held.items() if holder != vm.name}
        chosen = _choose(vm, host, others, domains.get(vm.name, ()))
        if isinstance(chosen, PciDevice):
            addresses[vm.name] = chosen.address
            held[chosen.address] = (vm.name, f"{vm.address} ({vm.gpu_source or vm.source})")
        else:
            problems.append(_refusal(vm, chosen))
    problems += [_refusal(c, problem) for _, c in sorted(desired.containers.items())
                 if (problem := _container_problem(c, host)) is not None]
    return GpuAdmission(addresses, tuple(problems))


def _claim_order(vm: DesiredVm) -> tuple[int, str]:
    assert vm.gpu is not None
    return (0 if vm.gpu.pci else 1 if vm.gpu.vendor_product else 2, vm.name)


def _choose(vm: DesiredVm, host: HostGpus, held: Mapping[str, str], own: tuple[str, ...]) -> PciDevice | str:
    """The device `vm` gets, or why none."""
    request = vm.gpu
    assert request is not None
    named = _named(request)
    matching = [d for d in host.pci if _matches(request, d)]
    gpus = [d for d in matching if d.is_gpu]
    if not matching:
        return f"the host has no PCI device {named}" if named else \
            "the host has no GPU (no PCI display controller, class 0x03xxxx)"
    if not gpus:
        return "; ".join(f"{d.address} is not a GPU (PCI class 0x{d.pci_class:06x}, not a display controller "
                         "0x03xxxx)" for d in matching)
    bound = [d for d in gpus if d.driver == VFIO_DRIVER]
    if not bound:
        shown = ", ".join(str(d) for d in gpus)
        return (f"no GPU {f'{named} ' if named else 'of this host '}is bound to {VFIO_DRIVER} ({shown}); "
                f"passthrough needs it bound first (e.g. driverctl set-override {gpus[0].address} {VFIO_DRIVER})")
    free = [d for d in bound if d.address not in held]
    if not free:
        return "; ".join(f"{d.address} is already given to {held[d.address]}" for d in bound)
    return next((d for d in free if d.address in own), free[0])


def _named(request: PassthroughGpu) -> str | None:
    return request.pci or request.vendor_product


def _matches(request: PassthroughGpu, device: PciDevice) -> bool:
    if request.pci is not None:
        return device.address == request.pci
    if request.vendor_product is not None:
        return device.vendor_product == request.vendor_product
    return device.is_gpu


def _container_problem(c: DesiredContainer, host: HostGpus) -> str | None:
    """What dockerd would refuse, or fail with, when it starts `c` with its device request."""
    request = c.gpu
    if request is None:
        return None
    problems = []
    if request.driver not in ("", NVIDIA_DRIVER):
        problems.append(f"dockerd has no GPU device driver {request.driver!r} ({NVIDIA_DRIVER} is the one it has)")
    elif not any(set(capabilities) <= NVIDIA_CAPABILITIES for capabilities in request.capabilities):
        problems.append(f"the {NVIDIA_DRIVER} device driver offers none of these capability sets (it offers "
                        f"{', '.join(sorted(NVIDIA_CAPABILITIES))})")
    have = host.nvidia_devices
    numbered = sorted(int(i) for i in request.device_ids if i.isdigit())
    if not have:
        problems.append("the host has no NVIDIA GPU (no /dev/nvidia0)")
    elif request.count > len(have):
        problems.append(f"it asks for {request.count} GPUs but the host has {len(have)}")
    elif missing := [i for i in numbered if i not in have]:
        problems.append(f"the host has no GPU {', '.join(map(str, missing))} "
                        f"(it has {', '.join(map(str, have))})")
    if host.nvidia_hook is None:
        problems.append(f"{NVIDIA_HOOK} is not on the PATH, and dockerd has no {NVIDIA_DRIVER} device driver "
                        "without it (install nvidia-container-toolkit)")
    return "; ".join(problems) or None


def _refusal(guest: DesiredVm | DesiredContainer, problem: str) -> Diagnostic:
    field = "spec.resources.gpu"
    if isinstance(guest, DesiredVm) and guest.profile is not None:
        field = f"spec.profile: profile/{guest.profile}'s gpu"
    return Diagnostic(guest.gpu_source or guest.source, guest.address, f"{field} ({guest.gpu}): {problem}")
