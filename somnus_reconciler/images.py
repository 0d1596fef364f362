"""VM base images: build them from a recipe and find them by name or by path.

`somnus image build` calls `build_vm_image`; the libvirt provider calls
`find_vm_image` when it defines a guest, to learn which qcow2 its overlay
backs onto and which kernel, initrd and command line to boot directly.

The one recipe so far, "tiny-linux", is Debian's cloud kernel plus a busybox
initramfs whose /init loads the virtio modules, configures eth0 for QEMU
user-mode networking, serves `GET /status` -> `ok` on guest port 7465, prints
`GUEST_READY_LINE` on the serial console and powers off on an ACPI power-button
press. Its disk is an empty qcow2: the guest lives in RAM.

A built image is the directory `images_dir/<name>/` holding disk.qcow2,
vmlinuz, initrd.img and recipe.json. recipe.json carries the hash of the
recipe it was built from; an image is found only when that hash matches the
current recipe, so changing the recipe means rebuilding. Builds happen in a
staging directory next to the target under a per-image lock and are renamed
into place only when complete, so an interrupted build is never mistaken for a
finished one. Everything is world-readable because qemu:///system runs QEMU as
libvirt-qemu.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

VM_IMAGE_NAMES: tuple[str, ...] = ("tiny-linux",)

# What a tiny-linux guest prints on its serial console once it serves /status.
GUEST_READY_LINE = "somnus-guest: ready"
# Guest TCP port of the tiny-linux status server (`GET /status` -> `ok`).
GUEST_STATUS_PORT = 7465

DISK_FILE = "disk.qcow2"
KERNEL_FILE = "vmlinuz"
INITRD_FILE = "initrd.img"
RECIPE_FILE = "recipe.json"

_BUILD_HINT = "run: somnus image build {name}"
_QCOW2_MAGIC = b"QFI\xfb"
_DIR_MODE = 0o755
_FILE_MODE = 0o644

Log = Callable[[str], None]


@dataclass(frozen=True)
class VmImage:
    name: str
    disk: Path  # base qcow2 that VM overlays use as backing file
    kernel: Path | None  # for direct kernel boot; None for a plain bootable qcow2
    initrd: Path | None
    cmdline: str  # kernel command line ('' when kernel is None)


class ImageError(Exception):
    """A VM image is missing, unknown, or could not be built; the message says what to do."""


# --- the recipe ---------------------------------------------------------------

# /init of the tiny-linux initramfs. Any failure drops to a shell on the console
# (a panic would reboot the guest in a loop with panic=-1).
_TINY_INIT = r"""#!/bin/sh
export PATH=/bin
fail() {
    echo "somnus-guest: init failed: $*"
    while :; do setsid cttyhack sh; sleep 1; done
}
/bin/busybox --install -s /bin || fail "busybox --install"
mount -t proc proc /proc || fail "mount /proc"
mount -t sysfs sysfs /sys || fail "mount /sys"
mount -t devtmpfs devtmpfs /dev || fail "mount /dev"
exec </dev/console >/dev/console 2>&1
while read -r module; do
    insmod "/lib/modules/$module.ko" || fail "insmod $module"
done </etc/modules
ifconfig lo 127.0.0.1 netmask 255.0.0.0 up || fail "lo"
ifconfig eth0 10.0.2.15 netmask 255.255.255.0 up || fail "eth0"
route add default gw 10.0.2.2 || fail "default route"
httpd -p 7465 -h /www || fail "httpd"
# The ACPI power button (what `virsh shutdown` presses) is an evdev device;
# one event from it means: power off now.
buttons=""
tries=0
while [ -z "$buttons" ] && [ "$tries" -lt 50 ]; do
    for dev in /sys/class/input/event*; do
        [ -e "$dev/device/name" ] || continue
        case "$(cat "$dev/device/name")" in
            *"Power Button"*) [ -c "/dev/input/${dev##*/}" ] && buttons="$buttons ${dev##*/}" ;;
        esac
    done
    [ -n "$buttons" ] || { tries=$((tries + 1)); usleep 100000; }
done
[ -n "$buttons" ] || fail "no ACPI power button"
for button in $buttons; do
    (
        dd if="/dev/input/$button" of=/dev/null bs=24 count=1 2>/dev/null
        echo "somnus-guest: power button pressed, powering off"
        sync
        poweroff -f
    ) &
