"""Plans as `diff` (and `apply`, before it asks) shows them: terraform-like lines, or JSON.

`PlanHuman` writes one line per change (`+ ~ -/+ -`, address, what, the
disruption) and a summary; `PlanJson` the documented shape (docs/output.md).
`describe_change` is the short "what" shared with apply's progress lines.
"""

from __future__ import annotations

from somnus_reconciler.cli import views
from somnus_reconciler.cli.views import JsonValue
from somnus_reconciler.planning.plan import Action, Change, Plan
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
        return f"replace: {fields}" if fields else f"replace: {change.reason}"
    if change.action in (Action.START, Action.STOP):
        return str(change.action.value) + (f": {fields}" if fields else "")
    return fields or "refresh ownership mark"


def _disruption_note(change: Change) -> str:
    if change.action is Action.DELETE:
        note = "prune: disk deleted" if change.kind == "vm" else "prune"
    elif change.action is Action.REPLACE and change.kind == "vm":
        note = "recreate: disk replaced"
    elif change.action.is_guest_step:
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
        + (f", {packs} pack step(s)" if packs else "")
        + (f", {count[Action.FILES]} file step(s)." if count[Action.FILES] else ".")
    )


def plan_json(plan: Plan) -> dict[str, JsonValue]:
    return {
        "inSync": plan.in_sync,
        "changes": [
            {
                "address": c.address,
                "action": c.action.value,
                "symbol": c.action.symbol,
                "disruption": c.disruption.name.lower(),
                "fields": [{"name": f.name, "before": _scalar(f.before), "after": _scalar(f.after)} for f in c.fields],
                "summary": describe_change(c),
                "drift": c.drift,
                **({"pack": c.pack} if c.pack else {}),
            }
            for c in plan.changes
        ],
        "leftovers": list(plan.leftovers),
    }


class PlanHuman(views.HumanView):
    def plan(self, plan: Plan) -> None:
        for line in plan_lines(plan):
            self.echo(line)
        self.echo(plan_summary(plan))


class PlanJson(views.JsonView):
    def plan(self, plan: Plan) -> None:
        self.json(plan_json(plan))


def for_output(output: str) -> PlanHuman | PlanJson:
    """`text` or `json`."""
    return PlanJson() if output == "json" else PlanHuman()


def _scalar(value: object) -> JsonValue:
    """A field's value as JSON: numbers and strings as they are, anything else as its str()."""
    if value is None or isinstance(value, (str, int, float)):
        return value
    return str(value)
