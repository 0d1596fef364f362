"""VM base images: build them from a recipe and find them by name or by path.

`somnus image build` calls `build_vm_image`; the libvirt provider calls
`find_vm_image` when it defines a guest, to learn which qcow2 its overlay
backs onto and which kernel, initrd and command line to boot directly.

Two recipes:

- "tiny-linux" is Debian's cloud kernel plus a busybox initramfs whose /init
  loads the virtio modules, configures eth0 for QEMU user-mode networking,
  serves `GET /status` -> `ok` on guest port 7465, prints `GUEST_READY_LINE` on
  the serial console and powers off on an ACPI power-button press. Its disk is
  an empty qcow2: the guest lives in RAM.
- "debian-12" is a debootstrapped Debian bookworm with its own kernel and
  initramfs, systemd, OpenSSH (root by key only), python3 and python3-apt (what
  Ansible needs). Keys and other secrets reach it at boot from a read-only
  seed disk labelled `SEED_LABEL` (see `guest_access.build_seed_disk`); it
  prints `GUEST_READY_LINE` on the serial console once multi-user.target is
  reached. Its apt sources and the addresses of their hosts are the build
  host's, because a guest's DNS through QEMU user-mode networking cannot be
  relied on (nor used: it would send the host's traffic to its nameserver).

`debootstrap_rootfs` makes the Debian root filesystems, cached by their
inputs; `container_images` uses it too, for the somnus/base container image.

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
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

VM_IMAGE_NAMES: tuple[str, ...] = ("tiny-linux", "debian-12")

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


# --- the debian-12 recipe ----------------------------------------------------

# Label of the read-only disk the host gives a debian-12 guest at boot; its
# `authorized_keys` goes to /root/.ssh/, every other file to /etc/somnus/.
SEED_LABEL = "SOMNUS-SEED"
ROOT_LABEL = "somnus-root"
DEBIAN_SUITE = "bookworm"

# The first file the root filesystem holds besides what debootstrap made: the
# guest resolves the package registries through its /etc/hosts (see
# `host_address_lines`), never through a nameserver, so there is none.
_GUEST_RESOLV_CONF = """\
# No nameserver: Somnus guests find their package mirrors through /etc/hosts.
# A nameserver reached through QEMU user-mode networking would be the host's.
"""

_GUEST_FSTAB = f"LABEL={ROOT_LABEL} / ext4 defaults,errors=remount-ro 0 1\n"

_GUEST_SSHD_CONFIG = """\
# Somnus: root by key only; no passwords anywhere. Read before sshd_config's own
# settings, so these win.
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
HostKey /etc/ssh/ssh_host_ed25519_key
"""

_GUEST_NETWORK = """\
# QEMU user-mode networking answers DHCP on the one virtio NIC.
[Match]
Name=eth0

[Network]
DHCP=ipv4

[DHCPv4]
UseDNS=no
UseNTP=no
"""

# The initramfs is made in a chroot, where the root file system's type cannot be
# probed: named here, so that its fsck goes in. No swap, so nothing to resume.
_GUEST_INITRAMFS_CONF = """\
FSTYPE=ext4
RESUME=none
"""

# Each guest makes its own host key on first boot: an image-wide key would be
# shared by every VM built from it.
_GUEST_HOSTKEY_UNIT = """\
[Unit]
Description=Somnus: make this guest's SSH host key
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key

[Install]
WantedBy=multi-user.target
"""

_GUEST_SEED_SCRIPT = f"""\
#!/bin/sh
# Somnus: install what the host put on the disk labelled {SEED_LABEL}:
# authorized_keys for root, every other file (e.g. the agent token) in /etc/somnus.
set -eu
# blkid scans the block devices itself, so this does not wait for udev's links.
device=$(blkid -L {SEED_LABEL} || true)
if [ -z "$device" ]; then
    echo "somnus-seed: no disk labelled {SEED_LABEL}; nothing to install"
    exit 0
