"""Admission: does what will run after apply fit the host and the Pool's limits?

A pure function of the desired state and host figures the caller measures
(`reconcile` fills `HostCapacity` from psutil). Counted is what runs once the
plan is applied: VMs declared `running: true`, every declared container, and
owned leftovers that stay running because `--prune` was not given. A refusal
is a `Diagnostic` with the numbers; the caller raises them as `InvalidInput`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from somnus_reconciler import quantity
from somnus_reconciler.desired import DesiredState
from somnus_reconciler.diagnostics import Diagnostic, Source


@dataclass(frozen=True)
class HostCapacity:
    cpus: int
    memory: int  # bytes


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


def check(
    desired: DesiredState,
    host: HostCapacity,
    *,
    also_running: Sequence[tuple[str, int, int, str | None]] = (),
) -> list[Diagnostic]:
    pool = desired.pool
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
    problems: list[Diagnostic] = []

    def refuse(over: _Guest | None, message: str) -> None:
        if desired.pool_name is not None:
            if over is not None:
                message += f"; {over.address} is the first that does not fit"
            problems.append(Diagnostic(desired.pool_source, f"pool/{desired.pool_name}", message))
        elif over is not None:
            problems.append(Diagnostic(over.source, over.address, message))
        else:
            problems.append(Diagnostic(None, None, message))

    reserved = pool.reserved
    free_memory = max(0, host.memory - reserved.memory)
    memory = sum(g.memory for g in guests)
    if memory > free_memory:
        refuse(_first_over(guests, lambda g: g.memory, free_memory), (
            f"running guests need {_size(memory)} of memory but the host offers "
            f"{_size(host.memory)} - {_size(reserved.memory)} reserved = {_size(free_memory)}"
        ))

    free_cores = max(0, host.cpus - reserved.vcpus)
    vcpu_limit = free_cores * pool.cpu_overcommit
    vcpus = sum(g.vcpus for g in guests)
    if vcpus > vcpu_limit:
        refuse(_first_over(guests, lambda g: g.vcpus, vcpu_limit), (
            f"running guests need {vcpus:g} vCPUs but the host allows ({host.cpus} cores - "
            f"{reserved.vcpus} reserved) x {pool.cpu_overcommit:g} overcommit = {vcpu_limit:g}"
        ))

    vms = [g for g in guests if g.is_vm]
    if len(vms) > pool.max_vms:
        refuse(vms[pool.max_vms],
               f"{len(vms)} VMs would be running but the pool allows at most {pool.max_vms} (maxVms)")

    by_owner: dict[str, list[_Guest]] = {}
    for vm in vms:
        if vm.owner is not None:
            by_owner.setdefault(vm.owner, []).append(vm)
    for owner, owned in sorted(by_owner.items()):
        if len(owned) > pool.max_vms_per_owner:
            refuse(owned[pool.max_vms_per_owner], (
                f"owner {owner!r} would have {len(owned)} running VMs but the pool allows at most "
                f"{pool.max_vms_per_owner} per owner (maxVmsPerOwner)"
            ))
    return problems


def _first_over(guests: Sequence[_Guest], amount: Callable[[_Guest], float], limit: float) -> _Guest | None:
    """The guest whose addition takes the running total past `limit`."""
    total = 0.0
    for guest in guests:
        total += amount(guest)
        if total > limit:
            return guest
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
