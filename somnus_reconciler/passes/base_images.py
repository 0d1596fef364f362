"""`somnus image build`: build base images, VM (qcow2) or container, by name.

Each name goes to its builder: `vm_images` for VM images, `container_images`
(into dockerd) for container images. Progress goes to `ImageBuildHooks`; the
CLI renders it. Builds are cached by recipe, so building again is cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from somnus_reconciler import settings as settings_mod
from somnus_reconciler.images import container_images, vm_images
from somnus_reconciler.providers.docker_provider import DockerProvider
from somnus_reconciler.values.errors import PermanentError

KNOWN_IMAGES: tuple[str, ...] = vm_images.VM_IMAGE_NAMES + container_images.CONTAINER_IMAGE_NAMES


class ImageBuildHooks(Protocol):
    def building(self, name: str) -> None: ...
    def log(self, line: str) -> None:
        """A line of a build's progress."""
    def built(self, name: str, directory: Path | None) -> None:
        """Done: a VM image's directory, or None for a container image (now in dockerd)."""


class UnknownImage(PermanentError):
    """A name no recipe builds; nothing was built."""


def build(names: Sequence[str], hooks: ImageBuildHooks) -> None:
    """Build `names` (none: every known image) in order.

    UnknownImage before any build; ImageError, ImageRecipeError, ProviderError
    from the build that failed (the ones before it stay built).
    """
    unknown = [n for n in names if n not in KNOWN_IMAGES]
    if unknown:
        raise UnknownImage(f"unknown image(s) {', '.join(unknown)}; known: {', '.join(KNOWN_IMAGES)}")
    settings = settings_mod.resolve()
    docker = DockerProvider(settings.docker_host)  # connects on its first call only
    try:
        for name in names or KNOWN_IMAGES:
            hooks.building(name)
            if name in vm_images.VM_IMAGE_NAMES:
                built = vm_images.build_vm_image(name, settings.images_dir, log=hooks.log)
                hooks.built(name, built.disk.parent)
            else:
                container_images.build_container_image(name, docker, log=hooks.log, images_dir=settings.images_dir)
                hooks.built(name, None)
    finally:
        docker.close()