done
echo "somnus-guest: ready"
while :; do sleep 3600; done
"""


@dataclass(frozen=True)
class _TinyLinuxRecipe:
    """Inputs of a tiny-linux build; their hash keys the cache."""

    recipe_version: int = 1
    kernel_metapackage: str = "linux-image-cloud-amd64"
    busybox_package: str = "busybox-static"
    # Loaded in this order; dependencies the recipe forgets are added before
    # their users (read from each module's .modinfo) at build time.
    modules: tuple[str, ...] = (
        "virtio_ring",
        "virtio",
        "virtio_pci_modern_dev",
        "virtio_pci_legacy_dev",
        "virtio_pci",
        "failover",
        "net_failover",
        "virtio_net",
        "virtio_blk",
        "virtio_balloon",  # so libvirt's live memory changes reach the guest
        "evdev",  # before `button`, so the power button gets a /dev/input node
        "button",
    )
    cmdline: str = "console=ttyS0 panic=-1 quiet"
    disk_size: str = "1G"
    init_script: str = _TINY_INIT
    status_body: str = "ok"

    def as_json(self) -> dict[str, object]:
        return {
            "recipe_version": self.recipe_version,
            "kernel_metapackage": self.kernel_metapackage,
            "busybox_package": self.busybox_package,
            "modules": list(self.modules),
            "cmdline": self.cmdline,
            "disk_size": self.disk_size,
            "init_script": self.init_script,
            "status_body": self.status_body,
        }

    def digest(self) -> str:
        canonical = json.dumps(self.as_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


_RECIPES: dict[str, _TinyLinuxRecipe] = {"tiny-linux": _TinyLinuxRecipe()}


# --- finding ------------------------------------------------------------------


def find_vm_image(image: str, images_dir: Path) -> VmImage:
    """The built image named `image`, or the existing .qcow2 file at path `image`."""
    if image in _RECIPES:
        return _find_built(image, images_dir)
    return _find_qcow2_file(image)


def is_vm_image_available(image: str, images_dir: Path) -> bool:
    try:
        find_vm_image(image, images_dir)
    except ImageError:
        return False
    return True


def _find_built(name: str, images_dir: Path) -> VmImage:
    image_dir = images_dir / name
    hint = _BUILD_HINT.format(name=name)
    try:
        built = json.loads((image_dir / RECIPE_FILE).read_text())
    except FileNotFoundError:
        raise ImageError(f"VM image {name!r} is not built (no {image_dir / RECIPE_FILE}); {hint}") from None
    except (OSError, ValueError) as e:
        raise ImageError(f"VM image {name!r}: unreadable {image_dir / RECIPE_FILE} ({e}); {hint}") from e
    if not isinstance(built, dict) or built.get("recipe_hash") != _RECIPES[name].digest():
        raise ImageError(f"VM image {name!r} in {image_dir} was built from another recipe; {hint}")
    files = [image_dir / DISK_FILE, image_dir / KERNEL_FILE, image_dir / INITRD_FILE]
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
    looks_like_path = "/" in image or image.endswith(".qcow2")
    if not looks_like_path:
        known = ", ".join(VM_IMAGE_NAMES)
        raise ImageError(f"unknown VM image {image!r}: give one of {known} or a path to a .qcow2 file")
    if not path.is_file():
        raise ImageError(f"VM image file {str(path)!r} does not exist")
    if path.suffix != ".qcow2":
        raise ImageError(f"VM image file {str(path)!r} is not a .qcow2 file")
    try:
        with path.open("rb") as f:
            magic = f.read(len(_QCOW2_MAGIC))
    except OSError as e:
        raise ImageError(f"VM image file {str(path)!r} cannot be read: {e}") from e
    if magic != _QCOW2_MAGIC:
        raise ImageError(f"VM image file {str(path)!r} is not in qcow2 format")
    resolved = path.resolve()
    return VmImage(name=str(resolved), disk=resolved, kernel=None, initrd=None, cmdline="")


# --- building -----------------------------------------------------------------


def build_vm_image(name: str, images_dir: Path, *, log: Log = lambda s: None) -> VmImage:
    """Build the image `name` into `images_dir/<name>/` unless the current recipe is built."""
    if name not in _RECIPES:
        raise ImageError(f"unknown VM image {name!r}: can build {', '.join(VM_IMAGE_NAMES)}")
    with contextlib.suppress(ImageError):
        return _find_built(name, images_dir)
    _make_dirs(images_dir)
    _warn_if_unreachable(images_dir, log)
    with _build_lock(images_dir, name):
        with contextlib.suppress(ImageError):
            return _find_built(name, images_dir)  # another process built it meanwhile
        _remove_stale_staging(images_dir, name)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.building-", dir=images_dir))
        try:
            _build_tiny_linux(_RECIPES[name], name, staging, log)
            _publish(staging, images_dir / name)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    log(f"{name}: built in {images_dir / name}")
    return _find_built(name, images_dir)


def _build_tiny_linux(recipe: _TinyLinuxRecipe, name: str, out: Path, log: Log) -> None:
    # Scratch space inside the staging directory: a killed build's leftovers
    # are removed with it by the next build (see _remove_stale_staging).
    with tempfile.TemporaryDirectory(prefix=".work-", dir=out) as tmp:
        work = Path(tmp)
        kernel_package = _kernel_package(recipe.kernel_metapackage, log)
        log(f"{name}: downloading {kernel_package} and {recipe.busybox_package}")
        debs = _apt_download([kernel_package, recipe.busybox_package], work, log)
        root = work / "root"
        for deb in debs:
            _run(["dpkg-deb", "-x", str(deb), str(root)], what=f"extract {deb.name}")
        vmlinuz = _single_kernel(root)
        release = vmlinuz.name.removeprefix("vmlinuz-")
        modules = _load_modules(root / "lib" / "modules" / release, recipe.modules)
        log(f"{name}: kernel {release}, modules {' '.join(modules)}")
        busybox = root / "bin" / "busybox"
        if not busybox.is_file():
            raise ImageError(f"{recipe.busybox_package} has no /bin/busybox")
        shutil.copyfile(vmlinuz, out / KERNEL_FILE)
        (out / INITRD_FILE).write_bytes(_tiny_initramfs(recipe, busybox.read_bytes(), modules))
    _run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(out / DISK_FILE), recipe.disk_size],
        what="create the base disk",
    )
    built = {
        "name": name,
        "recipe_hash": recipe.digest(),
        "recipe": recipe.as_json(),
        "built": {
            "kernel_package": debs[0].name,
            "busybox_package": debs[1].name,
            "kernel_release": release,
            "modules": list(modules),
            "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        },
    }
    # Written last: a staging directory without it is never a finished build.
    (out / RECIPE_FILE).write_text(json.dumps(built, indent=2, sort_keys=True) + "\n")
    _make_readable(out)


def _kernel_package(metapackage: str, log: Log) -> str:
    """The versioned kernel package (linux-image-6.1.0-N-cloud-amd64) the metapackage depends on."""
    out = _apt(["apt-cache", "depends", metapackage], log, what=f"resolve {metapackage}")
    for line in out.splitlines():
        match = re.fullmatch(r"\s*Depends:\s*(linux-image-\S+)", line)
        if match:
            return match.group(1)
    raise ImageError(f"{metapackage} depends on no linux-image-* package (apt-cache depends said: {out.strip()!r})")


def _apt_download(packages: Sequence[str], work: Path, log: Log) -> list[Path]:
    """Download .deb files of `packages` into `work`, returned in the order asked."""
    _apt(["apt-get", "download", *packages], log, cwd=work, what=f"download {' '.join(packages)}")
    debs = []
    for package in packages:
        found = sorted(work.glob(f"{package}_*.deb"))
        if len(found) != 1:
            raise ImageError(f"apt-get download left {len(found)} .deb files for {package} in {work}")
        debs.append(found[0])
    return debs


def _apt(argv: Sequence[str], log: Log, *, what: str, cwd: Path | None = None) -> str:
    """Run an apt query; if it fails (lists missing or stale), run `apt-get update` once and retry."""
    try:
        return _run(argv, what=what, cwd=cwd)
    except ImageError as first:
        log(f"{what} failed; running apt-get update and retrying")
        try:
            _run(["apt-get", "update"], what="apt-get update")
        except ImageError as e:
            raise ImageError(f"{first}; apt-get update failed too: {e}") from e
        return _run(argv, what=what, cwd=cwd)


def _single_kernel(root: Path) -> Path:
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise ImageError(f"expected one /boot/vmlinuz-* in the kernel package, found {len(kernels)}")
    return kernels[0]


def _load_modules(modules_dir: Path, wanted: Sequence[str]) -> dict[str, bytes]:
    """Uncompressed module files by name, dependencies before their users."""
    index = {_module_name(p): p for p in modules_dir.rglob("*.ko*") if p.is_file()}
    contents: dict[str, bytes] = {}
    ordered: dict[str, bytes] = {}

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in ordered:
            return
        if name in chain:
            raise ImageError(f"kernel modules depend on each other in a cycle: {' -> '.join(chain + (name,))}")
        if name not in contents:
            if name not in index:
                raise ImageError(f"kernel module {name} is not in {modules_dir} (built in, or renamed?)")
            contents[name] = _read_module(index[name])
        for dependency in _module_depends(contents[name]):
            visit(dependency, chain + (name,))
        ordered[name] = contents[name]

    for name in wanted:
        visit(name, ())
    return ordered


def _module_name(path: Path) -> str:
    return path.name.split(".ko", 1)[0].replace("-", "_")


def _read_module(path: Path) -> bytes:
    """The module's ELF bytes: busybox insmod takes plain .ko files only."""
    data = path.read_bytes()
    if path.name.endswith(".ko"):
        return data
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(data)
    if path.name.endswith(".ko.zst"):
        return _run_bytes(["zstd", "-dc", str(path)], what=f"decompress {path.name} (apt-get install zstd)")
    raise ImageError(f"kernel module {path} is compressed in a way this builder does not know")


