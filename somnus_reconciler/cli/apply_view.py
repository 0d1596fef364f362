"""`somnus apply`: the plan (as `diff` shows it), each step's progress, and the summary.

`progress` picks the engine hook: `TerminalProgress` (a rich display: the overall bar
and a line per step under way) on a terminal, `PlainProgress` (lines naming the object,
flushed) for logs, pipes and CI.
`ApplyHuman` shows the plan, a wait for another apply's lock, and what the pass
did. Apply has no JSON output.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TextIO

from somnus_reconciler.cli.plan_view import PlanHuman
from somnus_reconciler.planning.plan import Change
from somnus_reconciler.planning.plan_text import describe_change

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import TaskID

    from somnus_reconciler.engine.executor import StepResult
    from somnus_reconciler.passes.converge import PassReport


class ApplyHuman(PlanHuman):
    def lock_wait(self, message: str) -> None:
        """Another apply holds the lock: who, on stderr."""
        self.echo_err(message)

    def recovered(self, lines: tuple[str, ...]) -> None:
        """What the recovery of a killed apply did: shown first, before the plan made after it."""
        for line in lines:
            self.echo(f"recovered: {line}")

    def summary(self, report: PassReport) -> None:
        """Drift set aside; then, unless the pass was declined, how the steps went."""
        for change in report.reported_drift:
            self.echo(f"drift (driftPolicy: warn, left alone): {change.address}: {describe_change(change)}")
        if report.declined:
            return
        failed = len(report.failed)
        if report.stopped:
            self.echo(f"Interrupted: {len(report.plan.changes) - len(report.results)} step(s) not started.")
        self.echo(f"Apply finished: {len(report.results) - failed} step(s) done, {failed} failed.")


def progress(terminal: bool) -> TerminalProgress | PlainProgress:
    return TerminalProgress() if terminal else PlainProgress()


def _failure_tag(result: StepResult) -> str:
    """' [NETWORK_FAILURE, 3 attempts]' for a failed step, from what the engine recorded."""
    parts = [result.category.value] if result.category is not None else []
    if result.attempts > 1:
        parts.append(f"{result.attempts} attempts")
    return f" [{', '.join(parts)}]" if parts else ""


class PlainProgress:
    """One line per finished step: for logs, pipes and CI."""

    def __init__(self, out: TextIO | None = None) -> None:
        self._out = out or sys.stdout

    def start(self, total: int) -> None:
        """Nothing to show before the first step."""

    def stop(self) -> None:
        """Nothing to take down."""

    def step_started(self, change: Change) -> None:
        print(f"{change.address}: {describe_change(change)} ...", file=self._out, flush=True)

    def step_event(self, change: Change, line: str) -> None:
        print(f"{change.address}:     {line}", file=self._out, flush=True)

    def step_finished(self, result: StepResult) -> None:
        outcome = "done" if result.ok else f"FAILED{_failure_tag(result)}: {result.message}"
        print(f"{result.change.address}: {outcome} ({result.duration_s:.1f}s)", file=self._out, flush=True)


class TerminalProgress:
    """A rich display: the overall bar, a line per step under way (steps of different
    objects run at the same time) with its latest event and elapsed time, and a line
    printed per finished step."""

    def __init__(self, console: Console | None = None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self._console = console or Console()
        self._progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=None),
            TextColumn("{task.fields[count]}"), TimeElapsedColumn(),
            console=self._console, transient=True,
        )
        self._overall = self._progress.add_task("applying", total=0, count="")
        self._running: dict[int, tuple[TaskID, str]] = {}  # id(change) -> (its line, its description)

    def start(self, total: int) -> None:
        """Show the display, once the plan is known and confirmed."""
        self._progress.update(self._overall, total=total, count=f"0/{total}")
        self._progress.start()

    def stop(self) -> None:
        self._progress.stop()

    def step_started(self, change: Change) -> None:
        from rich.markup import escape

        description = f"  {escape(change.address)}: {escape(describe_change(change))}"
        task = self._progress.add_task(description, total=None, count="")
        self._running[id(change)] = (task, description)

    def step_event(self, change: Change, line: str) -> None:
        from rich.markup import escape

        if id(change) in self._running:
            task, description = self._running[id(change)]
            self._progress.update(task, description=f"{description} [dim]{escape(line)}[/]")

    def step_finished(self, result: StepResult) -> None:
        from rich.markup import escape

        if id(result.change) in self._running:
            self._progress.remove_task(self._running.pop(id(result.change))[0])
        mark = "[green]✓[/]" if result.ok else "[red]✗[/]"
        detail = "" if result.ok else f"{escape(_failure_tag(result))}: {escape(result.message)}"
        self._console.print(f"{mark} {result.change.address}{detail} ({result.duration_s:.1f}s)", highlight=False)
        self._progress.advance(self._overall)
        overall = self._progress.tasks[0]
        self._progress.update(self._overall, count=f"{int(overall.completed)}/{int(overall.total or 0)}")
