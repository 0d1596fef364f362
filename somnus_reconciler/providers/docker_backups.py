"""What a container's backup copies out of dockerd and puts back: the committed image as a
`docker save` tarball, and each named volume as a tar of its mount point.

`docker_provider.DockerProvider` delegates here on its open API client; the engine
reaches it through the `ContainerProvider` protocol (`engine.container_backups`).
Nothing here touches a host path but the backup's own files: volumes are read and
written through the container that mounts them (`get_archive`, `put_archive`).
"""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import TYPE_CHECKING

from somnus_reconciler.providers.docker_errors import mapped
from somnus_reconciler.providers.protocols import ProviderError

if TYPE_CHECKING:
    import docker

_CHUNK = 1 << 20


def save_image(api: docker.APIClient, address: str, reference: str, dest: Path) -> None:
    """`docker save REFERENCE > DEST`."""
    with mapped(address, "save image"), dest.open("wb") as out:
        for chunk in api.get_image(reference, chunk_size=_CHUNK):
            out.write(chunk)


def load_image(api: docker.APIClient, address: str, src: Path) -> str:
    """`docker load < SRC`; the reference of the image it held."""
    with mapped(address, "load image"), src.open("rb") as data:
        for line in api.load_image(data):
            loaded = line.get("stream", "") if isinstance(line, dict) else ""
            if loaded.startswith("Loaded image"):
                return str(loaded.split(":", 1)[1].strip())
    raise ProviderError(address, "load image", f"{src} named no image")


def volume_mounts(api: docker.APIClient, address: str, container_id: str, prefix: str) -> list[tuple[str, str]]:
    """(volume, mount path) of each named volume mounted in the container whose name starts with `prefix`."""
    with mapped(address, "inspect mounts"):
        mounts = api.inspect_container(container_id).get("Mounts") or []
    return sorted((m["Name"], m["Destination"]) for m in mounts
                  if m.get("Type") == "volume" and str(m.get("Name", "")).startswith(prefix))


def archive_path(api: docker.APIClient, address: str, container_id: str, path: str, dest: Path) -> None:
    """A tar of `path` in the container (its top directory named as `path`'s last part)."""
    with mapped(address, f"archive {path}"):
        stream, _ = api.get_archive(container_id, path, chunk_size=_CHUNK)
        with dest.open("wb") as out:
            for chunk in stream:
                out.write(chunk)


def replace_path(api: docker.APIClient, address: str, container_id: str, path: str, src: Path) -> None:
    """Empty `path` in the running container, then unpack a tar made by `archive_path` over it."""
    with mapped(address, f"restore {path}"):
        # busybox's find has no -delete; rm -f passes over a glob that matched nothing.
        emptied = api.exec_create(container_id, ["sh", "-c", 'rm -rf -- "$1"/* "$1"/.[!.]* "$1"/..?*', "sh", path])
        api.exec_start(emptied["Id"])
        if api.exec_inspect(emptied["Id"]).get("ExitCode") != 0:
            raise ProviderError(address, f"restore {path}", f"could not empty {path} in the container")
        with src.open("rb") as data:
            api.put_archive(container_id, posixpath.dirname(path.rstrip("/")) or "/", data.read())
