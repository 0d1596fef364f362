"""`somnus ssh vm/NAME [COMMAND]`: an ssh session as root into the VM, and its exit code.

The VM must be managed, running and carry SSH (`vm_images.guest_services`). The VM's
key is decrypted in memory only and handed to an ssh-agent of the session's own
(`guest_access.ssh_agent`), stopped when the session ends. Before the session, one
`ssh ... true` proves the guest's host key (`guest_access.wait_for_ssh`): a server
that is not the VM is refused with its name and port, and no command reaches it.
ssh then runs on this terminal as a child, and its exit code is the session's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from types import FrameType

from somnus_reconciler.images import vm_images
from somnus_reconciler.providers import backends as backends_mod
from somnus_reconciler.providers import guest_access
from somnus_reconciler.values.errors import PermanentError

_PROVE_TIMEOUT_S = 30.0


class ShellRefused(PermanentError):
    """No managed running VM with SSH, or its SSH server did not prove who it is."""


def run_ssh(name: str, command: Sequence[str], *, interactive: bool, state_dir: str | None) -> int:
    """Run the session (a shell, with a tty when `interactive`, or `command`); its exit code."""
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
    with guest_access.ssh_agent(key) as agent:
        guest_access.wait_for_ssh(port, key, _PROVE_TIMEOUT_S, agent=agent)  # GuestIdentityError: not the VM
        argv = guest_access.ssh_command(port, key, *command)
        if interactive and not command:
            argv = [argv[0], "-t", *argv[1:]]
        return _foreground(argv, {**os.environ, **agent.env})


def _foreground(argv: list[str], env: dict[str, str]) -> int:
    """Run `argv` on this terminal; its exit code as a shell gives it (128 + N when killed by
    signal N). Ctrl-C and Ctrl-\\ are the session's: ignored here while it runs; a SIGTERM
    or SIGHUP is passed on to it, so that this process still stops the agent after."""
    sys.stdout.flush()
    child = subprocess.Popen(argv, env=env)

    def pass_on(signum: int, _frame: FrameType | None) -> None:
        child.send_signal(signum)

    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in (signal.SIGINT, signal.SIGQUIT)}
    previous |= {signum: signal.signal(signum, pass_on) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        code = child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return code if code >= 0 else 128 - code
