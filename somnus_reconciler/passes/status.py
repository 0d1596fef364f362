"""Status of actual objects with conditions, for `get` and `describe`.

Reads the providers' observations, the journal's last step per object and,
for each running VM, its in-guest agent (`agent_client`; all VMs at once);
the result is plain dicts with the documented JSON shape (docs/output.md).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from somnus_reconciler.journal import Event, Journal
from somnus_reconciler.providers import agent_client
from somnus_reconciler.values.actual import ActualContainer, ActualVm

if TYPE_CHECKING:
    from somnus_reconciler.providers.backends import Backends


def _condition(type_: str, status: bool, message: str = "", reason: str = "") -> dict[str, str]:
    condition = {"type": type_, "status": "True" if status else "False", "message": message}
    if reason:  # as in Kubernetes: a CamelCase word for programs, here the triage category
        condition["reason"] = reason
    return condition


def _last_step(event: Event | None) -> list[dict[str, str]]:
    if event is None:
        return []
    return [_condition("LastStepSucceeded", event.outcome == "ok", f"{event.action}: {event.message}",
                       event.category or "")]


SOFT_REBOOT_ACTION = "soft-reboot"
_AGENT_PROBE_TIMEOUT_S = 3.0


def probe_agent(vm: ActualVm, state_dir: Path, *, recent_errors: bool = False) -> dict[str, Any] | None:
    """What a running VM's agent says: health, processes, stats; None for a stopped VM."""
    if not vm.running:
        return None
    client = agent_client.for_vm(vm, state_dir, timeout_s=_AGENT_PROBE_TIMEOUT_S)
    if client is None:
        return {"address": None, "connected": False, "message": "no agent forward or token for this VM"}
    view: dict[str, Any] = {"address": client.address}
    try:
        status = client.status()
        view.update(connected=True, ok=bool(status.get("ok")), version=status.get("version"),
                    processes=status.get("processes", []), stats=client.stats_basic())
        if recent_errors:
            view["recentErrors"] = client.stats_intelligent().get("errors", [])
    except agent_client.AgentError as e:
        view.update(connected=False, message=str(e))
    return view


def _agent_conditions(agent: dict[str, Any] | None, soft_reboot: Event | None) -> list[dict[str, str]]:
    if agent is None:
        return [_condition("AgentConnected", False, "the VM is not running"),
                _condition("Ready", False, "the VM is not running")]
    connected = bool(agent.get("connected"))
    down = [p["name"] for p in agent.get("processes", []) if not p.get("running")]
    if not connected:
        ready_message = "the agent does not answer"
    elif not agent.get("ok"):
        ready_message = "the agent reports not ok"
    elif down:
        ready_message = f"not running: {', '.join(down)}"
    else:
        ready_message = f"{len(agent.get('processes', []))} process(es) running"
    conditions = [
        _condition("AgentConnected", connected,
                   f"{agent['address']} version {agent.get('version')}" if connected else agent.get("message", "")),
        _condition("Ready", connected and bool(agent.get("ok")) and not down, ready_message),
    ]
    if soft_reboot is not None:
        conditions.append(_condition("SoftRebootConfirmed", soft_reboot.outcome == "ok", soft_reboot.message))
    return conditions


def vm_row(vm: ActualVm, last: Event | None, agent: dict[str, Any] | None = None,
           soft_reboot: Event | None = None) -> dict[str, Any]:
    mark = vm.mark
    forwards = {f.name: f"127.0.0.1:{f.host_port}" for f in mark.forwards} if mark else {}
    return {
        "kind": "vm",
        "name": vm.name,
        "managed": vm.managed,
        "state": vm.power.value,
        "domainId": vm.domain_id,
        "vcpus": vm.vcpus,
        "maxVcpus": vm.max_vcpus,
        "memory": vm.memory,
        "maxMemory": vm.max_memory,
        "image": mark.image if mark else None,
        "owner": mark.owner if mark else None,
        "forwards": forwards,
        "consoleLog": vm.console_log,
        "agent": agent,
        "conditions": [
            _condition("Running", vm.running, vm.power.value),
            _condition("Managed", vm.managed, "" if vm.managed else "no somnus ownership mark"),
            *(_agent_conditions(agent, soft_reboot) if vm.managed else []),
            *_last_step(last),
        ],
    }