fi
mnt=$(mktemp -d)
trap 'umount "$mnt" 2>/dev/null || true; rmdir "$mnt"' EXIT
mount -o ro,nosuid,nodev,noexec "$device" "$mnt"
umask 077
install -d -m 0700 /root/.ssh /etc/somnus
for file in "$mnt"/*; do
    [ -f "$file" ] || continue
    name=${{file##*/}}
    if [ "$name" = authorized_keys ]; then
        install -m 0600 "$file" /root/.ssh/authorized_keys
    else
        install -m 0600 "$file" "/etc/somnus/$name"
    fi
    echo "somnus-seed: installed $name"
done
"""

_GUEST_SEED_UNIT = f"""\
[Unit]
Description=Somnus: install SSH keys and secrets from the disk labelled {SEED_LABEL}
After=local-fs.target
Before=ssh.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/somnus-seed

[Install]
WantedBy=multi-user.target
"""

# Wanted by graphical.target and ordered after multi-user.target: a unit wanted
# by multi-user.target itself cannot wait for it (the target orders itself after
# what it wants, which would be a cycle).
_GUEST_READY_UNIT = f"""\
[Unit]
Description=Somnus: say on the serial console that multi-user.target is reached
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo "{GUEST_READY_LINE}" >/dev/ttyS0'

