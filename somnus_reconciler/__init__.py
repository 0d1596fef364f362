"""Somnus Reconciler: persistent AI workstations declared as code.

Flow (see docs/architecture.md): loader -> references (desired state) ->
providers.observe (actual state) -> plan.compute -> admission -> engine.
"""

__version__ = "0.1.0"
