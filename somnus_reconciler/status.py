"""Status of actual objects with conditions, for `get` and `describe`.

Reads the providers' observations and the journal's last step per object; the
result is plain dicts with the documented JSON shape (docs/output.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from somnus_reconciler.actual import ActualContainer, ActualVm
from somnus_reconciler.journal import Event, Journal

if TYPE_CHECKING:
    from somnus_reconciler.reconcile import Backends


def _condition(type_: str, status: bool, message: str = "") -> dict[str, str]:
    return {"type": type_, "status": "True" if status else "False", "message": message}


def _last_step(event: Event | None) -> list[dict[str, str]]:
    if event is None:
        return []
    return [_condition("LastStepSucceeded", event.outcome == "ok", f"{event.action}: {event.message}")]


def vm_row(vm: ActualVm, last: Event | None) -> dict[str, Any]:
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
        "conditions": [
            _condition("Running", vm.running, vm.power.value),
            _condition("Managed", vm.managed, "" if vm.managed else "no somnus ownership mark"),
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
         include_unmanaged: bool) -> list[dict[str, Any]]:
    settings = backends.settings
    journal = Journal(settings.journal_path) if settings.journal_path.exists() else None

    def last(address: str) -> Event | None:
        if journal is None:
            return None
        events = journal.recent(address, limit=1)
        return events[0] if events else None

    result: list[dict[str, Any]] = []
    if kind in (None, "vm"):
        for vm in sorted(backends.vms.observe().values(), key=lambda v: v.name):
            if (name is None or vm.name == name) and (vm.managed or include_unmanaged or name):
                result.append(vm_row(vm, last(f"vm/{vm.name}")))
    if kind in (None, "container"):
        for c in sorted(backends.containers.observe().values(), key=lambda c: c.name):
            if (name is None or c.name == name) and (c.managed or include_unmanaged or name):
                result.append(container_row(c, last(f"container/{c.name}")))
    if journal is not None:
        journal.close()
    return result
