"""`somnus validate`: valid manifests counted, as a line or as JSON.

Invalid input is rendered by the base views (`views.HumanView.invalid`,
`views.JsonView.invalid`).
"""

from __future__ import annotations

from somnus_reconciler.cli import views
from somnus_reconciler.values.desired import DesiredState


class ValidateHuman(views.HumanView):
    def valid(self, desired: DesiredState) -> None:
        secrets = f", {len(desired.secrets)} secret" if desired.secrets else ""
        self.echo(f"valid: {len(desired.vms)} vm, {len(desired.containers)} container, "
                  f"{len(desired.packs)} pack{secrets}")


class ValidateJson(views.JsonView):
    def valid(self, desired: DesiredState) -> None:
        self.json({"errors": [], "objects": len(desired.vms) + len(desired.containers) + len(desired.packs)
                   + len(desired.secrets)})


def for_output(output: str) -> ValidateHuman | ValidateJson:
    """`text` or `json`."""
    return ValidateJson() if output == "json" else ValidateHuman()
