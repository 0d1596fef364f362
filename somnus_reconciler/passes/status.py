"""Status of actual objects with conditions, for `get` and `describe`.

Reads the providers' observations, the journal's last step per object and,
for each running VM, its in-guest agent (`agent_health.probe`; all VMs at once).
The result is typed frozen values (`VmStatus`, `ContainerStatus`); the CLI's
status views render them as a table, as text, or in the JSON shape that
docs/output.md documents.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from somnus_reconciler.images import vm_images
from somnus_reconciler.journal import Event, Journal
from somnus_reconciler.passes import agent_health
from somnus_reconciler.passes.agent_health import AgentHealth
from somnus_reconciler.passes.backup_schedule import BackupStatus, backup_status
from somnus_reconciler.planning.plan import Action
from somnus_reconciler.values.actual import ActualContainer, ActualVm, PowerState
from somnus_reconciler.values.conditions import Condition, memory_at_target
from somnus_reconciler.values.errors import PermanentError
from somnus_reconciler.values.outcome import Outcome

if TYPE_CHECKING:
    from somnus_reconciler.providers.backends import Backends

SOFT_REBOOT_ACTION = "soft-reboot"  # the journal action `soft-reboot` records


@dataclass(frozen=True)
class Forward:
    """A VM's loopback port forward by name: ssh -> 127.0.0.1:PORT."""

    name: str
    address: str


@dataclass(frozen=True)
class VmStatus:
    kind: ClassVar[str] = "vm"
    name: str
    managed: bool
    state: PowerState
    domain_id: int | None
    vcpus: int
    max_vcpus: int
    memory: int  # bytes: the balloon target the host set
    max_memory: int  # bytes
    balloon: int | None  # bytes the guest's balloon reports; None while not running
    image: str | None  # from the ownership mark: None when somnus does not own the VM
    owner: str | None
    forwards: tuple[Forward, ...]
    console_log: str | None
    agent: AgentHealth | None  # None: stopped, not somnus's, or its image carries no agent
    conditions: tuple[Condition, ...]
    revision: str | None = None  # the git revision it was last converged from (gitops)
    backup: BackupStatus | None = None  # None: no backup policy and no backup
    packs: tuple[tuple[str, str], ...] = ()  # (pack, fingerprint) applied, from the mark


@dataclass(frozen=True)
class ContainerStatus:
    kind: ClassVar[str] = "container"
    name: str
    managed: bool
    state: str  # Docker's: running, exited, created, ...
    image: str
    container_id: str  # the short, 12-character form
    conditions: tuple[Condition, ...]
    revision: str | None = None
    packs: tuple[tuple[str, str], ...] = ()  # (pack, fingerprint) applied, from the journal


ObjectStatus = VmStatus | ContainerStatus


@dataclass(frozen=True)
class AppliedPack:
    """A pack applied on a guest, with its last install step from the journal: that
    step ran the pack's verify commands, so an `ok` one means they passed then."""

    name: str
    fingerprint: str
    last_install: Event | None  # None: the journal holds no install step for it


@dataclass(frozen=True)
class Description:
    """What `describe` shows: one object's status and its recent journal events."""

    status: ObjectStatus
    events: tuple[Event, ...]  # oldest first; none when there is no journal yet
    packs: tuple[AppliedPack, ...] = ()  # in the order they were applied


class ObjectNotFound(PermanentError):
    def __init__(self, kind: str | None, name: str) -> None:
        super().__init__(f"{kind}/{name} not found")


def _last_step(event: Event | None) -> list[Condition]:
    if event is None:
        return []
    return [Condition("LastStepSucceeded", event.outcome == Outcome.OK, f"{event.action}: {event.message}",
                      event.category or "")]


