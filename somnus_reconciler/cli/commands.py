"""The `somnus` command line (click). Parses options, calls reconcile/engine,
hands values to views. Exit codes follow SPEC section 4:
0 ok / in sync, 1 changes pending (diff) or a step failed (apply), 2 invalid input or error.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from somnus_reconciler import __version__
from somnus_reconciler.cli import views
from somnus_reconciler.providers.protocols import ProviderError
from somnus_reconciler.values import model
from somnus_reconciler.values.diagnostics import InvalidInput

if TYPE_CHECKING:
    from somnus_reconciler.planning.plan import Plan
    from somnus_reconciler.providers.backends import Backends

EXIT_OK, EXIT_PENDING, EXIT_FAILED, EXIT_INVALID = 0, 1, 1, 2
_paths = click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
_state_dir = click.option("--state-dir", envvar="SOMNUS_STATE_DIR", default=None,
                          help="Journal and console logs [env SOMNUS_STATE_DIR].")


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_INVALID)


def _report_invalid(error: InvalidInput, output: str = "text") -> NoReturn:
    if output == "json":
        views.print_json(views.diagnostics_json(error.diagnostics))
    else:
        for diagnostic in error.diagnostics:
            click.echo(str(diagnostic), err=True)
        click.echo(f"{len(error.diagnostics)} problem(s); nothing was changed.", err=True)
    sys.exit(EXIT_INVALID)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="somnus")
def cli() -> None:
    """Declare persistent AI workstations (VMs, containers, packs) as code."""


@cli.command()
@_paths
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
def validate(paths: Sequence[Path], output: str) -> None:
    """Parse, check schema, references, cycles and admission. Changes nothing."""
    from somnus_reconciler.passes import prepare

    try:
        desired = prepare.load_desired(paths)
        prepare.static_check(desired)
    except InvalidInput as e:
        _report_invalid(e, output)
    count = len(desired.vms) + len(desired.containers) + len(desired.packs)
    if output == "json":
        views.print_json({"errors": [], "objects": count})
    else:
        click.echo(f"valid: {len(desired.vms)} vm, {len(desired.containers)} container, "
                   f"{len(desired.packs)} pack")


def _plan(paths: Sequence[Path], prune: bool, state_dir: str | None, output: str) -> tuple[Backends, Plan]:
    from somnus_reconciler.passes import prepare
    from somnus_reconciler.providers import backends as backends_mod

    try:
        desired = prepare.load_desired(paths)
        backends = backends_mod.open_backends(desired, state_dir=state_dir)
        return backends, prepare.prepare(desired, backends, prune=prune)
    except InvalidInput as e:
        _report_invalid(e, output)
    except ProviderError as e:
        _fail(str(e))


def _show_plan(plan: Plan, output: str) -> None:
    if output == "json":
        views.print_json(views.plan_json(plan))
        return
    for line in views.plan_lines(plan):
        click.echo(line)
    click.echo(views.plan_summary(plan))


@cli.command()
@_paths
@click.option("--prune", is_flag=True, help="Plan deletion of owned objects no longer declared.")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
@_state_dir
def diff(paths: Sequence[Path], prune: bool, output: str, state_dir: str | None) -> None:
    """Show the plan against the actual state. Exit 0 in sync, 1 changes pending."""
    backends, plan = _plan(paths, prune, state_dir, output)
    backends.close()
    _show_plan(plan, output)
    _exit_if_unreachable(plan)
    sys.exit(EXIT_OK if plan.in_sync else EXIT_PENDING)


def _exit_if_unreachable(plan: Plan) -> None:
    """A daemon could not be reached: its half was left out of the plan, which is an error."""
    if plan.unreachable:
        for message in plan.unreachable:
            click.echo(f"error: {message}; its objects were left out (retried with backoff)", err=True)
        sys.exit(EXIT_INVALID)


@cli.command()
@_paths
@click.option("--prune", is_flag=True, help="Delete owned objects that are no longer declared.")
@click.option("--dry-run", is_flag=True, help="Show the plan and stop (exit codes as diff).")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation on a terminal.")
@_state_dir
def apply(paths: Sequence[Path], prune: bool, dry_run: bool, yes: bool, state_dir: str | None) -> None:
    """Converge actual state to the manifests.

    One apply at a time per state directory. Steps a killed apply left open are
    rolled back first.
    """
    import signal
    import threading

    from somnus_reconciler.passes import converge, prepare
    from somnus_reconciler.providers import backends as backends_mod
    from somnus_reconciler.semantic import triage

    try:
        desired = prepare.load_desired(paths)
        backends = backends_mod.open_backends(desired, state_dir=state_dir)
    except InvalidInput as e:
        _report_invalid(e)
    terminal = sys.stdout.isatty()
    progress: views.TerminalProgress | views.PlainProgress = (
        views.TerminalProgress() if terminal else views.PlainProgress())
    interrupted = threading.Event()

    def on_plan(plan: Plan) -> bool:
        _show_plan(plan, "text")
        if dry_run or not plan.changes:
            return False
        if terminal and sys.stdin.isatty() and not yes and not click.confirm("Apply these changes?", default=False):
            _fail("cancelled; nothing was changed")
        # From here on, Ctrl-C or SIGTERM lets the current step finish or roll back, then stops.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda _signum, _frame: interrupted.set())
        if isinstance(progress, views.TerminalProgress):
            progress.start(len(plan.changes))
        return True

    options = converge.PassOptions(
        prune=prune, hooks=[progress], on_plan=on_plan, classifier=triage.default_classifier(),
        on_lock_wait=lambda message: click.echo(message, err=True), should_stop=interrupted.is_set,
    )
    try:
        report = converge.run_pass(desired, backends, options)
    except InvalidInput as e:
        _report_invalid(e)
    except ProviderError as e:
        _fail(str(e))
    finally:
        if isinstance(progress, views.TerminalProgress):
            progress.stop()
        backends.close()
    for line in report.recovered:
        click.echo(f"recovered: {line}")
    for change in report.reported_drift:
        click.echo(f"drift (driftPolicy: warn, left alone): {change.address}: {views.describe_change(change)}")
    if report.declined:
        _exit_if_unreachable(report.plan)
        sys.exit(EXIT_OK if report.plan.in_sync or not dry_run else EXIT_PENDING)
    failed = report.failed
    if report.stopped:
        click.echo(f"Interrupted: {len(report.plan.changes) - len(report.results)} step(s) not started.")
    click.echo(f"Apply finished: {len(report.results) - len(failed)} step(s) done, {len(failed)} failed.")
    _exit_if_unreachable(report.plan)
    sys.exit(EXIT_FAILED if failed or report.stopped else EXIT_OK)


def _guest(address: str) -> tuple[str, str]:
    """`NAME`, `vm/NAME` or `container/NAME` -> (kind, name); a bare name is a VM."""
    kind, _, name = address.rpartition("/")
    kind = model.SHORT_KIND.get(kind, kind) or "vm"
    if kind not in ("vm", "container"):
        _fail(f"{address}: snapshots exist for vm/NAME and container/NAME only")
    return kind, name


@cli.command()
@click.argument("guest")
@_state_dir
def snapshots(guest: str, state_dir: str | None) -> None:
    """List the snapshots somnus took of a VM (or container/NAME), oldest first."""
    import datetime

    from somnus_reconciler.passes import prepare
    from somnus_reconciler.providers import backends as backends_mod

    kind, name = _guest(guest)
    backends = backends_mod.open_backends(None, state_dir=state_dir)
    provider = backends.vms if kind == "vm" else backends.containers
    try:
        found = provider.snapshots(name)
    except ProviderError as e:
        _fail(str(e))
    finally:
        backends.close()
    for snap in found:
        at = datetime.datetime.fromtimestamp(snap.created).strftime("%Y-%m-%d %H:%M:%S")
        detail = snap.description if kind == "vm" else ""
        click.echo(f"{snap.name:<56} {at}  {detail}".rstrip())
    if not found:
        click.echo(f"no snapshots of {kind}/{name}")


@cli.command()
@click.argument("guest")
@click.argument("snapshot", required=False)
@click.option("-f", "--file", "paths", multiple=True, type=click.Path(path_type=Path),
              help="Manifests declaring the container (needed to make a container anew).")
@_state_dir
def rollback(guest: str, snapshot: str | None, paths: Sequence[Path], state_dir: str | None) -> None:
    """Revert a VM (or container/NAME) to SNAPSHOT, by default its newest."""
    from somnus_reconciler.journal import ApplyLock, Journal
    from somnus_reconciler.passes import prepare
    from somnus_reconciler.providers import backends as backends_mod

    kind, name = _guest(guest)
    desired = None
    if kind == "container":
        if not paths:
            _fail("a container is made anew from its snapshot with its declared spec: give -f MANIFESTS")
        try:
            desired = prepare.load_desired(paths)
        except InvalidInput as e:
            _report_invalid(e)
        if name not in desired.containers:
            _fail(f"container/{name} is not declared in {', '.join(map(str, paths))}")
    backends = backends_mod.open_backends(desired, state_dir=state_dir)
    with ApplyLock(backends.settings.state_dir, on_wait=lambda message: click.echo(message, err=True)):
        try:
            if kind == "vm":
                available = backends.vms.snapshots(name)
                target = snapshot or (available[-1].name if available else None)
                if target is None:
                    _fail(f"no snapshots of vm/{name}")
                backends.vms.revert(name, target)
            else:
                assert desired is not None
                available = backends.containers.snapshots(name)
                target = snapshot or (available[-1].name if available else None)
                if target is None:
                    _fail(f"no snapshots of container/{name}")
                journal = Journal(backends.settings.journal_path)
                journal.move_container_packs(name, backends.containers.restore(desired.containers[name], target))
                journal.close()
        except ProviderError as e:
            _fail(str(e))
        finally:
            backends.close()
        journal = Journal(backends.settings.journal_path)
        journal.record(f"{kind}/{name}", "rollback", "ok", f"reverted by hand to {target}")
        journal.close()
    click.echo(f"{kind}/{name}: reverted to {target}")


def _status_rows(kind: str | None, name: str | None, state_dir: str | None,
                 include_unmanaged: bool, recent_errors: bool = False) -> list[dict[str, Any]]:
    from somnus_reconciler.passes import prepare, status
    from somnus_reconciler.providers import backends as backends_mod

    backends = backends_mod.open_backends(None, state_dir=state_dir)
    try:
        return status.rows(backends, kind=kind, name=name, include_unmanaged=include_unmanaged,
                           recent_errors=recent_errors)
    finally:
        backends.close()


@cli.command()
@click.argument("kind", required=False)
@click.argument("name", required=False)
@click.option("-o", "--output", type=click.Choice(["table", "json", "yaml"]), default="table")
@click.option("-A", "--all", "include_unmanaged", is_flag=True, help="Also list objects somnus does not own.")
@_state_dir
def get(kind: str | None, name: str | None, output: str, include_unmanaged: bool,
        state_dir: str | None) -> None:
    """Actual state of VMs and containers, with conditions."""
    if kind is not None and "/" in kind:
        kind, name = kind.split("/", 1)
    if kind is not None:
        kind = {"vms": "vm", "containers": "container", "virtualmachine": "vm"}.get(kind.lower(), kind.lower())
        if kind not in ("vm", "container"):
            _fail(f"unknown kind {kind!r}: use vm or container")
    try:
        rows = _status_rows(kind, name, state_dir, include_unmanaged)
    except ProviderError as e:
        _fail(str(e))
    if name is not None and not rows:
        _fail(f"{kind}/{name} not found")
    if output == "json":
        views.print_json({"items": rows})
    elif output == "yaml":
        import yaml

        click.echo(yaml.safe_dump({"items": rows}, sort_keys=False), nl=False)
    else:
        views.status_table(rows)


@cli.command()
@click.argument("address")
@_state_dir
def describe(address: str, state_dir: str | None) -> None:
    """Conditions, forwards and recent events of KIND/NAME."""
    from somnus_reconciler import settings as settings_mod
    from somnus_reconciler.journal import Journal

    if "/" not in address:
        _fail("give KIND/NAME, e.g. vm/coder-1")
    kind, name = address.split("/", 1)
    kind = model.SHORT_KIND.get(kind, kind)
    try:
        rows = _status_rows(kind, name, state_dir, include_unmanaged=True, recent_errors=True)
    except ProviderError as e:
        _fail(str(e))
    if not rows:
        _fail(f"{kind}/{name} not found")
    row = rows[0]
    settings = settings_mod.resolve(state_dir=state_dir)
    for key in ("kind", "name", "state", "managed", "vcpus", "maxVcpus", "memory", "maxMemory",
                "image", "domainId", "forwards", "consoleLog"):
        if row.get(key) not in (None, "", {}):
            value = row[key]
            if key in ("memory", "maxMemory"):
                from somnus_reconciler.values.quantity import format_bytes

                value = format_bytes(value)
            elif isinstance(value, dict):
                value = " ".join(f"{k}={v}" for k, v in value.items())
            click.echo(f"{key + ':':<12} {value}")
    click.echo("conditions:")
    for condition in row["conditions"]:
        reason = f"[{condition['reason']}] " if condition.get("reason") else ""
        click.echo(f"  {condition['type']:<20} {condition['status']:<6} {reason}{condition['message']}".rstrip())
    if row.get("agent"):
        from somnus_reconciler.passes import status

        errors = row["agent"].get("recentErrors")
        if errors:
            status.categorize_errors(errors, settings.journal_path)
        for line in views.agent_lines(row["agent"]):
            click.echo(line)
    click.echo("events:")
    if settings.journal_path.exists():
        import datetime

        journal = Journal(settings.journal_path)
        for event in reversed(journal.recent(f"{kind}/{name}", limit=10)):
            at = datetime.datetime.fromtimestamp(event.at).strftime("%Y-%m-%d %H:%M:%S")
            category = f" [{event.category}]" if event.category else ""
            click.echo(f"  {at}  {event.action:<8} {event.outcome:<7}{category} {event.message}")
        journal.close()


@cli.command("soft-reboot")
@click.argument("address")
@click.option("--timeout", "timeout_s", type=float, default=60.0, show_default=True,
              help="Seconds to wait for every monitored process to come back.")
@_state_dir
def soft_reboot(address: str, timeout_s: float, state_dir: str | None) -> None:
    """Restart the monitored processes in vm/NAME (not the VM) and confirm they are back.

    Exit 0 when confirmed, 1 when not (the SoftRebootConfirmed condition says why).
    """
    from somnus_reconciler.journal import Journal
    from somnus_reconciler.passes import prepare, status
    from somnus_reconciler.providers import agent_client
    from somnus_reconciler.providers import backends as backends_mod

    kind, _, name = address.partition("/")
    if model.SHORT_KIND.get(kind, kind) != "vm" or not name:
        _fail("give vm/NAME: only VMs run the agent")
    backends = backends_mod.open_backends(None, state_dir=state_dir)
    try:
        vm = backends.vms.observe_one(name)
    except ProviderError as e:
        _fail(str(e))
    finally:
        backends.close()
    if vm is None or not vm.managed:
        _fail(f"vm/{name} not found among the VMs somnus manages")
    if not vm.running:
        _fail(f"vm/{name} is not running")
    client = agent_client.for_vm(vm, backends.settings.state_dir)
    if client is None:
        _fail(f"vm/{name} has no agent forward or token (made before the agent existed?)")
    try:
        outcome = agent_client.confirm_soft_reboot(client, timeout_s)
    except agent_client.AgentError as e:
        _fail(f"vm/{name}: {e}")
    journal = Journal(backends.settings.journal_path)
    journal.record(f"vm/{name}", status.SOFT_REBOOT_ACTION, "ok" if outcome.confirmed else "timed out",
                   outcome.message)
    journal.close()
    verdict = "confirmed" if outcome.confirmed else "NOT confirmed"
    click.echo(f"vm/{name}: soft reboot {verdict} in {outcome.duration_s:.1f}s: {outcome.message}")
    sys.exit(EXIT_OK if outcome.confirmed else EXIT_FAILED)


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
    import datetime
    import time

    from somnus_reconciler import settings as settings_mod
    from somnus_reconciler.journal import Event, Journal
    from somnus_reconciler.semantic import history as history_mod

    if address is not None:
        kind, _, name = address.partition("/")
        kind = model.SHORT_KIND.get(kind, kind)
        if kind not in ("vm", "container") or not name:
            _fail(f"--object {address!r}: give vm/NAME or container/NAME")
        address = f"{kind}/{name}"
    try:
        since_at = None if since is None else history_mod.parse_since(since, time.time())
    except ValueError as e:
        _fail(f"--since: {e}")
    settings = settings_mod.resolve(state_dir=state_dir)
    entries: list[Event] = []
    scores: list[float] | None = None
    if settings.journal_path.exists():  # none yet: no history, and none is made by reading
        journal = Journal(settings.journal_path)
        try:
            if search_text is None and not rebuild_index:
                entries = journal.history(address=address, since=since_at, outcome=outcome, limit=limit or 50)
            else:
                index = history_mod.HistoryIndex(settings.state_dir)
                if rebuild_index:
                    click.echo(f"indexed {index.rebuild(journal)} event(s)", err=search_text is not None)
                else:
                    index.sync(journal)
                if search_text is not None:
                    hits = index.search(search_text, limit=limit or 5, address=address, outcome=outcome,
                                        since=since_at)
                    entries, scores = [hit.entry for hit in hits], [hit.score for hit in hits]
        except history_mod.HistoryIndexError as e:
            _fail(str(e))
        finally:
            journal.close()
    elif rebuild_index:
        click.echo("indexed 0 event(s)", err=search_text is not None)
    if rebuild_index and search_text is None:
        return
    if output == "json":
        views.print_json({"items": [
            {"id": e.id,
             "at": datetime.datetime.fromtimestamp(e.at, datetime.timezone.utc).isoformat(timespec="seconds"),
             "address": e.address, "action": e.action, "outcome": e.outcome, "category": e.category,
             "message": e.message, **({"score": scores[i]} if scores is not None else {})}
            for i, e in enumerate(entries)
        ]})
    else:
        views.history_table(entries, scores)


from somnus_reconciler.cli import loop_commands  # noqa: E402,F401  (registers watch and gitops on cli)


@cli.command()
def schema() -> None:
    """JSON Schema of all manifest kinds, for editors."""
    views.print_json(model.json_schema())


@cli.command("triage")
@click.argument("text", required=False)
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
def triage_command(text: str | None, output: str) -> None:
    """Classify a failure text (TEXT, or stdin for - or none) into a category, with a score."""
    import json

    from somnus_reconciler.semantic import triage

    if text is None or text == "-":
        text = sys.stdin.read()
    try:
        result = triage.default_classifier().classify(text)
    except ImportError as e:
        _fail(f"the triage model is not installed: {e}")
    if output == "json":
        click.echo(json.dumps({"category": result.category.value, "score": result.score}))
    else:
        click.echo(f"{result.category.value}  {result.score:.3f}")


@cli.group()
def image() -> None:
    """Base images for VMs and containers, built locally."""


@image.command("build")
@click.argument("names", nargs=-1)
def image_build(names: Sequence[str]) -> None:
    """Build base images (all of them when none is named)."""
    from somnus_reconciler import settings as settings_mod
    from somnus_reconciler.images import container_images, vm_images
    from somnus_reconciler.providers.docker_provider import DockerProvider

    known = vm_images.VM_IMAGE_NAMES + container_images.CONTAINER_IMAGE_NAMES
    unknown = [n for n in names if n not in known]
    if unknown:
        _fail(f"unknown image(s) {', '.join(unknown)}; known: {', '.join(known)}")
    settings = settings_mod.resolve()
    say = lambda line: click.echo(f"  {line}")  # noqa: E731
    try:
        for name in names or known:
            click.echo(f"building {name}")
            if name in vm_images.VM_IMAGE_NAMES:
                built = vm_images.build_vm_image(name, settings.images_dir, log=say)
                click.echo(f"{name}: {built.disk.parent}")
            else:
                provider = DockerProvider(settings.docker_host)
                container_images.build_container_image(name, provider, log=say,
                                                       images_dir=settings.images_dir)
                provider.close()
                click.echo(f"{name}: present")
    except (vm_images.ImageError, ProviderError) as e:  # ImageRecipeError is an ImageError
        _fail(str(e))


def main() -> None:
    cli()
