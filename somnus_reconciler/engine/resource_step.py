"""One step on a VM or a container itself: act through its provider, verify, then settle.

The executor calls `ResourceSteps.attempt` for every change that is not a pack
step, and `replan` before trying a failed one again. Acting maps the change's
action (and, for a VM, its disruption) onto provider calls; verifying re-observes
the one object until a fresh plan for it is empty, within a timeout. The plan
compares only what the host controls, so verifying never waits for a guest.

Settling is the guest's half, and never fails the step: for a running VM whose
image promises a balloon driver (`vm_images.guest_services`), wait, bounded,
for the balloon to reach the target; then report the `MemoryAtTarget`
condition as a line of the step and in its message. A VM of any other image
is done once libvirt has done its part.

A larger disk grows in place before anything else of the step: live through
QEMU while the guest runs, else the qcow2 file. A running guest that carries
the agent grows its root file system at once (`systemd-growfs /`, reported as a
line of the step); any guest of debian-12 does at its next boot anyway.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from somnus_reconciler.engine import retry
from somnus_reconciler.engine.backups import VmBackups
from somnus_reconciler.engine.container_backups import ContainerBackups
from somnus_reconciler.images import vm_images
from somnus_reconciler.planning import plan as plan_mod
from somnus_reconciler.planning.plan import Action, Change, Disruption
from somnus_reconciler.providers import agent_client
from somnus_reconciler.providers.protocols import ContainerProvider, ProviderError, VmProvider
from somnus_reconciler.values.conditions import Condition, memory_at_target
from somnus_reconciler.values.desired import DesiredContainer, DesiredVm
from somnus_reconciler.values.errors import PermanentError
from somnus_reconciler.values.outcome import Outcome

_VERIFY_POLL_S = 0.5


class VerifyFailed(PermanentError):
    """The backend accepted the action but the object did not reach the desired state."""


@dataclass(frozen=True)
class ResourceSteps:
    """Steps on VMs and containers through their providers. The host's side gets
    `verify_timeout_s`; a guest that promises a balloon driver gets `boot_timeout_s`
    after booting (`verify_timeout_s` otherwise) to reach its memory target."""

    vms: VmProvider
    containers: ContainerProvider
    verify_timeout_s: float
    boot_timeout_s: float
    state_dir: Path | None = None  # where the agents' tokens are; None: no agent is asked
    backups: VmBackups | None = None  # None: a VM's disk is never destroyed (the step fails)
    container_backups: ContainerBackups | None = None  # None: a container is never pruned (the step fails)

    def attempt(self, change: Change, on_event: Callable[[str], None] = lambda line: None) -> retry.Attempt:
        """Act, verify, settle; a provider's error or a verify timeout is a failed attempt."""
        try:
            backed_up = self._back_up_before_destroying(change)
            if backed_up is not None:
                on_event(backed_up)
            if change.kind == "vm":
                self._act_vm(change)
            else:
                self._act_container(change)
            self._verify(change)
            notes = [str(note) for note in (self._grow_file_system(change), self._settle(change)) if note]
        except (ProviderError, VerifyFailed) as e:
            return retry.failed(e)
        for note in notes:
            on_event(note)
        return retry.Attempt(Outcome.OK, "; ".join(["done", *([backed_up] if backed_up else []), *notes]))

    def replan(self, change: Change) -> Change | None:
        """The change still needed for this one object, from a fresh observation."""
        try:
            return self._still_needed(change)
        except ProviderError:
            return change  # still unreachable: the next attempt says so

    def _still_needed(self, change: Change) -> Change | None:
        if change.action is Action.DELETE:
            observe_one = self.vms.observe_one if change.kind == "vm" else self.containers.observe_one
            return change if observe_one(change.name) is not None else None
        if isinstance(change.desired, DesiredVm):
            return plan_mod.vm_change(change.desired, self.vms.observe_one(change.name))
        assert isinstance(change.desired, DesiredContainer)
        return plan_mod.container_change(change.desired, self.containers.observe_one(change.name))

    def _act_vm(self, change: Change) -> None:
        vms = self.vms
        want = change.desired
        if change.action is Action.DELETE:
            vms.delete(change.name)
            return
        assert isinstance(want, DesiredVm)
        if _grows_disk(change):
            vms.grow_disk(want)
        if change.action is Action.CREATE:
            vms.create(want)
        elif change.action is Action.REPLACE:
            vms.delete(want.name)
            vms.create(want)
        elif change.action is Action.STOP:
            vms.stop(want.name)
            vms.redefine(want)
        elif change.action is Action.START:
            vms.redefine(want)
            vms.start(want.name)
        elif change.disruption is Disruption.LIVE:
            vms.resize_live(want)
            vms.write_mark(want)
        elif change.disruption is Disruption.RESTART:
            vms.redefine(want)
            vms.stop(want.name)
            vms.start(want.name)
        else:  # shut off, or only the mark differs
            vms.redefine(want)
            vms.write_mark(want)

    def _act_container(self, change: Change) -> None:
        containers = self.containers
        if change.action is Action.DELETE:
            containers.delete(change.name)
            return
        want = change.desired
        assert isinstance(want, DesiredContainer)
        if change.action is Action.REPLACE:
            containers.delete(want.name)
            containers.create(want)
        elif change.action is Action.CREATE:
            containers.create(want)
        elif change.action is Action.START:
            containers.start(want.name)

    def _verify(self, change: Change) -> None:
        """Re-observe the one object until nothing remains to be done for it."""
        deadline = time.monotonic() + self.verify_timeout_s
        while (problem := _remaining(self._still_needed(change))) is not None:
            if time.monotonic() >= deadline:
                raise VerifyFailed(f"{change.address}: not converged after {change.action.value}: {problem}")
            time.sleep(_VERIFY_POLL_S)

    def _settle(self, change: Change) -> Condition | None:
        """The running VM's `MemoryAtTarget`, after a bounded wait if its image promises
        a balloon driver (none otherwise); None for anything else."""
        want = change.desired
        if not isinstance(want, DesiredVm) or change.action is Action.DELETE or not want.running:
            return None
        balloon_driver = vm_images.guest_services(want.image).balloon
        boots = (change.action in (Action.CREATE, Action.REPLACE, Action.START)
                 or change.disruption is Disruption.RESTART)
        patience = (self.boot_timeout_s if boots else self.verify_timeout_s) if balloon_driver else 0.0
        deadline = time.monotonic() + patience
        while True:
            vm = self.vms.observe_one(want.name)
            condition = memory_at_target(vm, balloon_driver=balloon_driver) if vm is not None else None
            if condition is None or condition.status or time.monotonic() >= deadline:
                return condition
            time.sleep(_VERIFY_POLL_S)

    def _back_up_before_destroying(self, change: Change) -> str | None:
        """A full backup before a step that destroys a VM's disk (replace, prune) or a
        container (prune; a recreate keeps its volumes and is snapshot-guarded); the
        step fails, and the object stays as it is, when none can be taken."""
        if change.action is not Action.DELETE and not (change.kind == "vm" and change.action is Action.REPLACE):
            return None
        reason = "before replace" if change.action is Action.REPLACE else "before prune"
        if change.kind == "container":
            if self.container_backups is None:
                raise ProviderError(change.address, "back up", "no backup can be taken here, so it is left alone")
            container = self.containers.observe_one(change.name)
            if container is None or not container.managed:
                return None
            taken = self.container_backups.take(container, reason)
            return f"backup {taken.name} taken ({taken.size // 2**20} MiB) {reason}"
        if self.backups is None:
            raise ProviderError(change.address, "back up", "no backup can be taken here, so its disk is left alone")
        vm = self.vms.observe_one(change.name)
        if vm is None or vm.mark is None:
            return None  # nothing of ours to lose
        record = self.backups.take(vm, reason, full=True)
        return f"backup {record.name} taken ({record.level}, {record.size // 2**20} MiB) {reason}"

    def _grow_file_system(self, change: Change) -> str | None:
        """After a live disk growth: the guest's root file system grown through its agent,
        when its image carries one; what happened, as a line for the step."""
        want = change.desired
        if not (_grows_disk(change) and change.disruption is Disruption.LIVE and isinstance(want, DesiredVm)
                and vm_images.guest_services(want.image).agent and self.state_dir is not None):
            return None
        vm = self.vms.observe_one(want.name)
        client = agent_client.for_vm(vm, self.state_dir) if vm is not None else None
        if client is None:
            return "file system not grown now (no agent to ask); it grows at the next boot"
        try:
            result = client.execute(["/lib/systemd/systemd-growfs", "/"], timeout_s=120.0)
        except agent_client.AgentError as e:
            return f"file system not grown now ({e}); it grows at the next boot"
        if result.get("exit_code") != 0:
            return f"file system not grown now (systemd-growfs: {str(result.get('stderr', '')).strip()[:200]})"
        return "file system grown to the new disk size"


def changes_guest(change: Change) -> str | None:
    """The step's name when it changes what runs in a guest, so that a snapshot guards it
    (SPEC section 6): a VM's restart or stop, a container's recreate. None otherwise."""
    if change.kind == "vm" and change.action is Action.STOP:
        return "stop"
    if change.kind == "vm" and change.action is Action.UPDATE and change.disruption is Disruption.RESTART:
        return "restart"
    if change.kind == "container" and change.action is Action.REPLACE:
        return "recreate"
    return None


def _grows_disk(change: Change) -> bool:
    return change.action is not Action.CREATE and any(f.name == "diskSize" for f in change.fields)


def _remaining(change: Change | None) -> str | None:
    if change is None:
        return None
    if change.action is Action.DELETE:
        return "still exists"
    details = ", ".join(str(f) for f in change.fields)
    return f"still needs {change.action.value}" + (f" ({details})" if details else "")
