"""The words of a plan line: what a change does (`describe_change`) and how it disrupts
(`disruption_note`), as `diff`, apply's progress and the web page say them."""

from __future__ import annotations

from somnus_reconciler.planning.plan import Action, Change
from somnus_reconciler.values.desired import DesiredContainer, DesiredVm
from somnus_reconciler.values.quantity import format_bytes


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
    if change.action is Action.FILES:
        return f"files: {change.reason}"
    if change.action is Action.REPLACE:
        return "replace: " + ", ".join(part for part in (fields, change.reason) if part)
    if change.action in (Action.START, Action.STOP):
        return str(change.action.value) + (f": {fields}" if fields else "")
    return fields or "refresh ownership mark"


def disruption_note(change: Change) -> str:
    if change.action is Action.DELETE:
        note = "prune: disk deleted" if change.kind == "vm" else "prune"
    elif change.action is Action.REPLACE and change.kind == "vm":
        note = "recreate: disk replaced"
    elif change.action.is_guest_step:
        note = "snapshot first"
    else:
        note = change.disruption.label
    return ", ".join(n for n in ("drift" if change.drift else "", note) if n)
