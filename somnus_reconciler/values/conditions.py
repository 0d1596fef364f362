"""Conditions: named facts about an object that hold or not, and why (as in Kubernetes).

`passes.status` builds them for `get` and `describe`; `engine.resource_step`
reports `memory_at_target` at the end of a VM's step. A condition is status:
what a guest made of what the host asked. The planner never reads one.
"""

from __future__ import annotations

from dataclasses import dataclass

from somnus_reconciler.values.actual import ActualVm
from somnus_reconciler.values.quantity import format_bytes


@dataclass(frozen=True)
class Condition:
    type: str  # Running, Managed, MemoryAtTarget, AgentConnected, Ready, SoftRebootConfirmed, LastStepSucceeded
    status: bool
    message: str = ""
    reason: str = ""  # a CamelCase word for programs: here a failed step's triage category

    def __str__(self) -> str:
        return f"{self.type} {self.status}: {self.message}" if self.message else f"{self.type} {self.status}"


def memory_at_target(vm: ActualVm, *, balloon_driver: bool) -> Condition | None:
    """Whether the running guest's balloon has reached the target the host set;
    None while the VM is not running. `balloon_driver`: its image promises one."""
    if vm.balloon is None:
        return None
    reports = f"guest reports {format_bytes(vm.balloon)} of {format_bytes(vm.memory)} requested"
    if vm.balloon == vm.memory:
        return Condition("MemoryAtTarget", True, reports)
    why = "its balloon driver has not got there (yet)" if balloon_driver else "no balloon driver?"
    return Condition("MemoryAtTarget", False, f"{reports}; {why}")
