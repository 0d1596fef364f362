"""Commands on one guest by hand: `snapshots`, `rollback`, `soft-reboot`, `ssh`, `exec`,
`console`, `backup`, `backups`, `restore`.

Registered on the `somnus` group by `commands`; like every command they parse,
call one function of `passes` (`rollback`, `soft_reboot`, `guest_shell`, `backup_commands`)
and hand the result to their view (`guest_view`, `backup_view`); `ssh`, `exec` and
`console` exit with the code of what they ran.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import click

from somnus_reconciler.cli import arguments, views
from somnus_reconciler.cli.exit_codes import EXIT_INTERRUPTED, EXIT_NOT_CONFIRMED, EXIT_OK
from somnus_reconciler.providers.protocols import ProviderError
from somnus_reconciler.values.diagnostics import InvalidInput

if TYPE_CHECKING:
    from somnus_reconciler.passes.rollback import Guest


def _guest(address: str) -> Guest:
    """`NAME`, `vm/NAME` or `container/NAME`; a bare name is a VM."""
    from somnus_reconciler.passes.rollback import Guest

    kind, _, name = address.rpartition("/")
    kind = arguments.short_kind(kind) or "vm"
    if kind not in ("vm", "container"):
        arguments.fail(f"{address}: snapshots exist for vm/NAME and container/NAME only")
    return Guest(kind, name)


def _named(address: str, kind: str, hint: str) -> str:
    """NAME of `kind`/NAME; any other address stops the command with `hint`."""
    given_kind, _, name = address.partition("/")
    if arguments.short_kind(given_kind) != kind or not name:
        arguments.fail(f"give {kind}/NAME: {hint}")
    return name


@click.command()
@click.argument("guest")
@arguments.state_dir
def snapshots(guest: str, state_dir: str | None) -> None:
    """List the snapshots somnus took of a VM (or container/NAME), oldest first."""
    from somnus_reconciler.cli import guest_view
    from somnus_reconciler.passes import rollback

    try:
        found = rollback.snapshots(_guest(guest), state_dir=state_dir)
    except ProviderError as e:
        arguments.fail(str(e))
    guest_view.SnapshotsHuman().snapshots(found)


@click.command()
@click.argument("guest")
@click.argument("snapshot", required=False)
@click.option("-f", "--file", "paths", multiple=True, type=click.Path(path_type=Path),
              help="Manifests declaring the container (needed to make a container anew).")
@arguments.state_dir
def rollback(guest: str, snapshot: str | None, paths: Sequence[Path], state_dir: str | None) -> None:
    """Revert a VM (or container/NAME) to SNAPSHOT, by default its newest."""
    from somnus_reconciler.cli import guest_view
    from somnus_reconciler.passes import rollback as rollback_pass

    view = guest_view.RollbackHuman()
    target = _guest(guest)
    try:
        done = rollback_pass.rollback(target, snapshot, paths, state_dir=state_dir, on_lock_wait=view.lock_wait)
    except InvalidInput as e:
        arguments.report_invalid(view, e)
    except (ProviderError, rollback_pass.RollbackRefused) as e:
        arguments.fail(str(e))
    view.done(done)


@click.command("soft-reboot")
@click.argument("address")
@click.option("--timeout", "timeout_s", type=float, default=60.0, show_default=True,
              help="Seconds to wait for every monitored process to come back.")
@arguments.state_dir
def soft_reboot(address: str, timeout_s: float, state_dir: str | None) -> None:
    """Restart the monitored processes in vm/NAME (not the VM) and confirm they are back.

    Exit 0 when confirmed, 1 when not (the SoftRebootConfirmed condition says why).
    """
    from somnus_reconciler.cli import guest_view
    from somnus_reconciler.passes import soft_reboot as soft_reboot_pass

    name = _named(address, "vm", "only VMs run the agent")
    try:
        result = soft_reboot_pass.soft_reboot(name, timeout_s=timeout_s, state_dir=state_dir)
    except (ProviderError, soft_reboot_pass.SoftRebootRefused) as e:
        arguments.fail(str(e))
    guest_view.SoftRebootHuman().result(f"vm/{name}", result)
    sys.exit(EXIT_OK if result.confirmed else EXIT_NOT_CONFIRMED)


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("address")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@arguments.state_dir
def ssh(address: str, command: Sequence[str], state_dir: str | None) -> None:
    """A shell (or COMMAND) as root in vm/NAME, once it has proved its host key.

    Exit code: the session's; 2 when the VM is not there, not running, or what answers
    on its SSH port is not the VM.
    """
    from somnus_reconciler.passes import guest_shell
    from somnus_reconciler.values.errors import SomnusError

    name = _named(address, "vm", "containers are reached with somnus exec")
    try:
        code = guest_shell.run_ssh(name, command, interactive=sys.stdin.isatty(), state_dir=state_dir)
    except (ProviderError, SomnusError) as e:
        arguments.fail(str(e))
    sys.exit(code)


@click.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("address")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@arguments.state_dir
def exec_command(address: str, command: Sequence[str], state_dir: str | None) -> None:
    """Run COMMAND (after --) in container/NAME through dockerd, its output as it comes.

    No TTY and no stdin (for a shell: docker exec -it). Exit code: the command's (126 when
    it cannot start); 2 when the container is not one somnus manages or is not running;
    130 on Ctrl-C, which stops following while the command goes on in the container.
    """
    from somnus_reconciler.passes import guest_shell
    from somnus_reconciler.values.errors import SomnusError

    name = _named(address, "container", "VMs are reached with somnus ssh")
    try:
        code = guest_shell.run_exec(name, command, on_stdout=_passed_on(sys.stdout.buffer),
                                    on_stderr=_passed_on(sys.stderr.buffer), state_dir=state_dir)
    except (ProviderError, SomnusError) as e:
        arguments.fail(str(e))
    except KeyboardInterrupt:
        views.View().error(f"stopped following {command[0]}; it goes on in {address}")
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(code)


def _passed_on(stream: BinaryIO) -> Callable[[bytes], None]:
    def write(chunk: bytes) -> None:
        stream.write(chunk)
        stream.flush()

    return write


@click.command()
@click.argument("address")
@click.option("--force", is_flag=True, help="Take the console from another session attached to it.")
@arguments.state_dir
def console(address: str, force: bool, state_dir: str | None) -> None:
    """The serial console of vm/NAME on this terminal, until Ctrl-] (or the VM stops).

    Exit code: virsh console's; 2 when the VM is not one somnus manages, is not running,
    or stdin is not a terminal.
    """
    from somnus_reconciler.passes import guest_shell
    from somnus_reconciler.values.errors import SomnusError

    name = _named(address, "vm", "containers have no serial console; use somnus exec")
    try:
        code = guest_shell.run_console(name, force=force, terminal=sys.stdin.isatty(), state_dir=state_dir)
    except (ProviderError, SomnusError) as e:
        arguments.fail(str(e))
    sys.exit(code)


def _backed_up(address: str) -> tuple[str, str]:
    """(kind, name) of vm/NAME or container/NAME; a bare name is a VM."""
    kind, _, name = address.rpartition("/")
    kind = arguments.short_kind(kind) or "vm"
    if kind not in ("vm", "container") or not name:
        arguments.fail(f"{address}: give vm/NAME or container/NAME")
    return kind, name


@click.command()
@click.argument("address")
@arguments.state_dir
def backup(address: str, state_dir: str | None) -> None:
    """Back up vm/NAME now (incremental on its newest chain when it can be, else full), or
    container/NAME (its committed image and named volumes)."""
    from somnus_reconciler.cli import backup_view
    from somnus_reconciler.passes import backup_commands

    kind, name = _backed_up(address)
    try:
        if kind == "vm":
            backup_view.BackupsHuman().taken(backup_commands.backup(name, state_dir=state_dir))
        else:
            backup_view.BackupsHuman().taken(backup_commands.backup_container(name, state_dir=state_dir))
    except (ProviderError, backup_commands.BackupRefused) as e:
        arguments.fail(str(e))


@click.command()
@click.argument("address", required=False)
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@arguments.state_dir
def backups(address: str | None, output: str, state_dir: str | None) -> None:
    """List the backups of vm/NAME or container/NAME (of everything without one), oldest first."""
    from somnus_reconciler.cli import backup_view
    from somnus_reconciler.passes import backup_commands

    kind, name = _backed_up(address) if address else (None, None)
    found = backup_commands.listing(kind, name, state_dir=state_dir)
    (backup_view.BackupsJson() if output == "json" else backup_view.BackupsHuman()).backups(found)


@click.command()
@click.argument("address")
@click.argument("backup_name", metavar="BACKUP", required=False)
@click.option("-f", "--file", "paths", multiple=True, type=click.Path(path_type=Path),
              help="Manifests declaring the container (needed to make a container anew).")
@arguments.state_dir
def restore(address: str, backup_name: str | None, paths: Sequence[Path], state_dir: str | None) -> None:
    """Put vm/NAME or container/NAME back as BACKUP (by default its newest) had it; it is
    backed up as it is now first."""
    from somnus_reconciler.cli import backup_view
    from somnus_reconciler.passes import backup_commands

    kind, name = _backed_up(address)
    try:
        if kind == "vm":
            backup_view.BackupsHuman().restored(backup_commands.restore(name, backup_name, state_dir=state_dir))
        else:
            backup_view.BackupsHuman().restored(
                backup_commands.restore_container(name, backup_name, paths, state_dir=state_dir))
    except InvalidInput as e:
        arguments.report_invalid(views.HumanView(), e)
    except (ProviderError, backup_commands.BackupRefused) as e:
        arguments.fail(str(e))