[Install]
WantedBy=graphical.target
"""


@dataclass(frozen=True)
class _DebianRecipe:
    """Inputs of a debian-12 build; their hash keys the cache.

    The build host's apt sources and the addresses of their hosts also go into
    the image, but not into the hash: they are recorded in recipe.json.
    """

    recipe_version: int = 1
    suite: str = DEBIAN_SUITE
    packages: tuple[str, ...] = (
        "python3", "python3-apt",  # Ansible's interpreter and its apt module
        "openssh-server", "sudo", "ca-certificates",
        "systemd-sysv", "udev", "dbus", "iproute2", "procps",
        "linux-image-cloud-amd64", "initramfs-tools", "zstd", "e2fsprogs",
    )
    hostname: str = "somnus-debian"
    cmdline: str = f"root=LABEL={ROOT_LABEL} rw console=ttyS0 net.ifnames=0"
    disk_size: str = "4G"
    files: tuple[tuple[str, str, int], ...] = (  # (path in the guest, content, mode)
        ("etc/resolv.conf", _GUEST_RESOLV_CONF, 0o644),
        ("etc/fstab", _GUEST_FSTAB, 0o644),
        ("etc/ssh/sshd_config.d/somnus.conf", _GUEST_SSHD_CONFIG, 0o644),
        ("etc/systemd/network/20-somnus-dhcp.network", _GUEST_NETWORK, 0o644),
        ("etc/systemd/system/somnus-ssh-hostkey.service", _GUEST_HOSTKEY_UNIT, 0o644),
        ("etc/systemd/system/somnus-seed.service", _GUEST_SEED_UNIT, 0o644),
        ("etc/systemd/system/somnus-ready.service", _GUEST_READY_UNIT, 0o644),
        ("usr/local/sbin/somnus-seed", _GUEST_SEED_SCRIPT, 0o755),
        ("etc/initramfs-tools/conf.d/somnus.conf", _GUEST_INITRAMFS_CONF, 0o644),
        ("etc/machine-id", "", 0o444),  # empty: each guest makes its own at first boot
    )
    enable: tuple[str, ...] = (
        "systemd-networkd.service", "somnus-ssh-hostkey.service", "somnus-seed.service",
        "somnus-ready.service", "serial-getty@ttyS0.service",
    )
    # Background apt runs would hold the dpkg lock when Ansible wants it.
    mask: tuple[str, ...] = ("apt-daily.timer", "apt-daily-upgrade.timer")
    default_target: str = "graphical.target"

    def as_json(self) -> dict[str, object]:
        return {
            "recipe_version": self.recipe_version,
            "suite": self.suite,
            "packages": list(self.packages),
            "hostname": self.hostname,
            "cmdline": self.cmdline,
            "disk_size": self.disk_size,
            "files": [[path, content, mode] for path, content, mode in self.files],
            "enable": list(self.enable),
            "mask": list(self.mask),
            "default_target": self.default_target,
        }

    def digest(self) -> str:
        canonical = json.dumps(self.as_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


_Recipe = _TinyLinuxRecipe | _DebianRecipe
_RECIPES: dict[str, _Recipe] = {"tiny-linux": _TinyLinuxRecipe(), "debian-12": _DebianRecipe()}


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
            recipe = _RECIPES[name]
            if isinstance(recipe, _TinyLinuxRecipe):
                _build_tiny_linux(recipe, name, staging, log)
            else:
                _build_debian(recipe, name, staging, images_dir, log)
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


def _build_debian(recipe: _DebianRecipe, name: str, out: Path, images_dir: Path, log: Log) -> None:
    sources = host_apt_sources()
    mirror = debian_mirror(recipe.suite, sources)
    rootfs = debootstrap_rootfs(recipe.packages, images_dir, log, suite=recipe.suite, mirror=mirror)
    with tempfile.TemporaryDirectory(prefix=".work-", dir=out) as tmp:
        work = Path(tmp)
        root = work / "root"
        log(f"{name}: configuring a copy of {rootfs}")
        _run(["cp", "-a", "--reflink=auto", str(rootfs), str(root)], what="copy the root filesystem")
        guest_sources = [s for s in sources if _is_for_guest(s, recipe.suite, root)]
        hosts_lines = host_address_lines(sorted({h for s in guest_sources for h in s.hostnames()}))
        _configure_debian(recipe, root, guest_sources, hosts_lines)
        kernel, initrd = _boot_files(root)
        shutil.copyfile(kernel, out / KERNEL_FILE)
        shutil.copyfile(initrd, out / INITRD_FILE)
        raw = work / "disk.raw"
        log(f"{name}: making the {recipe.disk_size} root file system and converting it to qcow2")
        _run(
            ["mkfs.ext4", "-q", "-L", ROOT_LABEL, "-d", str(root), str(raw), recipe.disk_size],
            what="make the root file system",
        )
        _run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(out / DISK_FILE)], what="convert to qcow2")
        kernel_release = kernel.name.removeprefix("vmlinuz-")
    built = {
        "name": name,
        "recipe_hash": recipe.digest(),
        "recipe": recipe.as_json(),
        "built": {
            "rootfs": str(rootfs),
            "mirror": mirror,
            "apt_sources": [s.deb822() for s in guest_sources],
            "hosts_lines": list(hosts_lines),
            "kernel_release": kernel_release,
            "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        },
    }
    (out / RECIPE_FILE).write_text(json.dumps(built, indent=2, sort_keys=True) + "\n")
    _make_readable(out)


def _configure_debian(
    recipe: _DebianRecipe, root: Path, sources: Sequence[AptSource], hosts_lines: Sequence[str]
) -> None:
    for relative, content, mode in recipe.files:
        _write_guest_file(root, relative, content, mode)
    _write_guest_file(root, "etc/hostname", f"{recipe.hostname}\n", 0o644)
    hosts = [
        "127.0.0.1\tlocalhost",
        f"127.0.1.1\t{recipe.hostname}",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "# The build host's addresses of its package mirrors (see somnus images.py).",
        *hosts_lines,
    ]
    _write_guest_file(root, "etc/hosts", "\n".join(hosts) + "\n", 0o644)
    (root / "etc/apt/sources.list").unlink(missing_ok=True)
    apt_sources = "\n".join(s.deb822() for s in sources)
    _write_guest_file(root, "etc/apt/sources.list.d/somnus-host.sources", apt_sources, 0o644)
    for host_key in (root / "etc/ssh").glob("ssh_host_*"):
        host_key.unlink()
    shadow = (root / "etc/shadow").read_text()
    root_hash = next((line.split(":")[1] for line in shadow.splitlines() if line.startswith("root:")), "")
    if not root_hash.startswith(("*", "!")):
        raise ImageError("the debootstrapped root account has a password; the recipe allows none")
    chroot = ["chroot", str(root), "systemctl"]
    _run([*chroot, "enable", *recipe.enable], what="enable the guest's services")
    _run([*chroot, "mask", *recipe.mask], what="mask the guest's apt timers")
    _run([*chroot, "set-default", recipe.default_target], what="set the guest's default target")
    # Again, with the recipe's initramfs settings (see _GUEST_INITRAMFS_CONF).
    _run(["chroot", str(root), "update-initramfs", "-u", "-k", "all"], what="remake the guest's initramfs")


def _write_guest_file(root: Path, relative: str, content: str, mode: int) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # never write through a symlink debootstrap left
    path.write_text(content)
    os.chmod(path, mode)


def _boot_files(root: Path) -> tuple[Path, Path]:
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise ImageError(f"expected one /boot/vmlinuz-* in the guest, found {len(kernels)}")
    initrd = root / "boot" / f"initrd.img-{kernels[0].name.removeprefix('vmlinuz-')}"
    if not initrd.is_file():
        raise ImageError(f"the guest has no {initrd.relative_to(root)}: did initramfs-tools run?")
    return kernels[0], initrd


# --- Debian root file systems and the host's apt sources ----------------------

_DEBOOTSTRAP_VARIANT = "minbase"
_ROOTFS_VERSION = 1  # bump when debootstrap_rootfs changes what it makes


@dataclass(frozen=True)
class AptSource:
    """One entry of the host's apt sources, in either file format."""

    types: tuple[str, ...]
    uris: tuple[str, ...]
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str | None = None

    def hostnames(self) -> tuple[str, ...]:
        names = (re.match(r"[a-z+]+://([^/:@]+)", uri) for uri in self.uris)
        return tuple(m.group(1) for m in names if m is not None)

    def deb822(self) -> str:
        lines = [
            f"Types: {' '.join(self.types)}",
            f"URIs: {' '.join(self.uris)}",
            f"Suites: {' '.join(self.suites)}",
            f"Components: {' '.join(self.components)}",
        ]
        if self.signed_by is not None:
            lines.append(f"Signed-By: {self.signed_by}")
        return "\n".join(lines) + "\n"


