"""Somnus Reconciler: persistent AI workstations declared as code.

Each folder is a layer and imports only the layers below it (docs/architecture.md,
[tool.importlinter] in pyproject.toml): cli > passes > engine > providers | semantic
> planning | manifests > images > journal | settings > values.

Flow of one pass (`passes.converge`, through `passes.prepare`):
manifests.loader.load -> manifests.references.resolve (desired state) ->
providers.backends.observe_reachable (actual state) -> planning.plan.compute ->
planning.admission.check -> engine.executor (snapshot, act, verify, record or
roll back) -> cli.views renders the plan and its events.
"""

__version__ = "0.1.0"
