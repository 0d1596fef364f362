"""Recipes for the container base images the tool builds locally.

No registry is reachable, so base images are made here: a rootfs tarball built
in a temporary directory, then `docker import`ed through
`providers.docker_provider.DockerProvider.import_rootfs` (reached through the
`ImageImporter` protocol here). `somnus image build` and the
integration tests call `build_container_image`.

Two recipes: somnus/busybox (one static busybox, for tiny tests) and
somnus/base:bookworm (Debian bookworm minbase with python3 and python3-apt,
what Ansible's apt module needs; its root file system comes from
`rootfs.debootstrap_rootfs`, cached and shared with the VM images' builds).

Each recipe has a fingerprint (the hash of everything that goes into the image,
including the bytes of the host binaries it copies). The image carries it as the
label `io.somnus.recipe`; a build whose fingerprint matches the present image is
skipped, so building is idempotent and cheap to call before every test run.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from somnus_reconciler import settings
from somnus_reconciler.images import rootfs, store


class ImageImporter(Protocol):
    """The part of Docker an image build needs (`providers.docker_provider.DockerProvider`)."""

    def image_labels(self, reference: str) -> dict[str, str] | None: ...

    def import_rootfs(self, tarball: Path, reference: str, *, labels: Mapping[str, str] | None = None,
                      changes: tuple[str, ...] = ()) -> None: ...


BUSYBOX_IMAGE = "somnus/busybox:latest"
DEBIAN_BASE_IMAGE = "somnus/base:bookworm"
CONTAINER_IMAGE_NAMES: tuple[str, ...] = (BUSYBOX_IMAGE, DEBIAN_BASE_IMAGE)

LABEL_RECIPE = "io.somnus.recipe"

# Debian's busybox-static; the dynamically linked `busybox` package would put a
# binary in the image whose loader is missing there.
HOST_BUSYBOX = Path("/bin/busybox")

# Bump when the code of a recipe changes in a way its inputs do not show.
_RECIPE_VERSION = 1

_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_BUSYBOX_CHANGES = (
    f"ENV PATH={_PATH}",
    # A workstation container stays up until told otherwise; busybox's sleep
    # accepts `infinity`.
    'CMD ["sleep", "infinity"]',
)
_ETC_PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
_ETC_GROUP = "root:x:0:\nnogroup:x:65534:\n"

_DEBIAN_PACKAGES = ("python3", "python3-apt")
_DEBIAN_CHANGES = (
    f"ENV PATH={_PATH}",
    "ENV LANG=C.UTF-8",
    'CMD ["sleep", "infinity"]',
)
# Made fresh by dockerd in every container, or of no use in an image.
_DEBIAN_TAR_EXCLUDES = ("./dev/*", "./proc/*", "./sys/*", "./run/*", "./tmp/*")


class ImageRecipeError(store.ImageError):
    """A container image cannot be built here: unknown name or a missing host ingredient."""


def build_container_image(
    reference: str,
    provider: ImageImporter,
    *,
    log: Callable[[str], None] = lambda s: None,
    images_dir: Path | None = None,
) -> None:
    """Build `reference` unless an image with the same recipe fingerprint exists.

    `images_dir` is where Debian root file systems are cached (default: the
    settings' images directory, shared with the VM images).

    Raises ImageRecipeError for an unknown reference or a missing ingredient,
    store.ImageError (which it is a kind of) when debootstrap fails,
    ProviderError (BackendUnavailable among them) from the import.
    """
    if reference == DEBIAN_BASE_IMAGE:
        _build_debian_base(reference, provider, log, images_dir or settings.resolve().images_dir)
        return
    if reference != BUSYBOX_IMAGE:
        known = ", ".join(CONTAINER_IMAGE_NAMES)
        raise ImageRecipeError(f"no recipe for container image {reference}; known: {known}")
    recipe = BusyboxRecipe.from_host(HOST_BUSYBOX)
    fingerprint = recipe.fingerprint()
    labels = provider.image_labels(reference)
    if labels is not None and labels.get(LABEL_RECIPE) == fingerprint:
        log(f"{reference}: up to date (recipe {fingerprint})")
        return
    log(f"{reference}: building (recipe {fingerprint})")
    with tempfile.TemporaryDirectory(prefix="somnus-image-") as tmp:
        tarball = Path(tmp) / "rootfs.tar"
        recipe.write_rootfs(tarball)
        provider.import_rootfs(
            tarball, reference, labels={LABEL_RECIPE: fingerprint}, changes=_BUSYBOX_CHANGES
        )
    log(f"{reference}: built")


def _build_debian_base(
    reference: str, provider: ImageImporter, log: Callable[[str], None], images_dir: Path
) -> None:
    suite = rootfs.DEBIAN_SUITE
    mirror = rootfs.debian_mirror(suite, rootfs.host_apt_sources())
    blob = json.dumps(
        {
            "version": _RECIPE_VERSION,
            "suite": suite,
            "packages": _DEBIAN_PACKAGES,
            "mirror": mirror,
            "changes": _DEBIAN_CHANGES,
            "excludes": _DEBIAN_TAR_EXCLUDES,
        },
        sort_keys=True,
    )
    fingerprint = hashlib.sha256(blob.encode()).hexdigest()[:16]
    labels = provider.image_labels(reference)
    if labels is not None and labels.get(LABEL_RECIPE) == fingerprint:
        log(f"{reference}: up to date (recipe {fingerprint})")
        return
    log(f"{reference}: building (recipe {fingerprint})")
    root = rootfs.debootstrap_rootfs(_DEBIAN_PACKAGES, images_dir, log, suite=suite, mirror=mirror)
    with tempfile.TemporaryDirectory(prefix="somnus-image-") as tmp:
        tarball = Path(tmp) / "rootfs.tar"
        excludes = [f"--exclude={pattern}" for pattern in _DEBIAN_TAR_EXCLUDES]
        argv = ["tar", "--numeric-owner", "--xattrs", "-C", str(root), *excludes, "-cf", str(tarball), "."]
        result = subprocess.run(argv, capture_output=True, text=True, check=False,
                                env={**os.environ, "LC_ALL": "C"})
        if result.returncode != 0:
            raise ImageRecipeError(f"cannot archive {root}: tar exited {result.returncode}: {result.stderr.strip()}")
        provider.import_rootfs(
            tarball, reference, labels={LABEL_RECIPE: fingerprint}, changes=_DEBIAN_CHANGES
        )
    log(f"{reference}: built")


@dataclass(frozen=True)
class BusyboxRecipe:
    """A rootfs of one static busybox and a symlink per applet at its usual path."""

    busybox: bytes
    applets: tuple[str, ...]  # relative paths, e.g. "bin/sh", "usr/bin/env"

    @classmethod
    def from_host(cls, path: Path) -> BusyboxRecipe:
        try:
            binary = path.read_bytes()
        except OSError as e:
            raise ImageRecipeError(
                f"{path} cannot be read ({e.strerror}); install Debian's busybox-static"
            ) from e
        if not _is_static_elf(binary):
            raise ImageRecipeError(
                f"{path} is not a statically linked ELF binary; install busybox-static"
            )
        try:
            listing = subprocess.run(
                [str(path), "--list-full"], capture_output=True, text=True, check=True, timeout=10
            ).stdout
        except (OSError, subprocess.SubprocessError) as e:
            raise ImageRecipeError(f"{path} --list-full failed: {e}") from e
        applets = tuple(sorted({a.strip().lstrip("/") for a in listing.split() if a.strip()}))
        if "bin/sh" not in applets:
            raise ImageRecipeError(f"{path} has no sh applet")
        return cls(busybox=binary, applets=applets)

    def fingerprint(self) -> str:
        blob = json.dumps(
            {
                "version": _RECIPE_VERSION,
                "busybox": hashlib.sha256(self.busybox).hexdigest(),
                "applets": self.applets,
                "changes": _BUSYBOX_CHANGES,
                "passwd": _ETC_PASSWD,
                "group": _ETC_GROUP,
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def write_rootfs(self, tarball: Path) -> None:
        """Write the rootfs as a tar with root-owned entries and fixed mtimes.

        Entries are made in the archive directly rather than copied from a
        staged tree, so host ownership and umask cannot leak into the image.
        """
        dirs = {"bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "dev", "proc", "sys",
                "root", "tmp", "var", "var/tmp", "home"}
        for applet in self.applets:
            parent = applet.rpartition("/")[0]
            while parent:
                dirs.add(parent)
                parent = parent.rpartition("/")[0]
        sticky = {"tmp", "var/tmp"}
        with tarfile.open(tarball, "w", format=tarfile.PAX_FORMAT) as tar:
            for d in sorted(dirs):
                mode = 0o1777 if d in sticky else 0o700 if d == "root" else 0o755
                tar.addfile(_entry(d, tarfile.DIRTYPE, mode))
            _add_file(tar, "bin/busybox", self.busybox, 0o755)
            _add_file(tar, "etc/passwd", _ETC_PASSWD.encode(), 0o644)
            _add_file(tar, "etc/group", _ETC_GROUP.encode(), 0o644)
            for applet in self.applets:
                if applet == "bin/busybox":
                    continue
                link = _entry(applet, tarfile.SYMTYPE, 0o777)
                link.linkname = "/bin/busybox"
                tar.addfile(link)


def _entry(name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = 0
    return info


def _add_file(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = _entry(name, tarfile.REGTYPE, mode)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _is_static_elf(binary: bytes) -> bool:
    """True for a 64-bit little-endian ELF without a PT_INTERP (dynamic loader)."""
    if binary[:4] != b"\x7fELF" or binary[4] != 2 or binary[5] != 1:
        return False
    (phoff,) = struct.unpack_from("<Q", binary, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", binary, 0x36)
    pt_interp = 3
    for i in range(phnum):
        (p_type,) = struct.unpack_from("<I", binary, phoff + i * phentsize)
        if p_type == pt_interp:
            return False
    return True