def host_apt_sources(apt_dir: Path = Path("/etc/apt")) -> tuple[AptSource, ...]:
    """The entries apt on this host reads: sources.list and sources.list.d/*.{list,sources}."""
    found: list[AptSource] = []
    files = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path in files:
        if path.is_file():
            found.extend(_one_line_sources(path.read_text()))
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        found.extend(_deb822_sources(path.read_text()))
    return tuple(found)


def _one_line_sources(text: str) -> list[AptSource]:
    found = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        match = re.fullmatch(r"(deb|deb-src)\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)", line)
        if match is None:
            continue
        options = dict(o.split("=", 1) for o in (match.group(2) or "").split() if "=" in o)
        found.append(AptSource(
            types=(match.group(1),),
            uris=(match.group(3),),
            suites=(match.group(4),),
            components=tuple(match.group(5).split()),
            signed_by=options.get("signed-by"),
        ))
    return found


def _deb822_sources(text: str) -> list[AptSource]:
    found = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for raw in stanza.splitlines():
            if raw.startswith("#") or not raw.strip():
                continue
            if raw[0] in " \t" and key:
                fields[key] += " " + raw.strip()
            elif ":" in raw:
                key, value = raw.split(":", 1)
                key = key.strip().lower()
                fields[key] = value.strip()
        if fields.get("enabled", "yes").lower() == "no" or not fields.get("uris"):
            continue
        found.append(AptSource(
            types=tuple(fields.get("types", "deb").split()),
            uris=tuple(fields["uris"].split()),
            suites=tuple(fields.get("suites", "").split()),
            components=tuple(fields.get("components", "").split()),
            signed_by=fields.get("signed-by"),
        ))
    return found


def debian_mirror(suite: str, sources: Sequence[AptSource]) -> str:
    """The host's mirror of Debian `suite` (main): what debootstrap fetches from."""
    for source in sources:
        if "deb" in source.types and suite in source.suites and "main" in source.components:
            return source.uris[0]
    raise ImageError(
        f"the host's apt sources have no 'deb' entry for suite {suite} with component main; "
        f"add one to /etc/apt/sources.list.d/"
    )


def _is_for_guest(source: AptSource, suite: str, root: Path) -> bool:
    """Entries of the guest's release whose keyring the guest has too."""
    of_release = all(s == suite or s.startswith(f"{suite}-") for s in source.suites)
    keyring_ok = source.signed_by is None or (
        source.signed_by.startswith("/") and (root / source.signed_by.lstrip("/")).is_file()
    )
    return "deb" in source.types and of_release and keyring_ok


