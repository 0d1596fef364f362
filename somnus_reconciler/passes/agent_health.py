"""What a running VM's in-guest agent says about itself, as typed values.

`status` asks every running managed VM's agent at once (`probe`) for the
`AgentConnected` and `Ready` conditions of `get` and `describe`; `describe` also
asks for the error lines the agent found in the guest's logs and names their
triage category (`categorize`, cached in the journal). The agent answers in
untyped JSON (agent/somnus_agent/endpoints.py): it is parsed here, once, into
frozen values, and nothing above this module sees its dicts.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from somnus_reconciler.journal import Journal
from somnus_reconciler.providers import agent_client
from somnus_reconciler.values.actual import ActualVm

_PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class AgentProcess:
    """A process the agent supervises (`GET /status`)."""

    name: str
    pid: int | None
    running: bool


@dataclass(frozen=True)
class MemoryUsage:
    total: int  # bytes
    used: int
    available: int


@dataclass(frozen=True)
class DiskUsage:
    path: str
    total: int  # bytes
    used: int
    free: int


@dataclass(frozen=True)
class LoadAverage:
    one_minute: float
    five_minutes: float
    fifteen_minutes: float


@dataclass(frozen=True)
class AgentStats:
    """The guest's figures (`GET /stats/basic`)."""

    cpu_percent: float
    memory: MemoryUsage
    disk: DiskUsage
    load: LoadAverage
    uptime_s: float
    source: str | None  # where the agent read them: "psutil" or "proc"


@dataclass(frozen=True)
class ErrorLine:
    """A line of a watched guest log that reads as an error (`GET /stats/intelligent`)."""

    file: str
    line: int
    text: str
    category: str | None = None  # its triage category, once `categorize` named it


@dataclass(frozen=True)
class AgentReport:
    """What a connected agent answered."""

    ok: bool
    version: str | None
    processes: tuple[AgentProcess, ...]
    stats: AgentStats
    recent_errors: tuple[ErrorLine, ...] | None = None  # asked for by `describe` only

    @property
    def not_running(self) -> list[str]:
        return [p.name for p in self.processes if not p.running]


@dataclass(frozen=True)
class AgentHealth:
    """A running VM's agent: its address, whether it answered, and what it said."""

    address: str | None  # 127.0.0.1:PORT; None when the VM has no agent forward or token
    connected: bool
    report: AgentReport | None = None  # kept when a later request failed
    message: str = ""  # why it is not connected


def probe(vm: ActualVm, state_dir: Path, *, recent_errors: bool = False) -> AgentHealth | None:
    """What a running VM's agent says: health, processes, stats; None for a stopped VM."""
    if not vm.running:
        return None
    client = agent_client.for_vm(vm, state_dir, timeout_s=_PROBE_TIMEOUT_S)
    if client is None:
        return AgentHealth(None, False, message="no agent forward or token for this VM")
    report: AgentReport | None = None
    try:
        report = parse_report(client.status(), client.stats_basic())
        if recent_errors:
            report = dataclasses.replace(report, recent_errors=parse_errors(client.stats_intelligent()))
    except agent_client.AgentError as e:
        return AgentHealth(client.address, False, report, str(e))
    except (KeyError, TypeError, ValueError) as e:  # not the answer agent/somnus_agent gives
        return AgentHealth(client.address, False, report, f"the agent's answer is not understood: {e!r}")
    return AgentHealth(client.address, True, report)


def parse_report(status: Mapping[str, Any], stats: Mapping[str, Any]) -> AgentReport:
    """`GET /status` and `GET /stats/basic` answers -> AgentReport (KeyError when a figure is missing)."""
    processes = tuple(AgentProcess(p["name"], p.get("pid"), bool(p.get("running")))
                      for p in status.get("processes", []))
    memory, disk, load = stats["memory"], stats["disk"], stats["load"]
    return AgentReport(
        ok=bool(status.get("ok")),
        version=status.get("version"),
        processes=processes,
        stats=AgentStats(
            cpu_percent=stats["cpu_percent"],
            memory=MemoryUsage(memory["total"], memory["used"], memory["available"]),
            disk=DiskUsage(disk["path"], disk["total"], disk["used"], disk["free"]),
            load=LoadAverage(load["1m"], load["5m"], load["15m"]),
            uptime_s=stats["uptime_s"],
            source=stats.get("source"),
        ),
    )


def parse_errors(intelligent: Mapping[str, Any]) -> tuple[ErrorLine, ...]:
    """`GET /stats/intelligent` answer -> its error lines."""
    return tuple(ErrorLine(e["file"], e["line"], e["text"], e.get("category"))
                 for e in intelligent.get("errors", []))


def categorize(errors: Sequence[ErrorLine], journal_path: Path) -> tuple[ErrorLine, ...]:
    """The same lines, each with its triage category; only lines not seen before are classified.

    Classifications are cached in the journal, so the model loads only when a
    guest has logged a new error line.
    """
    with Journal(journal_path) as journal:
        keys = [hashlib.sha256(e.text.encode()).hexdigest() for e in errors]
        cached = {key: journal.cached_triage(key) for key in set(keys)}
        new = sorted(key for key, hit in cached.items() if hit is None)
        if new:
            from somnus_reconciler.semantic import triage

            texts = {key: e.text for key, e in zip(keys, errors)}
            for key, verdict in zip(new, triage.default_classifier().classify_many([texts[k] for k in new])):
                journal.cache_triage(key, verdict.category.value, verdict.score)
                cached[key] = (verdict.category.value, verdict.score)
    return tuple(error if (hit := cached[key]) is None else dataclasses.replace(error, category=hit[0])
                 for key, error in zip(keys, errors))