def _module_depends(module: bytes) -> list[str]:
    match = re.search(rb"(?:^|\x00)depends=([^\x00]*)\x00", module)
    if match is None or not match.group(1):
        return []
    return [d.replace(b"-", b"_").decode() for d in match.group(1).split(b",") if d]


def _tiny_initramfs(recipe: _TinyLinuxRecipe, busybox: bytes, modules: Mapping[str, bytes]) -> bytes:
    archive = _NewcArchive()
    for directory in ("bin", "dev", "etc", "lib", "lib/modules", "proc", "sys", "tmp", "www"):
        archive.directory(directory)
    archive.char_device("dev/console", major=5, minor=1)
    archive.file("bin/busybox", busybox, mode=0o755)
    archive.symlink("bin/sh", "busybox")
    archive.file("init", recipe.init_script.encode(), mode=0o755)
    archive.file("etc/modules", "".join(f"{m}\n" for m in modules).encode())
    for name, data in modules.items():
        archive.file(f"lib/modules/{name}.ko", data)
    archive.file("www/status", recipe.status_body.encode())
    return gzip.compress(archive.finish(), compresslevel=6, mtime=0)


class _NewcArchive:
    """A cpio archive in the kernel's initramfs format ("newc"), all entries owned by root.

    Written here rather than with cpio(1) so that /dev/console can be a device
    node without mknod, root or a fakeroot.
    """

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._ino = 0

    def directory(self, path: str) -> None:
        self._entry(path, stat.S_IFDIR | 0o755, b"", nlink=2)

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(path, stat.S_IFREG | mode, data)

    def symlink(self, path: str, target: str) -> None:
        self._entry(path, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, path: str, *, major: int, minor: int) -> None:
        self._entry(path, stat.S_IFCHR | 0o600, b"", rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0, b"", nlink=1)
        return b"".join(self._chunks)

    def _entry(self, path: str, mode: int, data: bytes, nlink: int = 1, rdev: tuple[int, int] = (0, 0)) -> None:
        self._ino += 1
        name = path.encode() + b"\x00"
        fields = (self._ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(name), 0)
        header = b"070701" + b"".join(b"%08x" % f for f in fields)
        self._chunks += [header, name, _pad(len(header) + len(name)), data, _pad(len(data))]


