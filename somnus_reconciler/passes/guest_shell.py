"""`somnus ssh vm/NAME [COMMAND]`: the argv of an ssh session as root into the VM.

The VM must be managed, running and carry SSH (`vm_images.guest_services`). Before
the session, one `ssh ... true` proves the guest's host key (`guest_access.wait_for_ssh`):
a server that is not the VM is refused with its name and port, and no command
reaches it. The CLI then replaces itself with ssh, so the session's exit code is ssh's.
"""

from __future__ import annotations

from collections.abc import Sequence

from somnus_reconciler.images import vm_images
from somnus_reconciler.providers import backends as backends_mod
from somnus_reconciler.providers import guest_access
from somnus_reconciler.values.errors import PermanentError

_PROVE_TIMEOUT_S = 30.0


class ShellRefused(PermanentError):
    """No managed running VM with SSH, or its SSH server did not prove who it is."""


def ssh_argv(name: str, command: Sequence[str], *, interactive: bool, state_dir: str | None) -> list[str]:
    address = f"vm/{name}"
    vm, settings = backends_mod.observe_vm(name, state_dir=state_dir)
    if vm is None or not vm.managed or vm.mark is None:
        raise ShellRefused(f"{address} not found among the VMs somnus manages")
    if not vm.running:
        raise ShellRefused(f"{address} is not running")
    if not vm_images.guest_services(vm.mark.image).ssh:
        raise ShellRefused(f"{address}: image {vm.mark.image} carries no SSH server that takes somnus's key")
    port = next((f.host_port for f in vm.mark.forwards if f.name == "ssh"), None)
    if port is None:
        raise ShellRefused(f"{address} has no SSH forward")
    key = guest_access.ensure_keypair(settings.state_dir, name)
    guest_access.wait_for_ssh(port, key, _PROVE_TIMEOUT_S)  # GuestIdentityError: not the VM
    argv = guest_access.ssh_command(port, key, *command)
    return [argv[0], "-t", *argv[1:]] if interactive and not command else argv
