"""The host's GPUs as the kernel shows them, for `planning.gpus` to admit `gpu:` against.

For VMs: every PCI device under `SYSFS/bus/pci/devices/ADDRESS` (its `class`, `vendor`,
`device` files and the driver its `driver` link names). For containers: the NVIDIA device
nodes (`/dev/nvidiaN`) and whether `nvidia-container-runtime-hook` is on the PATH, which
dockerd needs to have an `nvidia` device driver at all. `passes.prepare` reads this only when
a declared guest has a GPU; the roots are parameters, so that tests read a tree of their own.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from somnus_reconciler.values.gpu import NVIDIA_HOOK, HostGpus, PciDevice

SYSFS = Path("/sys")
DEV = Path("/dev")


def observe(sysfs: Path = SYSFS, dev: Path = DEV, search_path: str | None = None) -> HostGpus:
    """`search_path`: where to look for the hook (default: this process's PATH)."""
    nvidia = sorted(int(m.group(1)) for p in _entries(dev) if (m := re.fullmatch(r"nvidia(\d+)", p.name)))
    return HostGpus(pci_devices(sysfs), tuple(nvidia), shutil.which(NVIDIA_HOOK, path=search_path))


def pci_devices(sysfs: Path = SYSFS) -> tuple[PciDevice, ...]:
    """Every PCI device of the host, by address; one whose files cannot be read is left out."""
    found = []
    for entry in sorted(_entries(sysfs / "bus" / "pci" / "devices")):
        try:
            pci_class = int((entry / "class").read_text().strip(), 16)
            vendor, product = ((entry / name).read_text().strip().lower().removeprefix("0x")
                               for name in ("vendor", "device"))
        except (OSError, ValueError):
            continue
        found.append(PciDevice(entry.name.lower(), f"{vendor}:{product}", pci_class, _driver(entry)))
    return tuple(found)


def _driver(entry: Path) -> str | None:
    try:
        return Path(os.readlink(entry / "driver")).name
    except OSError:  # no link: no driver bound
        return None


def _entries(directory: Path) -> list[Path]:
    try:
        return list(directory.iterdir())
    except OSError:
        return []
