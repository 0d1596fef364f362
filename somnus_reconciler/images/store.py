"""What every image build shares: the layout of a built VM image, its error, and its file helpers.

`vm_images` (finding and building VM images), the recipe modules `tiny_linux` and
`debian_image`, and `rootfs` (debootstrapped Debian trees, also used by
`container_images`) call these. It imports no other somnus module but the error
base (`values.errors`), so each of them can use it without an import cycle;
`vm_images` re-exports the names that are part of its own API (`ImageError`,
the file names).

A build happens in a staging directory next to its target, under a
per-target lock (`build_lock`), and is renamed into place (`publish`) only
when complete. Everything is made world-readable because qemu:///system runs
QEMU as libvirt-qemu.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from somnus_reconciler.values.errors import PermanentError

# The files of a built VM image directory.
DISK_FILE = "disk.qcow2"
KERNEL_FILE = "vmlinuz"
INITRD_FILE = "initrd.img"
RECIPE_FILE = "recipe.json"

# What a guest prints on its serial console once it is ready.
GUEST_READY_LINE = "somnus-guest: ready"

DIR_MODE = 0o755
FILE_MODE = 0o644

Log = Callable[[str], None]


class ImageError(PermanentError):
    """An image is missing, unknown, or could not be built; the message says what to do."""


@contextlib.contextmanager
def build_lock(images_dir: Path, name: str) -> Iterator[None]:
    """Serialise builds of one image across processes."""
    fd = os.open(images_dir / f".{name}.lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def remove_stale_staging(images_dir: Path, name: str) -> None:
    """Leftovers of builds that were killed; only called while holding the build lock."""
    for leftover in images_dir.glob(f".{name}.building-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    for leftover in images_dir.glob(f".{name}.old-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def publish(staging: Path, target: Path) -> None:
    """Move a finished build into place (replacing an incomplete one of the same recipe)."""
    old: Path | None = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rename(target, old / target.name)
    os.rename(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def make_dirs(path: Path) -> None:
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    for created in missing:
        os.chmod(created, DIR_MODE)


def make_readable(directory: Path) -> None:
    os.chmod(directory, DIR_MODE)
    for entry in directory.iterdir():
        os.chmod(entry, DIR_MODE if entry.is_dir() else FILE_MODE)


def run(argv: Sequence[str], *, what: str, cwd: Path | None = None) -> str:
    return run_bytes(argv, what=what, cwd=cwd).decode(errors="replace")


def run_bytes(argv: Sequence[str], *, what: str, cwd: Path | None = None) -> bytes:
    env = {**os.environ, "LC_ALL": "C"}
    try:
        result = subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, check=False)
    except FileNotFoundError as e:
        raise ImageError(f"cannot {what}: {argv[0]} is not installed (run scripts/setup-host.sh)") from e
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise ImageError(f"cannot {what}: {' '.join(argv)} exited {result.returncode}: {' / '.join(detail)}")
    return result.stdout
