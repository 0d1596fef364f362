"""The `somnus` command line (click): parse the arguments, call one function of
`passes`, hand what it returns to the view the output option chose, and exit.

Rendering lives in the `*_view` modules, exit codes in `exit_codes` (SPEC
section 4). Commands import what they need inside their body, so that
`somnus --help` and `somnus diff` load neither torch nor more than they use.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from somnus_reconciler import __version__
from somnus_reconciler.cli import arguments, guest_commands, loop_commands, secret_commands, serve_command, views
from somnus_reconciler.cli.exit_codes import EXIT_CHANGES_PENDING, EXIT_INVALID_OR_ERROR, EXIT_OK, EXIT_STEP_FAILED
from somnus_reconciler.providers import docker_listing
from somnus_reconciler.providers.protocols import ProviderError
from somnus_reconciler.values.diagnostics import InvalidInput

if TYPE_CHECKING:
    from somnus_reconciler.passes.converge import PassReport
    from somnus_reconciler.planning.plan import Plan

_paths, _state_dir, _parallelism = arguments.paths, arguments.state_dir, arguments.parallelism
_fail, _report_invalid = arguments.fail, arguments.report_invalid


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="somnus")
def cli() -> None:
    """Declare persistent AI workstations (VMs, containers, packs) as code."""


cli.add_command(guest_commands.snapshots)
cli.add_command(guest_commands.rollback)
cli.add_command(guest_commands.soft_reboot)
cli.add_command(guest_commands.ssh)
cli.add_command(guest_commands.exec_command)
cli.add_command(guest_commands.console)
cli.add_command(secret_commands.secret)
cli.add_command(guest_commands.backup)
cli.add_command(guest_commands.backups)
cli.add_command(guest_commands.restore)
cli.add_command(loop_commands.watch)
cli.add_command(loop_commands.gitops)
cli.add_command(serve_command.serve)


@cli.command()
@_paths
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
def validate(paths: Sequence[Path], output: str) -> None:
    """Parse, check schema, references, cycles and admission. Changes nothing."""
    from somnus_reconciler.cli import validate_view
    from somnus_reconciler.passes import preview

    view = validate_view.for_output(output)
    try:
        desired = preview.validate(paths)
    except InvalidInput as e:
        _report_invalid(view, e)
    view.valid(desired)


@cli.command()
@_paths
@click.option("--prune", is_flag=True, help="Plan deletion of owned objects no longer declared.")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
@_state_dir
def diff(paths: Sequence[Path], prune: bool, output: str, state_dir: str | None) -> None:
    """Show the plan against the actual state. Exit 0 in sync, 1 changes pending."""
    listing = docker_listing.started()  # first: it lists while the rest is imported and loaded
    from somnus_reconciler.cli import plan_view
    from somnus_reconciler.passes import preview

    view = plan_view.for_output(output)
    try:
        plan = preview.plan(paths, prune=prune, state_dir=state_dir, listing=listing)
    except InvalidInput as e:
        _report_invalid(view, e)
    except ProviderError as e:
        _fail(str(e))
    view.plan(plan)
    view.unreachable(plan.unreachable)
    sys.exit(_diff_exit_code(plan))


def _diff_exit_code(plan: Plan) -> int:
    """A daemon that could not be reached left its half out of the plan: an error."""
    if plan.unreachable:
        return EXIT_INVALID_OR_ERROR
    return EXIT_OK if plan.in_sync else EXIT_CHANGES_PENDING


@cli.command()
@_paths
@click.option("--prune", is_flag=True, help="Delete owned objects that are no longer declared.")
@click.option("--replace", "replace", multiple=True, metavar="vm/NAME",
              help="Consent to replacing this VM's disk (a backup is taken first); repeatable.")
@click.option("--dry-run", is_flag=True, help="Show the plan and stop (exit codes as diff).")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation on a terminal.")
@_parallelism
@_state_dir
def apply(paths: Sequence[Path], prune: bool, replace: Sequence[str], dry_run: bool, yes: bool,
          parallelism: int, state_dir: str | None) -> None:
    """Converge actual state to the manifests.

    One apply at a time per state directory. Steps a killed apply left open are
    rolled back first.
    """
    listing = docker_listing.started()  # first: it lists while the rest is imported and loaded
    import signal
    import threading

    from somnus_reconciler.cli import apply_view
    from somnus_reconciler.passes import apply as apply_pass
    from somnus_reconciler.passes import converge
    from somnus_reconciler.semantic import triage

    terminal = sys.stdout.isatty()
    view, progress = apply_view.ApplyHuman(), apply_view.progress(terminal)
    interrupted = threading.Event()

    def on_plan(plan: Plan) -> bool:
        view.plan(plan)
        if dry_run or not plan.changes:
            return False
        if terminal and sys.stdin.isatty() and not yes and not click.confirm("Apply these changes?", default=False):
            _fail("cancelled; nothing was changed")
        # From here on, Ctrl-C or SIGTERM lets the current step finish or roll back, then stops.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda _signum, _frame: interrupted.set())
        progress.start(len(plan.changes))
        return True

    options = converge.PassOptions(
        prune=prune, replace=frozenset(replace), hooks=[progress], on_recovered=view.recovered, on_plan=on_plan,
        classifier=triage.default_classifier(),
        on_lock_wait=view.lock_wait, should_stop=interrupted.is_set, parallelism=parallelism,
    )
    try:
        report = apply_pass.apply(paths, options, state_dir=state_dir, listing=listing)
    except InvalidInput as e:
        _report_invalid(view, e)
    except ProviderError as e:
        _fail(str(e))
    finally:
        progress.stop()
    view.summary(report)
    view.unreachable(report.plan.unreachable)
    sys.exit(_apply_exit_code(report, dry_run))


def _apply_exit_code(report: PassReport, dry_run: bool) -> int:
    if report.plan.unreachable:  # as in diff
        return EXIT_INVALID_OR_ERROR
    if report.declined:  # --dry-run, or no changes: exit as diff does
        return EXIT_CHANGES_PENDING if dry_run and not report.plan.in_sync else EXIT_OK
    return EXIT_STEP_FAILED if report.failed or report.stopped else EXIT_OK


@cli.command()
@click.argument("kind", required=False)
@click.argument("name", required=False)
@click.option("-o", "--output", type=click.Choice(["table", "json", "yaml"]), default="table")
@click.option("-A", "--all", "include_unmanaged", is_flag=True, help="Also list objects somnus does not own.")
@_state_dir
def get(kind: str | None, name: str | None, output: str, include_unmanaged: bool,
        state_dir: str | None) -> None:
    """Actual state of VMs and containers, with conditions."""
    from somnus_reconciler.cli import status_view
    from somnus_reconciler.passes import status

    view = status_view.for_output(output)
    if kind is not None and "/" in kind:
        kind, name = kind.split("/", 1)
    if kind is not None:
        kind = {"vms": "vm", "containers": "container", "virtualmachine": "vm"}.get(kind.lower(), kind.lower())
        if kind not in ("vm", "container"):
            _fail(f"unknown kind {kind!r}: use vm or container")
    try:
        found = status.get(kind=kind, name=name, include_unmanaged=include_unmanaged, state_dir=state_dir)
    except (ProviderError, status.ObjectNotFound) as e:
        _fail(str(e))
    view.objects(found)


@cli.command()
@click.argument("address")
@_state_dir
def describe(address: str, state_dir: str | None) -> None:
    """Conditions, forwards and recent events of KIND/NAME."""
    from somnus_reconciler.cli import describe_view
    from somnus_reconciler.passes import status

    if "/" not in address:
        _fail("give KIND/NAME, e.g. vm/coder-1")
    kind, name = address.split("/", 1)
    try:
        description = status.describe(arguments.short_kind(kind), name, state_dir=state_dir)
    except (ProviderError, status.ObjectNotFound) as e:
        _fail(str(e))
    describe_view.DescribeHuman().describe(description)


@cli.command()
@click.option("--object", "address", metavar="KIND/NAME", help="Only this object's events (vm/NAME, container/NAME).")
@click.option("--since", metavar="WHEN", help="Only events since a duration ago (30m, 2h, 7d) or an ISO date/time.")
@click.option("--outcome", help="Only events with this outcome (ok, failed, rolled back, retrying, corrected, ...).")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="The newest N events, shown oldest first [50]; with --search the N best matches [5].")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.option("--search", "search_text", metavar="TEXT",
              help="Events nearest in meaning to TEXT, most similar first, with a score.")
@click.option("--rebuild-index", is_flag=True, help="Index every event anew for --search and say how many.")
@_state_dir
def history(address: str | None, since: str | None, outcome: str | None, limit: int | None, output: str,
            search_text: str | None, rebuild_index: bool, state_dir: str | None) -> None:
    """Past operations from the journal: steps, failures, drift; --search finds them by meaning."""
    import time

    from somnus_reconciler.cli import history_view
    from somnus_reconciler.passes import history_query
    from somnus_reconciler.semantic import history as history_mod

    view = history_view.for_output(output)
    if address is not None:
        kind, _, name = address.partition("/")
        kind = arguments.short_kind(kind)
        if kind not in ("vm", "container") or not name:
            _fail(f"--object {address!r}: give vm/NAME or container/NAME")
        address = f"{kind}/{name}"
    try:
        since_at = None if since is None else history_mod.parse_since(since, time.time())
    except ValueError as e:
        _fail(f"--since: {e}")
    query = history_query.HistoryQuery(address, since_at, outcome, limit, search_text, rebuild_index)
    try:
        items = history_query.run(query, state_dir=state_dir, on_reindexed=lambda count: view.reindexed(
            count, results_follow=search_text is not None))
    except history_mod.HistoryIndexError as e:
        _fail(str(e))
    if rebuild_index and search_text is None:
        return
    view.events(items)


@cli.command()
def schema() -> None:
    """JSON Schema of all manifest kinds, for editors."""
    from somnus_reconciler.values import model

    views.print_json(model.json_schema())


@cli.command("triage")
@click.argument("text", required=False)
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
def triage_command(text: str | None, output: str) -> None:
    """Classify a failure text (TEXT, or stdin for - or none) into a category, with a score."""
    from somnus_reconciler.cli import triage_view
    from somnus_reconciler.semantic import triage

    view = triage_view.for_output(output)
    if text is None or text == "-":
        text = sys.stdin.read()
    try:
        result = triage.default_classifier().classify(text)
    except ImportError as e:
        _fail(f"the triage model is not installed: {e}")
    view.verdict(result)


@cli.group()
def image() -> None:
    """Base images for VMs and containers, built locally."""


@image.command("build")
@click.argument("names", nargs=-1)
def image_build(names: Sequence[str]) -> None:
    """Build base images (all of them when none is named)."""
    from somnus_reconciler.cli import image_view
    from somnus_reconciler.images import vm_images
    from somnus_reconciler.passes import base_images

    try:
        base_images.build(names, image_view.ImageBuildHuman())
    except (base_images.UnknownImage, vm_images.ImageError, ProviderError) as e:
        _fail(str(e))

