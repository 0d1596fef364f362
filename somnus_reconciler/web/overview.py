"""What the overview page shows: every declared and every owned object, desired against
actual, its conditions, its pending change (the words of `diff`) and its last step.

`compute` loads the manifests, observes through backends kept open by the caller
(`live.Dashboard`), plans as `diff` would (no prune) and reads each object's last
event from the journal. A VM's agent conditions come from the agents' latest answers
to `guest_samples` (none yet: "the agent was not asked"), never from a request here. A manifest that does not load, or a daemon that cannot be
reached, becomes a line of `problems`, never an error page.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from somnus_reconciler.journal import Event, Journal
from somnus_reconciler.passes import prepare, status
from somnus_reconciler.passes.agent_health import AgentHealth
from somnus_reconciler.planning import plan as plan_mod
from somnus_reconciler.planning.plan import Action
from somnus_reconciler.planning.plan_text import describe_change, disruption_note
from somnus_reconciler.providers.backends import Backends, applied_hashes, observe_reachable
from somnus_reconciler.values.actual import ActualContainer, ActualState, ActualVm
from somnus_reconciler.values.conditions import Condition
from somnus_reconciler.values.desired import DesiredContainer, DesiredState, DesiredVm
from somnus_reconciler.values.diagnostics import InvalidInput
from somnus_reconciler.values.quantity import format_bytes


@dataclass(frozen=True)
class Row:
    """One object: what is declared (if it is), what is there (if it is), and between them."""

    kind: str  # vm | container
    name: str
    pool: str
    owner: str
    declared: bool
    desired: str  # "running, 1 vcpu, 256Mi"; "" when not declared
    actual: str  # "shutoff, 1 vcpu, 256Mi"; "absent"
    state: str  # the actual state word, for the filter: running, shutoff, exited, absent
    packs: str
    applied_packs: tuple[tuple[str, str], ...]  # (pack, fingerprint) recorded on the object
    source: str  # FILE:LINE of its declaration; "" when not declared
    ready: bool | None  # the Ready condition, where the object has one
    conditions: tuple[Condition, ...]
    pending: tuple[str, ...]  # the plan's lines for it: "~ memory 256 MiB -> 512 MiB (live)"
    last_step: str  # "create: ok, 21:03:04"

    @property
    def address(self) -> str:
        return f"{self.kind}/{self.name}"


@dataclass(frozen=True)
class PlanLine:
    """One change of the plan, in `diff`'s words."""

    symbol: str  # + ~ -/+ -
    address: str
    text: str
    note: str  # the disruption: live, restart, recreate: disk replaced, snapshot first
    needs_consent: bool  # a VM's disk replaced: applied only when ticked (`apply --replace`)


@dataclass(frozen=True)
class Overview:
    rows: tuple[Row, ...]
    problems: tuple[str, ...]  # manifests that did not load, daemons not reached
    at: float  # when it was computed (time.time())
    plan: tuple[PlanLine, ...] = ()
    vms: tuple[ActualVm, ...] = ()  # every VM observed, for `guest_samples` to ask their agents


def compute(paths: Sequence[Path], backends: Backends, agents: Mapping[str, AgentHealth] | None = None) -> Overview:
    """The overview now; `backends` must be opened for the manifests' Pool; `agents`: the
    latest answer of each VM's agent, by VM name."""
    try:
        desired = prepare.load_desired(paths, state_dir=str(backends.settings.state_dir))
    except InvalidInput as e:
        return Overview((), tuple(str(d) for d in e.diagnostics), time.time())
    actual, unreachable = observe_reachable(backends)
    plan = plan_mod.compute(desired, actual, prune=False, applied=applied_hashes(backends.settings))
    pending: dict[str, list[str]] = {}
    lines = []
    for change in plan.changes:
        note = disruption_note(change)
        line = f"{change.action.symbol} {describe_change(change)}" + (f" ({note})" if note else "")
        pending.setdefault(change.address, []).append(line)
        lines.append(PlanLine(change.action.symbol, change.address, describe_change(change), note,
                              change.kind == "vm" and change.action is Action.REPLACE))
    with Journal(backends.settings.journal_path) as journal:
        rows = [_row(kind, name, desired, want, have, pending.get(f"{kind}/{name}", []),
                     _last(journal, f"{kind}/{name}"), (agents or {}).get(name) if kind == "vm" else None)
                for kind, name, want, have in _objects(desired, actual, plan.leftovers)]
    return Overview(tuple(rows), tuple(unreachable.values()), time.time(), tuple(lines),
                    tuple(vm for _, vm in sorted(actual.vms.items())))


_Object = tuple[str, str, "DesiredVm | DesiredContainer | None", "ActualVm | ActualContainer | None"]


def _objects(desired: DesiredState, actual: ActualState, leftovers: Sequence[str]) -> list[_Object]:
    """Declared objects, then the owned ones of the same Pool that are no longer declared
    (the plan's leftovers: it is computed without prune)."""
    found: list[_Object] = [("vm", name, want, actual.vms.get(name)) for name, want in sorted(desired.vms.items())]
    found += [("container", name, want, actual.containers.get(name))
              for name, want in sorted(desired.containers.items())]
    for address in leftovers:
        kind, name = address.split("/", 1)
        found.append((kind, name, None, (actual.vms if kind == "vm" else actual.containers).get(name)))
    return found


def _row(kind: str, name: str, desired: DesiredState, want: DesiredVm | DesiredContainer | None,
         have: ActualVm | ActualContainer | None, pending: list[str], last: Event | None,
         agent: AgentHealth | None) -> Row:
    conditions: tuple[Condition, ...] = ()
    if isinstance(have, ActualVm):
        conditions = status.vm_status(have, last, agent).conditions
        actual, state = f"{have.power.value}, {have.vcpus} vcpu, {format_bytes(have.memory)}", have.power.value
    elif isinstance(have, ActualContainer):
        conditions = status.container_status(have, last).conditions
        actual, state = f"{have.state}, image {have.image}", have.state
    else:
        actual, state = "absent", "absent"
    ready = next((c.status for c in conditions if c.type in ("Ready", "Running")), None)
    return Row(
        kind=kind, name=name, pool=desired.scope, owner=(want.owner if want else None) or "",
        declared=want is not None, desired=_desired(want), actual=actual, state=state,
        packs=", ".join(want.packs) if want else "", ready=ready, conditions=conditions,
        applied_packs=_applied_packs(have), source=str(want.source) if want else "",
        pending=tuple(pending), last_step=_last_step(last),
    )


def _applied_packs(have: ActualVm | ActualContainer | None) -> tuple[tuple[str, str], ...]:
    if isinstance(have, ActualVm):
        return have.mark.packs if have.mark else ()
    return have.packs if have is not None else ()


def _desired(want: DesiredVm | DesiredContainer | None) -> str:
    if isinstance(want, DesiredVm):
        r = want.resources
        return f"{'running' if want.running else 'shutoff'}, {r.vcpus} vcpu, {format_bytes(r.memory)}"
    if isinstance(want, DesiredContainer):
        return f"running, image {want.image}, {want.cpus:g} cpu, {format_bytes(want.memory)}"
    return ""


def _last(journal: Journal, address: str) -> Event | None:
    events = journal.recent(address, limit=1)
    return events[0] if events else None


def _last_step(event: Event | None) -> str:
    if event is None:
        return ""
    return f"{event.action}: {event.outcome}, {time.strftime('%H:%M:%S', time.localtime(event.at))}"
