"""Rendering: plans, step progress and object status, for people and as JSON.

Nothing here decides anything; the CLI picks a view and feeds it values.
The JSON shapes are stable and documented in docs/output.md.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from somnus_reconciler.engine.executor import StepResult
from somnus_reconciler.journal import Event
from somnus_reconciler.planning.plan import Action, Change, Plan
from somnus_reconciler.values.desired import DesiredContainer, DesiredVm
from somnus_reconciler.values.diagnostics import Diagnostic
from somnus_reconciler.values.quantity import format_bytes, format_bytes_rounded


# -- plans ---------------------------------------------------------------------
def describe_change(change: Change) -> str:
    want = change.desired
    fields = ", ".join(str(f) for f in change.fields)
    if change.action is Action.CREATE and isinstance(want, DesiredVm):
        r = want.resources
        origin = f"profile {want.profile}, " if want.profile else ""
        power = "" if want.running else ", stopped"
        return f"create ({origin}{r.vcpus} vcpu, {format_bytes(r.memory)}{power})"
    if change.action is Action.CREATE and isinstance(want, DesiredContainer):
        return f"create (image {want.image}, {want.cpus:g} cpu, {format_bytes(want.memory)})"
    if change.action is Action.DELETE:
        return "delete"
    if change.action.is_pack_step:
        verb = "" if change.action is Action.PACK_INSTALL else "remove "
        return f"pack {verb}{change.pack}" + (f" ({change.reason})" if change.reason else "")
    if change.action is Action.REPLACE:
        return f"replace: {fields}" if fields else f"replace: {change.reason}"
    if change.action in (Action.START, Action.STOP):
        return str(change.action.value) + (f": {fields}" if fields else "")
    return fields or "refresh ownership mark"


def _disruption_note(change: Change) -> str:
    if change.action is Action.DELETE:
        note = "prune"
    elif change.action.is_pack_step:
        note = "snapshot first"
    else:
        note = change.disruption.label
    return ", ".join(n for n in ("drift" if change.drift else "", note) if n)


def plan_lines(plan: Plan) -> list[str]:
    lines = []
    for change in plan.changes:
        note = _disruption_note(change)
        text = describe_change(change)
        line = f"{change.action.symbol:<3} {change.address:<24} {text}"
        if note:
            line = f"{line:<70} ({note})"
        lines.append(line.rstrip())
    for address in plan.leftovers:
        lines.append(f"    {address:<24} owned but not declared: kept (--prune deletes it)")
    return lines


def plan_summary(plan: Plan) -> str:
    if not plan.changes:
        return "No changes: actual state matches the manifests."
    count = {action: 0 for action in Action}
    for change in plan.changes:
        count[change.action] += 1
    changed = count[Action.UPDATE] + count[Action.START] + count[Action.STOP]
    packs = count[Action.PACK_INSTALL] + count[Action.PACK_REMOVE]
    return (
        f"Plan: {count[Action.CREATE]} to create, {changed} to change, "
        f"{count[Action.REPLACE]} to replace, {count[Action.DELETE]} to delete"
        + (f", {packs} pack step(s)." if packs else ".")
    )


def plan_json(plan: Plan) -> dict[str, Any]:
    return {
        "inSync": plan.in_sync,
        "changes": [
            {
                "address": c.address,
                "action": c.action.value,
                "symbol": c.action.symbol,
                "disruption": c.disruption.name.lower(),
                "fields": [{"name": f.name, "before": f.before, "after": f.after} for f in c.fields],
                "summary": describe_change(c),
                "drift": c.drift,
                **({"pack": c.pack} if c.pack else {}),
            }
            for c in plan.changes
        ],
        "leftovers": list(plan.leftovers),
    }


def diagnostics_json(diagnostics: Sequence[Diagnostic]) -> dict[str, Any]:
    return {
        "errors": [
            {
                "file": str(d.source.file) if d.source else None,
                "line": d.source.line if d.source else None,
                "address": d.address,
                "message": d.message,
            }
            for d in diagnostics
        ]
    }


def print_json(value: object, out: TextIO | None = None, *, compact: bool = False) -> None:
    """Indented, or one line (`compact`: JSON lines, flushed, for event streams)."""
    out = out or sys.stdout
    json.dump(value, out, indent=None if compact else 2, default=str)
    out.write("\n")
    if compact:
        out.flush()


# -- apply progress ----------------------------------------------------------------
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

    def step_started(self, change: Change) -> None:
        print(f"{change.address}: {describe_change(change)} ...", file=self._out, flush=True)

    def step_event(self, change: Change, line: str) -> None:
        print(f"    {line}", file=self._out, flush=True)

    def step_finished(self, result: StepResult) -> None:
        outcome = "done" if result.ok else f"FAILED{_failure_tag(result)}: {result.message}"
        print(f"{result.change.address}: {outcome} ({result.duration_s:.1f}s)", file=self._out, flush=True)


class TerminalProgress:
    """A rich progress bar over the steps, with a line per finished step."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self._console = Console()
        self._progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
            TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
            console=self._console, transient=True,
        )
        self._task = self._progress.add_task("applying", total=0)
        self._current = "applying"

    def start(self, total: int) -> None:
        """Show the bar, once the plan is known and confirmed."""
        self._progress.update(self._task, total=total)
        self._progress.start()

    def stop(self) -> None:
        self._progress.stop()

    def step_started(self, change: Change) -> None:
        self._current = f"{change.address}: {describe_change(change)}"
        self._progress.update(self._task, description=self._current)

    def step_event(self, change: Change, line: str) -> None:
        from rich.markup import escape

        self._progress.update(self._task, description=f"{self._current} [dim]{escape(line)}[/]")

    def step_finished(self, result: StepResult) -> None:
        mark = "[green]✓[/]" if result.ok else "[red]✗[/]"
        from rich.markup import escape

        detail = "" if result.ok else f"{escape(_failure_tag(result))}: {escape(result.message)}"
        self._console.print(f"{mark} {result.change.address}{detail} ({result.duration_s:.1f}s)", highlight=False)
        self._progress.advance(self._task)