def _agent_conditions(vm: ActualVm, agent: AgentHealth | None, soft_reboot: Event | None) -> list[Condition]:
    if not vm.running:
        return [Condition("AgentConnected", False, "the VM is not running"),
                Condition("Ready", False, "the VM is not running")]
    if agent is None:
        return [Condition("AgentConnected", False, "the agent was not asked")]
    report = agent.report
    ok = report is not None and report.ok
    down = report.not_running if report is not None else []
    if not agent.connected:
        ready_message = "the agent does not answer"
    elif not ok:
        ready_message = "the agent reports not ok"
    elif down:
        ready_message = f"not running: {', '.join(down)}"
    else:
        ready_message = f"{len(report.processes) if report else 0} process(es) running"
    version = report.version if report is not None else None
    conditions = [
        Condition("AgentConnected", agent.connected,
                  f"{agent.address} version {version}" if agent.connected else agent.message),
        Condition("Ready", agent.connected and ok and not down, ready_message),
    ]
    if soft_reboot is not None:
        conditions.append(Condition("SoftRebootConfirmed", soft_reboot.outcome == Outcome.OK, soft_reboot.message))
    return conditions


def _guest_conditions(vm: ActualVm, agent: AgentHealth | None, soft_reboot: Event | None) -> list[Condition]:
    """What the guest made of the host's requests, as far as its image lets us tell.

    An image without the agent is Ready once libvirt runs it: nothing in it can
    say more, and nothing is waited for.
    """
    assert vm.mark is not None
    services = vm_images.guest_services(vm.mark.image)
    memory = memory_at_target(vm, balloon_driver=services.balloon)
    conditions = [memory] if memory is not None else []
    if services.agent:
        return conditions + _agent_conditions(vm, agent, soft_reboot)
    ready = (f"running; image {vm.mark.image} carries no agent to ask" if vm.running
             else "the VM is not running")
    return [*conditions, Condition("Ready", vm.running, ready)]


def vm_status(vm: ActualVm, last: Event | None, agent: AgentHealth | None = None,
              soft_reboot: Event | None = None, revision: str | None = None,
              backup: BackupStatus | None = None) -> VmStatus:
    mark = vm.mark
    return VmStatus(
        name=vm.name, managed=vm.managed, state=vm.power, domain_id=vm.domain_id,
        vcpus=vm.vcpus, max_vcpus=vm.max_vcpus, memory=vm.memory, max_memory=vm.max_memory,
        balloon=vm.balloon, image=mark.image if mark else None, owner=mark.owner if mark else None,
        forwards=tuple(Forward(f.name, f"127.0.0.1:{f.host_port}") for f in mark.forwards) if mark else (),
        console_log=vm.console_log, agent=agent,
        conditions=(
            Condition("Running", vm.running, vm.power.value),
            Condition("Managed", vm.managed, "" if vm.managed else "no somnus ownership mark"),
            *(_guest_conditions(vm, agent, soft_reboot) if vm.managed else []),
            *_last_step(last),
        ),
        revision=revision, backup=backup, packs=mark.packs if mark else (),
    )


def carries_agent(vm: ActualVm) -> bool:
    """Whether the VM's image starts the in-guest agent (the one `probe` asks)."""
    return vm.mark is not None and vm_images.guest_services(vm.mark.image).agent


def container_status(c: ActualContainer, last: Event | None, revision: str | None = None) -> ContainerStatus:
    return ContainerStatus(
        name=c.name, managed=c.managed, state=c.state, image=c.image, container_id=c.container_id[:12],
        conditions=(
            Condition("Running", c.running, c.state),
            Condition("Managed", c.managed, "" if c.managed else "no io.somnus labels"),
            *_last_step(last),
        ),
        revision=revision, packs=c.packs,
    )


