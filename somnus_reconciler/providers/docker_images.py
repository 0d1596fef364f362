"""Images in dockerd: containers' snapshots (committed images) and imported root file systems.

`docker_provider.DockerProvider` delegates its snapshot and image methods here,
on its open API client: the engine reaches them through the `ContainerProvider`
protocol, `somnus image build` and `container_images` through `image_labels`
and `import_rootfs`. A snapshot is `somnus-snapshots/<container>:<snapshot>`,
labelled with the container it was taken of.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from somnus_reconciler.providers.docker_errors import is_not_found, mapped
from somnus_reconciler.providers.protocols import ProviderError
from somnus_reconciler.values.actual import Snapshot

if TYPE_CHECKING:
    import docker

LABEL_SNAPSHOT_OF = "io.somnus.snapshot-of"
SNAPSHOT_REPOSITORY = "somnus-snapshots"
# dockerd answers a commit only once the container's changes are written as a layer:
# minutes for a guest with a few GB of packages (Debian's torch), against the client's
# 60 s for every other call. A timed-out commit still finishes in dockerd, and its
# retry would only add a second copy of the load.
COMMIT_TIMEOUT_S = 900


def snapshot_image(name: str, snapshot: str) -> str:
    """The image reference of the container `name`'s snapshot."""
    return f"{SNAPSHOT_REPOSITORY}/{name}:{snapshot}"


def commit(api: docker.APIClient, container_id: str, name: str, snapshot: str, description: str) -> str:
    """`docker commit` of the container as its snapshot `snapshot`; returns the image ID.

    Not paused: with the cgroup v1 freezer, a `docker exec` that starts while the
    commit pauses the container (anyone's: a user's shell, a health check) is
    frozen half-way into it, and dockerd 20.10 then does not unpause: the container
    stays paused and every later call on it times out. Taken before a pack step, the
    snapshot holds what the container's own processes had written by then.
    """
    timeout = api.timeout  # the client is this thread's own (DockerProvider._api)
    api.timeout = max(timeout, COMMIT_TIMEOUT_S)
    try:
        with mapped(f"container/{name}", f"snapshot {snapshot}"):
            result = api.commit(
                container_id, repository=f"{SNAPSHOT_REPOSITORY}/{name}", tag=snapshot,
                message=description, changes=[f"LABEL {LABEL_SNAPSHOT_OF}={name}"], pause=False,
            )
    finally:
        api.timeout = timeout
    return str(result["Id"])


def snapshots(api: docker.APIClient, name: str) -> list[Snapshot]:
    """Snapshots of the container `name`, oldest first."""
    with mapped(f"container/{name}", "list snapshots"):
        found = api.images(name=f"{SNAPSHOT_REPOSITORY}/{name}")
    listed = []
    for image in found:
        for tag in image.get("RepoTags") or ():
            snapshot = tag.rsplit(":", 1)[1]
            listed.append(Snapshot(snapshot, float(image.get("Created", 0)), image.get("Id", "")))
    return sorted(listed, key=lambda s: (s.created, s.name))


def delete_snapshot(api: docker.APIClient, name: str, snapshot: str) -> None:
    """Remove the snapshot's tag. A container restored from it keeps running on
    its layers (docker refuses the untag without force then); they go with it."""
    with mapped(f"container/{name}", f"delete snapshot {snapshot}"):
        api.remove_image(snapshot_image(name, snapshot), force=True, noprune=False)


def labels(api: docker.APIClient, reference: str) -> dict[str, str] | None:
    """The image's labels, or None when no image `reference` exists locally."""
    with mapped(f"image/{reference}", "inspect"):
        try:
            attrs = api.inspect_image(reference)
        except Exception as e:
            if is_not_found(e):
                return None
            raise
    config = attrs.get("Config") or {}
    return dict(config.get("Labels") or {})


def import_rootfs(api: docker.APIClient, tarball: Path, reference: str, *,
                  labels: Mapping[str, str] | None = None, changes: tuple[str, ...] = ()) -> None:
    """`docker import TARBALL REFERENCE`, with `labels` and Dockerfile `changes`."""
    address = f"image/{reference}"
    repository, tag = _split_reference(reference)
    all_changes = [f"LABEL {k}={json.dumps(v)}" for k, v in (labels or {}).items()]
    all_changes.extend(changes)
    with mapped(address, "import"):
        answer = api.import_image_from_file(
            str(tarball), repository=repository, tag=tag, changes=all_changes or None
        )
    # The daemon reports import failures inside a 200 response's JSON stream.
    for line in str(answer).splitlines():
        with contextlib.suppress(ValueError):
            message = json.loads(line)
            if isinstance(message, dict) and message.get("error"):
                raise ProviderError(address, "import", str(message["error"]))


def _split_reference(reference: str) -> tuple[str, str]:
    """Repository and tag: `somnus/busybox:latest` -> (`somnus/busybox`, `latest`).

    A ':' before the last '/' belongs to a registry's host:port, not a tag.
    """
    head, sep, tag = reference.rpartition(":")
    if sep and "/" not in tag:
        return head, tag
    return reference, "latest"