# -- status ----------------------------------------------------------------------
STATUS_COLUMNS = ("KIND", "NAME", "STATE", "READY", "VCPUS", "MEMORY", "MANAGED", "DETAIL")


def status_table(rows: Sequence[dict[str, Any]], out: TextIO | None = None) -> None:
    """kubectl-like plain columns: aligned, no colours, easy to grep."""
    out = out or sys.stdout
    def detail(row: dict[str, Any]) -> str:
        if row["kind"] == "vm":
            return " ".join(f"{name}={address}" for name, address in row["forwards"].items())
        return f"image={row['image']}"

    def ready(row: dict[str, Any]) -> str:
        conditions: dict[str, str] = {c["type"]: c["status"] for c in row["conditions"]}
        return conditions.get("Ready", conditions.get("Running", "")).lower()

    cells = [STATUS_COLUMNS] + [
        (
            r["kind"], r["name"], r["state"], ready(r), str(r.get("vcpus", "")),
            format_bytes(r["memory"]) if r.get("memory") else "",
            "yes" if r["managed"] else "no", detail(r),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(STATUS_COLUMNS))]
    for row in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip(), file=out)


def agent_lines(agent: dict[str, Any]) -> list[str]:
    """`describe`'s agent section: address, processes, stats, recent error lines."""
    lines = [f"agent:       {agent.get('address') or '-'}"
             + (f" version {agent.get('version')}" if agent.get("connected") else " (not connected)")]
    for p in agent.get("processes", []):
        lines.append(f"  process   {p['name']:<20} pid {p.get('pid')} {'running' if p.get('running') else 'NOT running'}")
    stats = agent.get("stats")
    if stats:
        memory, disk, load = stats["memory"], stats["disk"], stats["load"]
        lines += [
            f"  cpu       {stats['cpu_percent']:.1f}%",
            f"  memory    {format_bytes_rounded(memory['used'])} used of {format_bytes_rounded(memory['total'])}",
            f"  disk      {format_bytes_rounded(disk['used'])} used of {format_bytes_rounded(disk['total'])}"
            f" on {disk['path']}",
            f"  load      {load['1m']:.2f} {load['5m']:.2f} {load['15m']:.2f}",
            f"  uptime    {stats['uptime_s']:.0f}s",
        ]
    for error in agent.get("recentErrors", [])[-5:]:
        category = error.get("category") or "unclassified"
        lines.append(f"  error     [{category}] {error['file']}:{error['line']}: {error['text'][:160]}")
    return lines


# -- history ---------------------------------------------------------------------
HISTORY_COLUMNS = ("TIME", "ADDRESS", "ACTION", "OUTCOME", "MESSAGE")


def history_table(entries: Sequence[Event], scores: Sequence[float] | None = None,
                  out: TextIO | None = None, width: int | None = None) -> None:
    """One line per event, local time, like a log; with `scores` (a search) a SCORE column first.

    The message (with the triage category in brackets) is put on one line and cut to
    what is left of `width` (the terminal's, 160 when not a terminal), never below 40.
    """
    import datetime
    import shutil

    out = out or sys.stdout
    if not entries:
        print("no events", file=out)
        return
    rows: list[tuple[str, ...]] = [
        (datetime.datetime.fromtimestamp(e.at).strftime("%Y-%m-%d %H:%M:%S"), e.address, e.action, e.outcome)
        for e in entries
    ]
    head: tuple[str, ...] = HISTORY_COLUMNS[:-1]
    if scores is not None:
        head = ("SCORE", *head)
        rows = [(f"{score:.3f}", *row) for score, row in zip(scores, rows)]
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    room = max(40, (width or shutil.get_terminal_size((160, 24)).columns) - sum(w + 2 for w in widths))
    messages = [HISTORY_COLUMNS[-1]] + [
        " ".join(((f"[{e.category}] " if e.category else "") + e.message).split()) for e in entries
    ]
    for row, message in zip([head, *rows], messages):
        if len(message) > room:
            message = message[: room - 3] + "..."
        print("  ".join([*(cell.ljust(w) for cell, w in zip(row, widths)), message]).rstrip(), file=out)