def gather(backends: Backends, *, kind: str | None, name: str | None,
           include_unmanaged: bool, recent_errors: bool = False) -> list[ObjectStatus]:
    """VMs (by name) then containers (by name), of `kind` (None: both), only `name` if given."""
    settings = backends.settings
    with contextlib.ExitStack() as stack:  # no journal yet: none is made by reading
        journal = stack.enter_context(Journal(settings.journal_path)) if settings.journal_path.exists() else None
        applied = journal.applied() if journal is not None else {}

        def revision(address: str) -> str | None:
            return (applied[address][1] or None) if address in applied else None

        def last(address: str) -> tuple[Event | None, Event | None]:
            """The object's last step, and its last soft reboot."""
            events = journal.recent(address, limit=50) if journal is not None else []
            step = next((e for e in events if e.action != SOFT_REBOOT_ACTION), None)
            return step, next((e for e in events if e.action == SOFT_REBOOT_ACTION), None)

        result: list[ObjectStatus] = []
        if kind in (None, "vm"):
            vms = [
                vm for vm in sorted(backends.vms.observe().values(), key=lambda v: v.name)
                if (name is None or vm.name == name) and (vm.managed or include_unmanaged or name)
            ]
            with ThreadPoolExecutor(max_workers=16) as pool:
                agents = list(pool.map(
                    lambda vm: (agent_health.probe(vm, settings.state_dir, recent_errors=recent_errors)
                                if carries_agent(vm) else None),
                    vms,
                ))
            for vm, agent in zip(vms, agents):
                step, soft_reboot = last(f"vm/{vm.name}")
                backup = backup_status(vm, settings.backups_dir) if vm.managed else None
                result.append(vm_status(vm, step, agent, soft_reboot, revision(f"vm/{vm.name}"), backup))
        if kind in (None, "container"):
            from somnus_reconciler.providers.backends import observe_containers

            for c in sorted(observe_containers(backends).values(), key=lambda c: c.name):
                if (name is None or c.name == name) and (c.managed or include_unmanaged or name):
                    result.append(container_status(c, last(f"container/{c.name}")[0], revision(f"container/{c.name}")))
    return result


def get(*, kind: str | None, name: str | None, include_unmanaged: bool,
        state_dir: str | None) -> list[ObjectStatus]:
    """`somnus get`: ObjectNotFound when `name` is given and there is no such object."""
    from somnus_reconciler.providers import backends as backends_mod

    backends = backends_mod.open_backends(None, state_dir=state_dir)
    try:
        found = gather(backends, kind=kind, name=name, include_unmanaged=include_unmanaged)
    finally:
        backends.close()
    if name is not None and not found:
        raise ObjectNotFound(kind, name)
    return found


def _categorized(agent: AgentHealth, journal_path: Path) -> AgentHealth:
    """`agent` with the triage category of each of its recent error lines."""
    report = agent.report
    if report is None or not report.recent_errors:
        return agent
    categorized = agent_health.categorize(report.recent_errors, journal_path)
    return replace(agent, report=replace(report, recent_errors=categorized))


def describe(kind: str, name: str, *, state_dir: str | None) -> Description:
    """`somnus describe`: the status with the agent's error lines categorized, the applied packs
    with their last install step, and the last 10 events."""
    from somnus_reconciler.providers import backends as backends_mod

    backends = backends_mod.open_backends(None, state_dir=state_dir)
    try:
        found = gather(backends, kind=kind, name=name, include_unmanaged=True, recent_errors=True)
    finally:
        backends.close()
    if not found:
        raise ObjectNotFound(kind, name)
    status, journal_path = found[0], backends.settings.journal_path
    if isinstance(status, VmStatus) and status.agent is not None:
        status = replace(status, agent=_categorized(status.agent, journal_path))
    events: tuple[Event, ...] = ()
    packs = tuple(AppliedPack(pack, fingerprint, None) for pack, fingerprint in status.packs)
    if journal_path.exists():  # none yet: no events, and none is made by reading
        with Journal(journal_path) as journal:
            events = tuple(reversed(journal.recent(f"{kind}/{name}", limit=10)))
            packs = tuple(replace(pack, last_install=_last_install(journal, f"{kind}/{name}", pack.name))
                          for pack in packs)
    return Description(status, events, packs)


def _last_install(journal: Journal, address: str, pack: str) -> Event | None:
    """The last install step of `pack` on `address`: the step that ran its verify commands."""
    steps = journal.recent(address, limit=1, action=f"{Action.PACK_INSTALL.value} {pack}")
    return steps[0] if steps else None
