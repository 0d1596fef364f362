"""`somnus watch` and `somnus gitops`: the commands that run the reconcile loop.

Registered on the `somnus` group by `commands`. Each parses
its options, makes a `passes.loop.Loop` whose events go to the view `-o` picks
(`loop_views`), and hands it to `passes.watch.watch` or `passes.gitops.follow`
until SIGINT or SIGTERM; then it exits 0. A bad option exits 2.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

from somnus_reconciler.cli import arguments

if TYPE_CHECKING:
    from somnus_reconciler.passes.loop import Loop

_Command = TypeVar("_Command", bound=Callable[..., object])


def _duration(value: str, option: str) -> float:
    from somnus_reconciler.values.quantity import parse_duration

    try:
        seconds = parse_duration(value)
    except ValueError as e:
        arguments.fail(f"{option}: {e}")
    if seconds <= 0:
        arguments.fail(f"{option}: must be more than 0")
    return seconds


def _loop(output: str, prune: bool, state_dir: str | None, parallelism: int) -> Loop:
    """A reconcile loop writing its events as text lines or JSON lines, stopped by SIGINT/SIGTERM."""
    from somnus_reconciler.cli import loop_views
    from somnus_reconciler.passes.loop import Loop
    from somnus_reconciler.semantic import triage

    view = loop_views.for_output(output)
    loop = Loop(view.show, prune=prune, state_dir=state_dir, classifier=triage.default_classifier(),
                parallelism=parallelism)
    loop.install_signal_handlers()
    return loop


_loop_options = [
    click.option("--interval", default="60s", show_default=True,
                 help="Resync interval: drift is found and corrected even without a change."),
    click.option("--prune", is_flag=True, help="Delete owned objects that are no longer declared."),
    click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text",
                 help="text: one line per reconcile; json: one event per line."),
    arguments.parallelism,
    arguments.state_dir,
]


def _with_loop_options(command: _Command) -> _Command:
    for option in reversed(_loop_options):
        command = option(command)
    return command


@click.command()
@arguments.paths
@_with_loop_options
def watch(paths: Sequence[Path], interval: str, prune: bool, output: str, parallelism: int,
          state_dir: str | None) -> None:
    """Reconcile PATHS on every change and every --interval, until SIGINT or SIGTERM."""
    from somnus_reconciler.passes import watch as watch_mod

    interval_s = _duration(interval, "--interval")
    loop = _loop(output, prune, state_dir, parallelism)
    try:
        watch_mod.watch(paths, loop, interval_s=interval_s)
    finally:
        loop.close()


@click.command()
@click.argument("repo")
@click.option("--branch", default="main", show_default=True)
@click.option("--path", "subpath", default=".", show_default=True, help="Manifests directory in the repository.")
@_with_loop_options
def gitops(repo: str, branch: str, subpath: str, interval: str, prune: bool, output: str, parallelism: int,
           state_dir: str | None) -> None:
    """Follow BRANCH of REPO (any URL git takes): apply each new revision, quarantine bad ones.

    Fetches every --interval and at once on SIGHUP. The clone and the journal live
    in the state directory given here (--state-dir, SOMNUS_STATE_DIR or the default),
    whatever the manifests' Pool says.
    """
    import signal
    import threading

    from somnus_reconciler import settings as settings_mod
    from somnus_reconciler.passes import gitops as gitops_mod

    interval_s = _duration(interval, "--interval")
    resolved = settings_mod.resolve(state_dir=state_dir).state_dir
    loop = _loop(output, prune, str(resolved), parallelism)
    fetch_now = threading.Event()
    signal.signal(signal.SIGHUP, lambda _signum, _frame: fetch_now.set())
    try:
        gitops_mod.follow(gitops_mod.GitSource(repo, branch, subpath), loop, state_dir=resolved,
                          interval_s=interval_s, fetch_now=fetch_now)
    finally:
        loop.close()
