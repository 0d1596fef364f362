"""A container's ownership mark (SPEC section 3): the `io.somnus.*` labels that
`DockerProvider.create` puts on it, and the `ActualContainer` that one entry of a
listing (`GET /containers/json`) reads back, whether `DockerProvider` or a
`docker_listing` child made the call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from somnus_reconciler.values.actual import ActualContainer
from somnus_reconciler.values.desired import DesiredContainer

LABEL_MANAGED = "io.somnus.managed"  # "true"
LABEL_SPEC_HASH = "io.somnus.spec-hash"
LABEL_OWNER = "io.somnus.owner"  # only when the container has an owner
LABEL_POOL = "io.somnus.pool"  # the Pool it was applied under: scopes --prune
LABEL_PACKS = "io.somnus.packs"  # JSON {pack: fingerprint}
LABEL_CONTAINER = "io.somnus.container"  # on a named volume: the container it belongs to
LABEL_GPU = "io.somnus.gpu"  # its device request as declared, only when it has one (for the plan's line)


def mark_labels(c: DesiredContainer) -> dict[str, str]:
    """The ownership mark (SPEC section 3) that `create` puts on `c`."""
    labels = {
        LABEL_MANAGED: "true",
        LABEL_SPEC_HASH: c.spec_hash,
        LABEL_POOL: c.pool,
        LABEL_PACKS: "{}",  # packs are recorded once the engine installs them
    }
    if c.owner is not None:
        labels[LABEL_OWNER] = c.owner
    if c.gpu is not None:
        labels[LABEL_GPU] = str(c.gpu)
    return labels


def actual_from_summary(summary: Mapping[str, Any]) -> ActualContainer | None:
    """An ActualContainer from one entry of GET /containers/json (docker-py's decoded JSON)."""
    # Legacy links add aliases such as "/other/alias"; the own name has one '/'.
    names = [n[1:] for n in summary.get("Names") or () if n.count("/") == 1]
    if not names:
        return None
    labels: dict[str, str] = dict(summary.get("Labels") or {})
    spec_hash: str | None = None
    pool = "default"
    if labels.get(LABEL_MANAGED) == "true":
        # Marked but without a hash: ours, of unknown spec; the planner replaces it.
        spec_hash = labels.get(LABEL_SPEC_HASH, "")
        pool = labels.get(LABEL_POOL, "default")
    return ActualContainer(
        name=names[0],
        container_id=str(summary.get("Id", "")),
        # The reference it was created from, or the image ID once that tag moved.
        image=str(summary.get("Image", "")),
        state=str(summary.get("State", "")),
        spec_hash=spec_hash,
        pool=pool,
        gpu=labels.get(LABEL_GPU) if spec_hash is not None else None,
        labels=labels,
    )
