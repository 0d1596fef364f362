"""VM base images: build them from a recipe and find them by name or by path.

`somnus image build` calls `build_vm_image`; `providers.libvirt_provider` calls
`find_vm_image` when it defines a guest, to learn which qcow2 its overlay
backs onto and which kernel, initrd and command line to boot directly.

Two recipes, each in its own module: "tiny-linux" (`tiny_linux`: a kernel
and a busybox initramfs, the guest lives in RAM) and "debian-12"
(`debian_image`: a debootstrapped Debian with SSH, booted from its own disk).
This module only finds built images and dispatches builds; what every build
shares (staging, locks, publishing, the file names) is in `store`.

A VM's image may also be the path of a qcow2 file of its own. `path_problem`
(called by `manifests.references` when manifests are loaded) keeps such paths inside the
allowed roots, symbolic links and `..` resolved first; `find_vm_image` accepts
only a standalone qcow2, without a backing file or an external data file, since
either would make QEMU open a second path that no root check has seen.

A built image is the directory `images_dir/<name>-<recipe hash>/` holding
disk.qcow2, vmlinuz, initrd.img and recipe.json. recipe.json carries the hash
of the recipe it was built from; an image is found only when that hash
matches the current recipe, so changing the recipe means rebuilding. Builds
happen in a staging directory next to the target under a per-image lock and
are renamed into place only when complete, so an interrupted build is never
mistaken for a finished one. Everything is world-readable because
qemu:///system runs QEMU as libvirt-qemu.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import stat
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from somnus_reconciler.images import debian_image, store, tiny_linux

VM_IMAGE_NAMES: tuple[str, ...] = ("tiny-linux", "debian-12")

# Names of this module's API that the modules below define.
ImageError = store.ImageError
DISK_FILE = store.DISK_FILE
KERNEL_FILE = store.KERNEL_FILE
INITRD_FILE = store.INITRD_FILE
RECIPE_FILE = store.RECIPE_FILE
SEED_LABEL = debian_image.SEED_LABEL

_BUILD_HINT = "run: somnus image build {name}"
_QCOW2_MAGIC = b"QFI\xfb"
# qcow2 header (docs/interop/qcow2.txt): version at 4, backing file offset at 8,
# incompatible feature bits at 72 (version 3); bit 2 is "external data file".
_QCOW2_HEADER_BYTES = 80
_QCOW2_EXTERNAL_DATA_FILE = 1 << 2


@dataclass(frozen=True)
class VmImage:
    name: str
    disk: Path  # base qcow2 that VM overlays use as backing file
    kernel: Path | None  # for direct kernel boot; None for a plain bootable qcow2
    initrd: Path | None
    cmdline: str  # kernel command line ('' when kernel is None)


@dataclass(frozen=True)
class GuestServices:
    """What a guest booted from an image is known to run: all that may be waited for.

    Anything else (a qcow2 of the user's, an installer, a blank disk) promises
    nothing: it is done once libvirt has done its part, and what it makes of the
    host's requests is only ever status.
    """

    balloon: bool = False  # a virtio balloon driver: the guest gives memory back to the target
    agent: bool = False  # the somnus agent on guest port 7465, with the seed's token
    ssh: bool = False  # sshd taking the seed's key for root: what pack steps need


_GUEST_SERVICES: dict[str, GuestServices] = {
    "tiny-linux": GuestServices(balloon=True),  # loads virtio_balloon; no agent, no sshd
    "debian-12": GuestServices(balloon=True, agent=True, ssh=True),
}


def guest_services(image: str) -> GuestServices:
    """What a guest of the VM image `image` (a recipe name or a qcow2 path) promises to run."""
    return _GUEST_SERVICES.get(image, GuestServices())


_Recipe = tiny_linux.TinyLinuxRecipe | debian_image.DebianRecipe
_RECIPES: dict[str, _Recipe] = {
    "tiny-linux": tiny_linux.TinyLinuxRecipe(),
    "debian-12": debian_image.DebianRecipe(),
}


# --- finding ------------------------------------------------------------------


def find_vm_image(image: str, images_dir: Path) -> VmImage:
    """The built image named `image`, or the existing .qcow2 file at path `image`."""
    if image in _RECIPES:
        return _find_built(image, images_dir)
    return _find_qcow2_file(image)


def is_image_path(image: str) -> bool:
    """Whether the VM `image` names a qcow2 file rather than a base image built here."""
    return image not in _RECIPES and ("/" in image or image.endswith(".qcow2"))


def path_problem(image: str, allowed_roots: Sequence[Path]) -> str | None:
    """Why the VM image path `image` is outside `allowed_roots` (None: inside, or not a path).

    Both sides are resolved first (`~`, `..`, symbolic links), so neither a link
    placed inside a root nor a root that is itself a link lets a path out.
    """
    if not is_image_path(image):
        return None
    resolved = Path(image).expanduser().resolve()
    roots = [root.expanduser().resolve() for root in allowed_roots]
    if any(resolved.is_relative_to(root) for root in roots):
        return None
    via = f" (it resolves to {resolved})" if str(resolved) != image else ""
    return (f"{image!r} is outside the allowed image roots{via}: "
            f"{', '.join(str(root) for root in roots)}; a Pool may allow more with allowedImageRoots")


def image_dir(name: str, images_dir: Path) -> Path:
    """Each recipe version has its own directory, so a rebuild after a recipe change
    never replaces the base disk that existing VMs' overlays back onto."""
    return images_dir / f"{name}-{_RECIPES[name].digest()[:12]}"


def _find_built(name: str, images_dir: Path) -> VmImage:
    built_dir = image_dir(name, images_dir)
    hint = _BUILD_HINT.format(name=name)
    try:
        built = json.loads((built_dir / RECIPE_FILE).read_text())
    except FileNotFoundError:
        raise ImageError(f"VM image {name!r} is not built (no {built_dir / RECIPE_FILE}); {hint}") from None
    except (OSError, ValueError) as e:
        raise ImageError(f"VM image {name!r}: unreadable {built_dir / RECIPE_FILE} ({e}); {hint}") from e
    if not isinstance(built, dict) or built.get("recipe_hash") != _RECIPES[name].digest():
        raise ImageError(f"VM image {name!r} in {built_dir} was built from another recipe; {hint}")
    files = [built_dir / DISK_FILE, built_dir / KERNEL_FILE, built_dir / INITRD_FILE]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ImageError(f"VM image {name!r} is incomplete (missing {', '.join(missing)}); {hint}")
    return VmImage(
        name=name,
        disk=files[0],
        kernel=files[1],
        initrd=files[2],
        cmdline=_RECIPES[name].cmdline,
    )


def _find_qcow2_file(image: str) -> VmImage:
    path = Path(image).expanduser()
    if not is_image_path(image):
        known = ", ".join(VM_IMAGE_NAMES)
        raise ImageError(f"unknown VM image {image!r}: give one of {known} or a path to a .qcow2 file")
    if not path.is_file():
        raise ImageError(f"VM image file {str(path)!r} does not exist")
    if path.suffix != ".qcow2":
        raise ImageError(f"VM image file {str(path)!r} is not a .qcow2 file")
    try:
        with path.open("rb") as f:
            header = f.read(_QCOW2_HEADER_BYTES)
    except OSError as e:
        raise ImageError(f"VM image file {str(path)!r} cannot be read: {e}") from e
    if header[:4] != _QCOW2_MAGIC:
        raise ImageError(f"VM image file {str(path)!r} is not in qcow2 format")
    version = int.from_bytes(header[4:8], "big")
    if int.from_bytes(header[8:16], "big") != 0:
        raise ImageError(f"VM image file {str(path)!r} has a backing file; give a standalone "
                         "qcow2 (qemu-img convert -O qcow2 makes one)")
    if version >= 3 and int.from_bytes(header[72:80], "big") & _QCOW2_EXTERNAL_DATA_FILE:
        raise ImageError(f"VM image file {str(path)!r} keeps its data in an external file; "
                         "give a standalone qcow2 (qemu-img convert -O qcow2 makes one)")
    resolved = path.resolve()
    return VmImage(name=str(resolved), disk=resolved, kernel=None, initrd=None, cmdline="")


# --- building -----------------------------------------------------------------


def build_vm_image(name: str, images_dir: Path, *, log: store.Log = lambda s: None) -> VmImage:
    """Build the image `name` into `images_dir/<name>-<recipe hash>/` unless it is built."""
    if name not in _RECIPES:
        raise ImageError(f"unknown VM image {name!r}: can build {', '.join(VM_IMAGE_NAMES)}")
    with contextlib.suppress(ImageError):
        return _find_built(name, images_dir)
    store.make_dirs(images_dir)
    _warn_if_unreachable(images_dir, log)
    with store.build_lock(images_dir, name):
        with contextlib.suppress(ImageError):
            return _find_built(name, images_dir)  # another process built it meanwhile
        store.remove_stale_staging(images_dir, name)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.building-", dir=images_dir))
        try:
            recipe = _RECIPES[name]
            if isinstance(recipe, tiny_linux.TinyLinuxRecipe):
                tiny_linux.build(recipe, name, staging, log)
            else:
                debian_image.build(recipe, name, staging, images_dir, log)
            store.publish(staging, image_dir(name, images_dir))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    log(f"{name}: built in {image_dir(name, images_dir)}")
    return _find_built(name, images_dir)


def _warn_if_unreachable(path: Path, log: store.Log) -> None:
    """qemu:///system's QEMU (user libvirt-qemu) needs search permission on every ancestor."""
    for ancestor in (path.resolve(), *path.resolve().parents):
        if not ancestor.stat().st_mode & stat.S_IXOTH:
            log(f"warning: {ancestor} is not searchable by other users; "
                f"QEMU under qemu:///system cannot read images below it")
            return
