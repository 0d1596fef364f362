"""What `validate` and `diff` show; neither changes anything.

`validate` checks the manifests without a daemon (schema, references, cycles,
admission against the host); `plan` also observes libvirt and Docker and
returns the plan `apply` would run. Both raise `InvalidInput` listing every
problem; `plan` raises `ProviderError` when a daemon cannot be opened.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from somnus_reconciler.passes import prepare
from somnus_reconciler.planning.plan import Plan
from somnus_reconciler.providers.docker_listing import PendingListing
from somnus_reconciler.values.desired import DesiredState


def validate(paths: Sequence[Path]) -> DesiredState:
    """The manifests under `paths`, loaded and checked as far as can be without observing
    (and without the age identity: Secrets are checked for structure and references)."""
    desired = prepare.load_desired(paths, decrypt=False)
    prepare.static_check(desired)
    return desired


def plan(paths: Sequence[Path], *, prune: bool, state_dir: str | None,
         listing: PendingListing | None = None) -> Plan:
    """The plan against the actual state, as `apply` would compute it (`listing`: see
    `prepare.load_and_open`)."""
    desired, backends = prepare.load_and_open(paths, state_dir=state_dir, listing=listing)
    try:
        return prepare.prepare(desired, backends, prune=prune)
    finally:
        backends.close()
