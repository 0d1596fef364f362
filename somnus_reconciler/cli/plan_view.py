"""Plans as `diff` (and `apply`, before it asks) shows them: terraform-like lines, or JSON.

`PlanHuman` writes one line per change (`+ ~ -/+ -`, address, what, the
disruption) and a summary; `PlanJson` the documented shape (docs/output.md).
The words of each line come from `planning.plan_text`, which the web page shares.
"""

from __future__ import annotations

from somnus_reconciler.cli import views
from somnus_reconciler.cli.views import JsonValue
from somnus_reconciler.planning.plan import Action, Plan
from somnus_reconciler.planning.plan_text import describe_change, disruption_note


def plan_lines(plan: Plan) -> list[str]:
    lines = []
    for change in plan.changes:
        note = disruption_note(change)
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
