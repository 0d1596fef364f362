"""Admission: does what will run after apply fit the host and the Pool's limits?

A pure function of the desired state and host figures the caller measures
(`passes.prepare.host_capacity` fills `HostCapacity` from psutil). Counted is what runs once the
plan is applied: VMs declared `running: true`, every declared container, and
owned leftovers that stay running because `--prune` was not given. Disk is
counted whether a VM runs or not: no VM's disk may exceed the file system of
the guest directory, and the disks a plan creates must fit in its free space
(their full size: qcow2 grows up to it). A refusal is a `Diagnostic` with the
numbers; the caller raises them as `InvalidInput`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from somnus_reconciler.values import quantity
from somnus_reconciler.values.desired import DesiredState
from somnus_reconciler.values.diagnostics import Diagnostic, Source
from somnus_reconciler.values.model import PoolSpec

T = TypeVar("T")


@dataclass(frozen=True)
class DiskCapacity:
    """The file system that holds the guest directory (VM disks)."""

    path: Path
    total: int  # bytes
    free: int  # bytes


@dataclass(frozen=True)
class HostCapacity:
    cpus: int
    memory: int  # bytes
    disk: DiskCapacity | None = None  # None: not measured, disk is not checked


@dataclass(frozen=True)
class _Guest:
    address: str
    vcpus: float  # a container's share of CPUs counts as it is (0.25 is a quarter)
    memory: int  # bytes
    owner: str | None
    source: Source | None  # None for leftovers that are not declared

    @property
    def is_vm(self) -> bool:
        return self.address.startswith("vm/")


@dataclass(frozen=True)
class _Excess:
    """A limit the running guests go past, and the guest that first goes past it."""

    over: _Guest | None
    message: str


def check(
    desired: DesiredState,
    host: HostCapacity,
    *,
    also_running: Sequence[tuple[str, int, int, str | None]] = (),
    new_disks: Collection[str] = (),
) -> list[Diagnostic]:
    """`also_running`: (address, vcpus, memory, owner) of owned leftovers that stay up.
    `new_disks`: names of the VMs whose disks the plan creates (create or replace)."""
    guests = _running_after_apply(desired, also_running)
    pool = desired.pool
    excesses = [
        *_memory_excess(guests, host, pool),
        *_cpu_excess(guests, host, pool),
        *_vm_count_excess(guests, pool),
    ]
    problems = [_refusal(desired, excess) for excess in excesses]
    if host.disk is not None:
        problems += _check_disks(desired, host.disk, new_disks)
    return problems


def _running_after_apply(
    desired: DesiredState, also_running: Sequence[tuple[str, int, int, str | None]]
) -> list[_Guest]:
    # Leftovers first: they run already, so a declared guest is the one that tips the scale.
    guests = [_Guest(address, vcpus, memory, owner, None)
              for address, vcpus, memory, owner in also_running]
    guests += [
        _Guest(vm.address, vm.resources.vcpus, vm.resources.memory, vm.owner, vm.source)
        for _, vm in sorted(desired.vms.items()) if vm.running
    ]
    guests += [
        _Guest(c.address, c.cpus, c.memory, c.owner, c.source)
        for _, c in sorted(desired.containers.items())
    ]
    return guests


def _refusal(desired: DesiredState, excess: _Excess) -> Diagnostic:
    """A declared Pool answers for its limits; without one, the guest that tips the scale does."""
    over, message = excess.over, excess.message
    if desired.pool_name is not None:
        if over is not None:
            message += f"; {over.address} is the first that does not fit"
        return Diagnostic(desired.pool_source, f"pool/{desired.pool_name}", message)
    if over is not None:
        return Diagnostic(over.source, over.address, message)
    return Diagnostic(None, None, message)


def _memory_excess(guests: Sequence[_Guest], host: HostCapacity, pool: PoolSpec) -> list[_Excess]:
    reserved = pool.reserved.memory
    free_memory = max(0, host.memory - reserved)
    memory = sum(g.memory for g in guests)
    if memory <= free_memory:
        return []
    return [_Excess(_first_over(guests, lambda g: g.memory, free_memory), (
        f"running guests need {_size(memory)} of memory but the host offers "
        f"{_size(host.memory)} - {_size(reserved)} reserved = {_size(free_memory)}"
    ))]


def _cpu_excess(guests: Sequence[_Guest], host: HostCapacity, pool: PoolSpec) -> list[_Excess]:
    reserved = pool.reserved.vcpus
    vcpu_limit = max(0, host.cpus - reserved) * pool.cpu_overcommit
    vcpus = sum(g.vcpus for g in guests)
    if vcpus <= vcpu_limit:
        return []
    return [_Excess(_first_over(guests, lambda g: g.vcpus, vcpu_limit), (
        f"running guests need {vcpus:g} vCPUs but the host allows ({host.cpus} cores - "
        f"{reserved} reserved) x {pool.cpu_overcommit:g} overcommit = {vcpu_limit:g}"
    ))]


def _vm_count_excess(guests: Sequence[_Guest], pool: PoolSpec) -> list[_Excess]:
    """maxVms over all running VMs, then maxVmsPerOwner owner by owner."""
    excesses: list[_Excess] = []
    vms = [g for g in guests if g.is_vm]
    if len(vms) > pool.max_vms:
        excesses.append(_Excess(
            vms[pool.max_vms],
            f"{len(vms)} VMs would be running but the pool allows at most {pool.max_vms} (maxVms)",
        ))
    by_owner: dict[str, list[_Guest]] = {}
    for vm in vms:
        if vm.owner is not None:
            by_owner.setdefault(vm.owner, []).append(vm)
    for owner, owned in sorted(by_owner.items()):
        if len(owned) > pool.max_vms_per_owner:
            excesses.append(_Excess(owned[pool.max_vms_per_owner], (
                f"owner {owner!r} would have {len(owned)} running VMs but the pool allows at most "
                f"{pool.max_vms_per_owner} per owner (maxVmsPerOwner)"
            )))
    return excesses


def _check_disks(desired: DesiredState, disk: DiskCapacity, new_disks: Collection[str]) -> list[Diagnostic]:
    """Disks are the VMs' own: a refusal names the VM, not the Pool."""
    problems: list[Diagnostic] = []
    vms = sorted(desired.vms.items())
    for _, vm in vms:
        if vm.disk_size > disk.total:
            problems.append(Diagnostic(vm.source, vm.address, (
                f"spec.diskSize: {_size(vm.disk_size)} is more than the whole file system of "
                f"{disk.path} ({_size(disk.total)})"
            )))
    created = [vm for name, vm in vms if name in new_disks]
    needed = sum(vm.disk_size for vm in created)
    over = _first_over(created, lambda vm: vm.disk_size, disk.free)
    if over is not None:
        problems.append(Diagnostic(over.source, over.address, (
            f"new VM disks need {_size(needed)} but {disk.path} has {_size(disk.free)} free"
        )))
    return problems


def _first_over(items: Sequence[T], amount: Callable[[T], float], limit: float) -> T | None:
    """The item (guest, disk) whose addition takes the running total past `limit`."""
    total: float = 0
    for item in items:
        total += amount(item)
        if total > limit:
            return item
    return None


def _size(amount: int) -> str:
    """Exact binary notation when short (8Gi, 1536Mi); else two decimals (~23.48Gi)."""
    exact = quantity.format_bytes(amount)
    if len(exact.rstrip("KMGTPEi")) <= 4:
        return exact
    for suffix, unit in (("Pi", 2**50), ("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if amount >= unit:
            text = f"{amount / unit:.2f}".rstrip("0").rstrip(".")
            return f"{text}{suffix}" if float(text) * unit == amount else f"~{text}{suffix}"
    return exact