def container_row(c: ActualContainer, last: Event | None) -> dict[str, Any]:
    return {
        "kind": "container",
        "name": c.name,
        "managed": c.managed,
        "state": c.state,
        "image": c.image,
        "id": c.container_id[:12],
        "conditions": [
            _condition("Running", c.running, c.state),
            _condition("Managed", c.managed, "" if c.managed else "no io.somnus labels"),
            *_last_step(last),
        ],
    }


def rows(backends: Backends, *, kind: str | None, name: str | None,
         include_unmanaged: bool, recent_errors: bool = False) -> list[dict[str, Any]]:
    settings = backends.settings
    journal = Journal(settings.journal_path) if settings.journal_path.exists() else None
    applied = journal.applied() if journal is not None else {}

    def revision(address: str) -> dict[str, str | None]:
        """The git revision an object was last converged from (gitops), when there is one."""
        return {"revision": applied[address][1]} if address in applied and applied[address][1] else {}

    def last(address: str) -> tuple[Event | None, Event | None]:
        """The object's last step, and its last soft reboot."""
        events = journal.recent(address, limit=50) if journal is not None else []
        step = next((e for e in events if e.action != SOFT_REBOOT_ACTION), None)
        return step, next((e for e in events if e.action == SOFT_REBOOT_ACTION), None)

    result: list[dict[str, Any]] = []
    if kind in (None, "vm"):
        vms = [
            vm for vm in sorted(backends.vms.observe().values(), key=lambda v: v.name)
            if (name is None or vm.name == name) and (vm.managed or include_unmanaged or name)
        ]
        with ThreadPoolExecutor(max_workers=16) as pool:
            agents = list(pool.map(
                lambda vm: probe_agent(vm, settings.state_dir, recent_errors=recent_errors) if vm.managed else None,
                vms,
            ))
        for vm, agent in zip(vms, agents):
            step, soft_reboot = last(f"vm/{vm.name}")
            result.append({**vm_row(vm, step, agent, soft_reboot), **revision(f"vm/{vm.name}")})
    if kind in (None, "container"):
        for c in sorted(backends.containers.observe().values(), key=lambda c: c.name):
            if (name is None or c.name == name) and (c.managed or include_unmanaged or name):
                result.append({**container_row(c, last(f"container/{c.name}")[0]),
                               **revision(f"container/{c.name}")})
    if journal is not None:
        journal.close()
    return result


def categorize_errors(errors: list[dict[str, Any]], journal_path: Path) -> None:
    """Fill in each error line's `category` (in place), classifying only lines not seen before.

    Classifications are cached in the journal, so the model loads only when a
    guest has logged a new error line.
    """
    import hashlib

    journal = Journal(journal_path)
    try:
        keys = [hashlib.sha256(e["text"].encode()).hexdigest() for e in errors]
        cached = {key: journal.cached_triage(key) for key in set(keys)}
        new = sorted(key for key, hit in cached.items() if hit is None)
        if new:
            from somnus_reconciler.semantic import triage

            texts = {key: e["text"] for key, e in zip(keys, errors)}
            for key, verdict in zip(new, triage.default_classifier().classify_many([texts[k] for k in new])):
                journal.cache_triage(key, verdict.category.value, verdict.score)
                cached[key] = (verdict.category.value, verdict.score)
        for key, error in zip(keys, errors):
            hit = cached[key]
            if hit is not None:
                error["category"] = hit[0]
    finally:
        journal.close()
