"""The "tiny-linux" VM image recipe: Debian's cloud kernel plus a busybox initramfs.

`vm_images.build_vm_image` calls `build` with `TinyLinuxRecipe()`; `vm_images`
also reads the recipe's digest (which keys the image's directory) and its
kernel command line.

The initramfs's /init loads the virtio modules, configures eth0 for QEMU
user-mode networking, serves `GET /status` -> `ok` on guest port 7465 (the
agent's port on other images, so a VM's "agent" forward reaches it), prints
`store.GUEST_READY_LINE` on the serial console and powers off on an ACPI
power-button press. The disk is an empty
qcow2: the guest lives in RAM. The kernel and busybox come from the host's apt
(`apt-get download`); the initramfs is written here (`_NewcArchive`), so no
root, mknod or cpio(1) is needed.
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import json
import lzma
import re
import shutil
import stat
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from somnus_reconciler.images import store

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
class TinyLinuxRecipe:
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


def build(recipe: TinyLinuxRecipe, name: str, out: Path, log: store.Log) -> None:
    """Build the image into the staging directory `out`, its recipe.json last."""
    # Scratch space inside the staging directory: a killed build's leftovers
    # are removed with it by the next build (see store.remove_stale_staging).
    with tempfile.TemporaryDirectory(prefix=".work-", dir=out) as tmp:
        work = Path(tmp)
        kernel_package = _kernel_package(recipe.kernel_metapackage, log)
        log(f"{name}: downloading {kernel_package} and {recipe.busybox_package}")
        debs = _apt_download([kernel_package, recipe.busybox_package], work, log)
        root = work / "root"
        for deb in debs:
            store.run(["dpkg-deb", "-x", str(deb), str(root)], what=f"extract {deb.name}")
        vmlinuz = _single_kernel(root)
        release = vmlinuz.name.removeprefix("vmlinuz-")
        modules = _load_modules(root / "lib" / "modules" / release, recipe.modules)
        log(f"{name}: kernel {release}, modules {' '.join(modules)}")
        busybox = root / "bin" / "busybox"
        if not busybox.is_file():
            raise store.ImageError(f"{recipe.busybox_package} has no /bin/busybox")
        shutil.copyfile(vmlinuz, out / store.KERNEL_FILE)
        (out / store.INITRD_FILE).write_bytes(_tiny_initramfs(recipe, busybox.read_bytes(), modules))
    store.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(out / store.DISK_FILE), recipe.disk_size],
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
    (out / store.RECIPE_FILE).write_text(json.dumps(built, indent=2, sort_keys=True) + "\n")
    store.make_readable(out)


def _kernel_package(metapackage: str, log: store.Log) -> str:
    """The versioned kernel package (linux-image-6.1.0-N-cloud-amd64) the metapackage depends on."""
    out = _apt(["apt-cache", "depends", metapackage], log, what=f"resolve {metapackage}")
    for line in out.splitlines():
        match = re.fullmatch(r"\s*Depends:\s*(linux-image-\S+)", line)
        if match:
            return match.group(1)
    raise store.ImageError(
        f"{metapackage} depends on no linux-image-* package (apt-cache depends said: {out.strip()!r})"
    )


def _apt_download(packages: Sequence[str], work: Path, log: store.Log) -> list[Path]:
    """Download .deb files of `packages` into `work`, returned in the order asked."""
    _apt(["apt-get", "download", *packages], log, cwd=work, what=f"download {' '.join(packages)}")
    debs = []
    for package in packages:
        found = sorted(work.glob(f"{package}_*.deb"))
        if len(found) != 1:
            raise store.ImageError(f"apt-get download left {len(found)} .deb files for {package} in {work}")
        debs.append(found[0])
    return debs


def _apt(argv: Sequence[str], log: store.Log, *, what: str, cwd: Path | None = None) -> str:
    """Run an apt query; if it fails (lists missing or stale), run `apt-get update` once and retry."""
    try:
        return store.run(argv, what=what, cwd=cwd)
    except store.ImageError as first:
        log(f"{what} failed; running apt-get update and retrying")
        try:
            store.run(["apt-get", "update"], what="apt-get update")
        except store.ImageError as e:
            raise store.ImageError(f"{first}; apt-get update failed too: {e}") from e
        return store.run(argv, what=what, cwd=cwd)


def _single_kernel(root: Path) -> Path:
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise store.ImageError(f"expected one /boot/vmlinuz-* in the kernel package, found {len(kernels)}")
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
            raise store.ImageError(
                f"kernel modules depend on each other in a cycle: {' -> '.join(chain + (name,))}"
            )
        if name not in contents:
            if name not in index:
                raise store.ImageError(f"kernel module {name} is not in {modules_dir} (built in, or renamed?)")
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
        return store.run_bytes(["zstd", "-dc", str(path)], what=f"decompress {path.name} (apt-get install zstd)")
    raise store.ImageError(f"kernel module {path} is compressed in a way this builder does not know")


def _module_depends(module: bytes) -> list[str]:
    match = re.search(rb"(?:^|\x00)depends=([^\x00]*)\x00", module)
    if match is None or not match.group(1):
        return []
    return [d.replace(b"-", b"_").decode() for d in match.group(1).split(b",") if d]


def _tiny_initramfs(recipe: TinyLinuxRecipe, busybox: bytes, modules: Mapping[str, bytes]) -> bytes:
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

