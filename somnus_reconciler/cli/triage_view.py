"""`somnus triage`: a failure text's category and score, as a line or as one-line JSON."""

from __future__ import annotations

import json

from somnus_reconciler.cli import views
from somnus_reconciler.semantic.triage import Triage


class TriageTable(views.View):
    def verdict(self, triage: Triage) -> None:
        self.echo(f"{triage.category.value}  {triage.score:.3f}")


class TriageJson(views.View):
    def verdict(self, triage: Triage) -> None:
        self.echo(json.dumps({"category": triage.category.value, "score": triage.score}))


def for_output(output: str) -> TriageTable | TriageJson:
    """`table` or `json`."""
    return TriageJson() if output == "json" else TriageTable()
