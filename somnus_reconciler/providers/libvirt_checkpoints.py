"""Checkpoints and backup jobs of one libvirt domain, for `LibvirtProvider`.

Backups (`vm_backups`) leave libvirt checkpoints, each a dirty bitmap in the
qcow2 file. QEMU refuses to load an internal snapshot beside such bitmaps
("Device has active dirty bitmaps"), so a revert drops them first; and a
virtnbdbackup killed halfway leaves its backup job on the domain, which the
next backup ends.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import libvirt


def drop_checkpoints(dom: libvirt.virDomain, disk: Path) -> None:
    """Every checkpoint of `dom` with its bitmap: through QEMU while it runs, else the
    metadata through libvirt and the bitmaps from the qcow2 file `disk`."""
    if not dom.listAllCheckpoints(0):
        return
    if dom.isActive():
        for root in dom.listAllCheckpoints(libvirt.VIR_DOMAIN_CHECKPOINT_LIST_ROOTS):
            root.delete(libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_CHILDREN)
        return
    for checkpoint in dom.listAllCheckpoints(0):
        checkpoint.delete(libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(disk)],
                                     check=True, capture_output=True, text=True).stdout)
    for bitmap in info.get("format-specific", {}).get("data", {}).get("bitmaps", []):
        subprocess.run(["qemu-img", "bitmap", "--remove", str(disk), bitmap["name"]],
                       check=True, capture_output=True, text=True)


def end_stale_backup_job(dom: libvirt.virDomain) -> bool:
    """Abort the backup job on the running `dom` (under the apply lock, any backup job
    was left by a killed process); whether there was one."""
    if not dom.isActive() or dom.jobInfo()[0] == libvirt.VIR_DOMAIN_JOB_NONE:
        return False
    if dom.jobStats(0).get("operation") != libvirt.VIR_DOMAIN_JOB_OPERATION_BACKUP:
        return False
    dom.abortJob()
    return True