def _pad(length: int) -> bytes:
    return b"\x00" * (-length % 4)


# --- files, locks and processes ----------------------------------------------


@contextlib.contextmanager
def _build_lock(images_dir: Path, name: str) -> Iterator[None]:
    """Serialise builds of one image across processes."""
    fd = os.open(images_dir / f".{name}.lock", os.O_RDWR | os.O_CREAT, _FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _remove_stale_staging(images_dir: Path, name: str) -> None:
    """Leftovers of builds that were killed; only called while holding the build lock."""
    for leftover in images_dir.glob(f".{name}.building-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    for leftover in images_dir.glob(f".{name}.old-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def _publish(staging: Path, target: Path) -> None:
    """Move a finished build into place, replacing an outdated one.

    A running guest keeps its open kernel and disk files, so replacing them
    under it is safe; a stopped guest's overlay backs onto the new empty disk,
    which reads as the old one did (zeros).
    """
    old: Path | None = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rename(target, old / target.name)
    os.rename(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _make_dirs(path: Path) -> None:
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    for created in missing:
        os.chmod(created, _DIR_MODE)


def _make_readable(directory: Path) -> None:
    os.chmod(directory, _DIR_MODE)
    for entry in directory.iterdir():
        os.chmod(entry, _DIR_MODE if entry.is_dir() else _FILE_MODE)


def _warn_if_unreachable(path: Path, log: Log) -> None:
    """qemu:///system's QEMU (user libvirt-qemu) needs search permission on every ancestor."""
    for ancestor in (path.resolve(), *path.resolve().parents):
        if not ancestor.stat().st_mode & stat.S_IXOTH:
            log(f"warning: {ancestor} is not searchable by other users; QEMU under qemu:///system cannot read images below it")
            return


def _run(argv: Sequence[str], *, what: str, cwd: Path | None = None) -> str:
    return _run_bytes(argv, what=what, cwd=cwd).decode(errors="replace")


def _run_bytes(argv: Sequence[str], *, what: str, cwd: Path | None = None) -> bytes:
    env = {**os.environ, "LC_ALL": "C"}
    try:
        result = subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, check=False)
    except FileNotFoundError as e:
        raise ImageError(f"cannot {what}: {argv[0]} is not installed (run scripts/setup-host.sh)") from e
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise ImageError(f"cannot {what}: {' '.join(argv)} exited {result.returncode}: {' / '.join(detail)}")
    return result.stdout