def host_address_lines(hostnames: Sequence[str], hosts_file: Path = Path("/etc/hosts")) -> tuple[str, ...]:
    """/etc/hosts lines for `hostnames` as this host resolves them.

    A name in the host's /etc/hosts is copied from there; any other is
    resolved with the host's resolver (getaddrinfo, IPv4). A name that does
    not resolve is left out: the guest's apt will say so when it needs it.
    """
    listed: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for raw in hosts_file.read_text().splitlines():
            fields = raw.split("#", 1)[0].split()
            for name in fields[1:]:
                listed.setdefault(name, fields[0])
    lines = []
    for name in hostnames:
        address = listed.get(name)
        if address is None:
            with contextlib.suppress(OSError):
                infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
                address = str(infos[0][4][0]) if infos else None
        if address is not None:
            lines.append(f"{address}\t{name}")
    return tuple(lines)


def debootstrap_rootfs(
    packages: Sequence[str],
    cache_dir: Path,
    log: Log,
    *,
    suite: str = DEBIAN_SUITE,
    mirror: str | None = None,
) -> Path:
    """A Debian `suite` root file system (debootstrap minbase plus `packages`).

    Cached in `cache_dir/rootfs-<suite>-<hash>/root`, keyed by the hash of its
    inputs (suite, variant, packages, mirror); so each recipe debootstraps once.
    Callers must not change the tree they get: copy it (`cp -a`) or archive it.
    The host's hostname and resolv.conf that debootstrap copies in, apt's
    lists and the downloaded .debs are removed.
    """
    mirror = mirror or debian_mirror(suite, host_apt_sources())
    wanted = sorted(set(packages))
    inputs: dict[str, object] = {
        "version": _ROOTFS_VERSION,
        "suite": suite,
        "variant": _DEBOOTSTRAP_VARIANT,
        "packages": wanted,
        "mirror": mirror,
    }
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    key = f"rootfs-{suite}-{digest}"
    target = cache_dir / key
    if (target / "rootfs.json").is_file():
        return target / "root"
    _make_dirs(cache_dir)
    with _build_lock(cache_dir, key):
        if (target / "rootfs.json").is_file():
            return target / "root"  # another process made it meanwhile
        _remove_stale_staging(cache_dir, key)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}.building-", dir=cache_dir))
        try:
            root = staging / "root"
            log(f"{key}: debootstrap {suite} from {mirror} with {' '.join(wanted)}")
            started = time.monotonic()
            _run(
                [
                    "debootstrap", f"--variant={_DEBOOTSTRAP_VARIANT}", f"--include={','.join(wanted)}",
                    suite, str(root), mirror,
                ],
                what=f"debootstrap {suite} (see {root}/debootstrap/debootstrap.log if it is still there)",
            )
            _tidy_rootfs(root)
            seconds = round(time.monotonic() - started, 1)
            record = {**inputs, "debootstrap_seconds": seconds}
            (staging / "rootfs.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
            os.chmod(staging, _DIR_MODE)
            os.rename(staging, target)
        except BaseException:
            _unmount_below(staging)
            shutil.rmtree(staging, ignore_errors=True)
            raise
    log(f"{key}: debootstrapped in {seconds} s")
    return target / "root"


def _tidy_rootfs(root: Path) -> None:
    _unmount_below(root)
    for relative in ("etc/hostname", "etc/resolv.conf"):
        (root / relative).unlink(missing_ok=True)
    (root / "etc/hostname").write_text("localhost\n")
    (root / "etc/resolv.conf").write_text(_GUEST_RESOLV_CONF)
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*_*"):
        for path in root.glob(pattern):
            path.unlink()


def _unmount_below(path: Path) -> None:
    """Unmount what a killed debootstrap left mounted (proc, sys, a bound /dev) under `path`.

    Called before removing a staging tree: removing through a bind mount of the
    host's /dev would delete the host's device nodes.
    """
    prefix = str(path.resolve()) + "/"
    with contextlib.suppress(OSError):
        mountpoints = [
            line.split()[4].encode().decode("unicode_escape")
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
        ]
        for mountpoint in sorted((m for m in mountpoints if m.startswith(prefix)), key=len, reverse=True):
            subprocess.run(["umount", "--lazy", mountpoint], capture_output=True, check=False)


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
