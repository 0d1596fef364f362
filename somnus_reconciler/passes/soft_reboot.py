"""`somnus soft-reboot vm/NAME`: restart the processes the VM's agent supervises, not the VM.

Asks the agent (`agent_client.confirm_soft_reboot`), waits until every
monitored process is back under a new pid, and records the outcome in the
journal, where `status` finds it for the `SoftRebootConfirmed` condition.
"""

from __future__ import annotations

from somnus_reconciler.images import vm_images
from somnus_reconciler.journal import Journal
from somnus_reconciler.passes import status
from somnus_reconciler.providers import agent_client
from somnus_reconciler.providers import backends as backends_mod
from somnus_reconciler.values.errors import PermanentError
from somnus_reconciler.values.outcome import Outcome


class SoftRebootRefused(PermanentError):
    """No managed running VM with an agent to ask, or the agent did not take the request."""


def soft_reboot(name: str, *, timeout_s: float, state_dir: str | None) -> agent_client.SoftRebootConfirmation:
    """Soft-reboot vm/`name`; ProviderError when libvirt fails, SoftRebootRefused as above."""
    address = f"vm/{name}"
    vm, settings = backends_mod.observe_vm(name, state_dir=state_dir)
    if vm is None or not vm.managed:
        raise SoftRebootRefused(f"{address} not found among the VMs somnus manages")
    if not vm.running:
        raise SoftRebootRefused(f"{address} is not running")
    assert vm.mark is not None
    if not vm_images.guest_services(vm.mark.image).agent:
        raise SoftRebootRefused(f"{address}: image {vm.mark.image} carries no agent to ask (debian-12 does)")
    client = agent_client.for_vm(vm, settings.state_dir)
    if client is None:
        raise SoftRebootRefused(f"{address} has no agent forward or token (made before the agent existed?)")
    try:
        confirmation = agent_client.confirm_soft_reboot(client, timeout_s)
    except agent_client.AgentError as e:
        raise SoftRebootRefused(f"{address}: {e}") from e
    with Journal(settings.journal_path) as journal:
        journal.record(address, status.SOFT_REBOOT_ACTION, Outcome.OK if confirmation.confirmed else Outcome.TIMED_OUT,
                       confirmation.message)
    return confirmation
