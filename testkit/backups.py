"""What a bench's prune leaves behind on purpose: the backups taken before it (issue 12).

A bench that prunes its VMs and containers removes their backups with
`remove_backups(prefix)` afterwards, as the integration tests' `remove_objects` does.
"""

from __future__ import annotations

import shutil

from somnus_reconciler import settings as settings_mod


def remove_backups(prefix: str) -> None:
    """Every VM and container backup of objects named `prefix*` (a link to a `backup.dir` goes alone)."""
    settings = settings_mod.resolve()
    for root in (settings.backups_dir, settings.container_backups_dir):
        for taken in root.glob(f"{prefix}*") if root.is_dir() else ():
            if taken.is_symlink():
                taken.unlink()
            else:
                shutil.rmtree(taken, ignore_errors=True)
