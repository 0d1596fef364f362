"""Commands on one guest by hand: `snapshots`, `rollback`, `soft-reboot`.

Registered on the `somnus` group by `commands`; like every command they parse,
call one function of `passes` (`rollback`, `soft_reboot`) and hand the result
to their view (`guest_view`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from somnus_reconciler.cli import arguments
from somnus_reconciler.cli.exit_codes import EXIT_NOT_CONFIRMED, EXIT_OK
from somnus_reconciler.providers.protocols import ProviderError
from somnus_reconciler.values import model
from somnus_reconciler.values.diagnostics import InvalidInput

if TYPE_CHECKING:
    from somnus_reconciler.passes.rollback import Guest


def _guest(address: str) -> Guest:
    """`NAME`, `vm/NAME` or `container/NAME`; a bare name is a VM."""
    from somnus_reconciler.passes.rollback import Guest

    kind, _, name = address.rpartition("/")
    kind = model.SHORT_KIND.get(kind, kind) or "vm"
    if kind not in ("vm", "container"):
        arguments.fail(f"{address}: snapshots exist for vm/NAME and container/NAME only")
    return Guest(kind, name)


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

    kind, _, name = address.partition("/")
    if model.SHORT_KIND.get(kind, kind) != "vm" or not name:
        arguments.fail("give vm/NAME: only VMs run the agent")
    try:
        result = soft_reboot_pass.soft_reboot(name, timeout_s=timeout_s, state_dir=state_dir)
    except (ProviderError, soft_reboot_pass.SoftRebootRefused) as e:
        arguments.fail(str(e))
    guest_view.SoftRebootHuman().result(f"vm/{name}", result)
    sys.exit(EXIT_OK if result.confirmed else EXIT_NOT_CONFIRMED)
