"""`somnus describe KIND/NAME`: one object's fields, conditions, agent, packs and recent events, as text.

The field labels are the JSON keys of `get -o json` (docs/output.md), so the
two read alike. Describe has no JSON output: `get KIND NAME -o json` is that.
"""

from __future__ import annotations

import datetime

from somnus_reconciler.cli import views
from somnus_reconciler.journal import Event
from somnus_reconciler.passes.agent_health import AgentHealth
from somnus_reconciler.passes.status import AppliedPack, Description, ObjectStatus, VmStatus
from somnus_reconciler.values.conditions import Condition
from somnus_reconciler.values.outcome import Outcome
from somnus_reconciler.values.quantity import format_bytes, format_bytes_rounded

_RECENT_ERRORS_SHOWN = 5


class DescribeHuman(views.View):
    def describe(self, description: Description) -> None:
        status = description.status
        for label, value in _fields(status):
            if value is not None and value != "":
                self.echo(f"{label + ':':<12} {value}")
        self.echo("conditions:")
        for condition in status.conditions:
            self.echo(condition_line(condition))
        if isinstance(status, VmStatus) and status.agent is not None:
            for line in agent_lines(status.agent):
                self.echo(line)
        if description.packs:
            self.echo("packs:")
            for pack in description.packs:
                self.echo(pack_line(pack))
        self.echo("events:")
        for event in description.events:
            self.echo(event_line(event))


def _fields(status: ObjectStatus) -> list[tuple[str, object]]:
    """(label, value) in the order shown; a value of None or "" is left out."""
    if not isinstance(status, VmStatus):
        return [("kind", "container"), ("name", status.name), ("state", status.state),
                ("managed", status.managed), ("image", status.image)]
    return [
        ("kind", "vm"), ("name", status.name), ("state", status.state.value), ("managed", status.managed),
        ("vcpus", status.vcpus), ("maxVcpus", status.max_vcpus),
        ("memory", format_bytes(status.memory)), ("maxMemory", format_bytes(status.max_memory)),
        ("balloon", format_bytes(status.balloon) if status.balloon is not None else None),
        ("image", status.image), ("domainId", status.domain_id),
        ("forwards", " ".join(f"{f.name}={f.address}" for f in status.forwards)),
        ("consoleLog", status.console_log),
        ("backup", _backup_line(status)),
    ]


def _backup_line(status: VmStatus) -> str | None:
    """e.g. `last 20261130T030000000Z (inc, 2026-11-30 03:00:00), next 2026-12-01 03:00:00, retain 7, maxAge 30d`."""
    backup = status.backup
    if backup is None:
        return None

    def when(at: float) -> str:
        return datetime.datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S")

    last = backup.last
    parts = [f"last {last.name} ({last.level}, {when(last.at)})" if last else "no backup yet"]
    if backup.next_due is not None:
        parts.append(f"next {when(backup.next_due)}" if backup.next_due > 0 else "next due now")
    policy = backup.policy
    if policy is not None:
        parts.append(f"schedule {policy.schedule or 'none'}, retain {policy.retain}"
                     + (f", maxAge {policy.max_age}" if policy.max_age else "")
                     + (f", in {policy.dir}" if policy.dir else ""))
    return ", ".join(parts)


def condition_line(condition: Condition) -> str:
    reason = f"[{condition.reason}] " if condition.reason else ""
    return f"  {condition.type:<20} {condition.status!s:<6} {reason}{condition.message}".rstrip()


def agent_lines(agent: AgentHealth) -> list[str]:
    """The agent section: address, processes, stats, the last recent error lines."""
    report = agent.report
    version = f" version {report.version if report else None}" if agent.connected else " (not connected)"
    lines = [f"agent:       {agent.address or '-'}{version}"]
    if report is None:
        return lines
    for p in report.processes:
        lines.append(f"  process   {p.name:<20} pid {p.pid} {'running' if p.running else 'NOT running'}")
    stats = report.stats
    lines += [
        f"  cpu       {stats.cpu_percent:.1f}%",
        f"  memory    {format_bytes_rounded(stats.memory.used)} used of {format_bytes_rounded(stats.memory.total)}",
        (f"  disk      {format_bytes_rounded(stats.disk.used)} used of {format_bytes_rounded(stats.disk.total)}"
         f" on {stats.disk.path}"),
        f"  load      {stats.load.one_minute:.2f} {stats.load.five_minutes:.2f} {stats.load.fifteen_minutes:.2f}",
        f"  uptime    {stats.uptime_s:.0f}s",
    ]
    for error in (report.recent_errors or ())[-_RECENT_ERRORS_SHOWN:]:
        lines.append(f"  error     [{error.category or 'unclassified'}] {error.file}:{error.line}: {error.text[:160]}")
    return lines


def pack_line(pack: AppliedPack) -> str:
    """`  research-browser     verified 2026-12-01 02:31:32  fingerprint 1a2b3c4d5e6f`: verified
    when its last install step (which ran its verify commands) succeeded."""
    step = pack.last_install
    if step is None:
        state = "applied; no install step in the journal"
    else:
        at = datetime.datetime.fromtimestamp(step.at).strftime("%Y-%m-%d %H:%M:%S")
        state = f"verified {at}" if step.outcome == Outcome.OK else f"last install {step.outcome} {at}"
    return f"  {pack.name:<20} {state}  fingerprint {pack.fingerprint[:12]}"


def event_line(event: Event) -> str:
    at = datetime.datetime.fromtimestamp(event.at).strftime("%Y-%m-%d %H:%M:%S")
    category = f" [{event.category}]" if event.category else ""
    return f"  {at}  {event.action:<8} {event.outcome:<7}{category} {event.message}"
