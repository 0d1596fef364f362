"""A way into each guest, by hand: `somnus ssh vm/NAME [-- CMD]`, `somnus exec container/NAME
-- CMD` and `somnus console vm/NAME`; each returns the exit code of what it ran.

Each refuses (`ShellRefused`, naming the guest) one that somnus does not manage or that
is not running, before anything runs.

ssh: the VM must carry SSH (`vm_images.guest_services`). Its key is decrypted in memory
only and handed to an ssh-agent of the session's own (`guest_access.ssh_agent`), stopped
when the session ends. Before the session, one `ssh ... true` proves the guest's host
key (`guest_access.wait_for_ssh`): a server that is not the VM is refused with its name
and port, and no command reaches it. ssh then runs on this terminal as a child.

exec: the command runs through dockerd's exec API (`DockerProvider.exec_streaming`),
without a TTY or stdin; its stdout and stderr are handed on as they come.

console: `virsh -c <libvirt URI> console <domain>` on this terminal as a child: the
VM's serial console (the `<serial type='pty'>` of `domain_xml.build`); Ctrl-] leaves it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from types import FrameType

from somnus_reconciler import settings as settings_mod
from somnus_reconciler.images import vm_images
from somnus_reconciler.providers import backends as backends_mod
from somnus_reconciler.providers import docker_exec, guest_access
from somnus_reconciler.providers.docker_provider import DockerProvider
from somnus_reconciler.settings import Settings
from somnus_reconciler.values.actual import VmMark
from somnus_reconciler.values.errors import PermanentError

_PROVE_TIMEOUT_S = 30.0


class ShellRefused(PermanentError):
    """No managed running guest (with SSH, for ssh), no command to exec, or no virsh."""


def run_ssh(name: str, command: Sequence[str], *, interactive: bool, state_dir: str | None) -> int:
    """Run the session (a shell, with a tty when `interactive`, or `command`); its exit code."""
    mark, settings = _running_vm(name, state_dir)
    address = f"vm/{name}"
    if not vm_images.guest_services(mark.image).ssh:
        raise ShellRefused(f"{address}: image {mark.image} carries no SSH server that takes somnus's key")
    port = next((f.host_port for f in mark.forwards if f.name == "ssh"), None)
    if port is None:
        raise ShellRefused(f"{address} has no SSH forward")
    key = guest_access.ensure_keypair(settings.state_dir, name)
    with guest_access.ssh_agent(key) as agent:
        guest_access.wait_for_ssh(port, key, _PROVE_TIMEOUT_S, agent=agent)  # GuestIdentityError: not the VM
        argv = guest_access.ssh_command(port, key, *command)
        if interactive and not command:
            argv = [argv[0], "-t", *argv[1:]]
        return _foreground(argv, {**os.environ, **agent.env})


def run_console(name: str, *, force: bool, terminal: bool, state_dir: str | None) -> int:
    """Attach this terminal to the VM's serial console until Ctrl-] (or the VM stops);
    virsh's exit code. `force`: take the console from another session holding it;
    `terminal`: whether stdin is a terminal, without which a console is refused."""
    _mark, settings = _running_vm(name, state_dir)
    if not terminal:
        raise ShellRefused(f"vm/{name}: a console needs a terminal, and stdin is not one")
    # virsh rather than the libvirt bindings: it puts the terminal in raw mode, copies
    # both ways and restores the terminal, as an interactive console needs.
    argv = ["virsh", "-c", settings.libvirt_uri, "console", name, *(["--force"] if force else [])]
    try:
        return _foreground(argv, dict(os.environ))
    except FileNotFoundError as e:
        raise ShellRefused("virsh is not installed (apt-get install libvirt-clients)") from e


def run_exec(name: str, command: Sequence[str], *, on_stdout: docker_exec.OutputSink,
             on_stderr: docker_exec.OutputSink, state_dir: str | None) -> int:
    """Run `command` in the managed running container `name`, its output handed on as it comes;
    its exit code."""
    address = f"container/{name}"
    if not command:
        raise ShellRefused(f"{address}: give the command to run after --")
    settings = settings_mod.resolve(None, state_dir=state_dir)
    with DockerProvider(settings.docker_host) as containers:
        container = containers.observe_one(name)
        if container is None or not container.managed:
            raise ShellRefused(f"{address} not found among the containers somnus manages")
        if not container.running:
            raise ShellRefused(f"{address} is not running (it is {container.state})")
        return containers.exec_streaming(name, command, on_stdout=on_stdout, on_stderr=on_stderr)


def _running_vm(name: str, state_dir: str | None) -> tuple[VmMark, Settings]:
    """The mark of vm/`name`, managed and running, and the settings it was read with."""
    vm, settings = backends_mod.observe_vm(name, state_dir=state_dir)
    if vm is None or vm.mark is None:
        raise ShellRefused(f"vm/{name} not found among the VMs somnus manages")
    if not vm.running:
        raise ShellRefused(f"vm/{name} is not running")
    return vm.mark, settings


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
