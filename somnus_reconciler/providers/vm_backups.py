"""VM backups outside the disk file, through virtnbdbackup and virtnbdrestore.

`engine.backups` decides when, what level and where; this adapter runs Debian's
virtnbdbackup tools and maps their failures into `ProviderError` once. A chain
is one directory that virtnbdbackup fills: a full backup (of a running domain,
with a libvirt checkpoint; of a stopped one a plain copy, which starts no chain)
and the incrementals after it (only the blocks changed since the last
checkpoint). The data travels over a unix socket (NBD), never a network address.
`restore_disk` rebuilds one standalone qcow2 from a chain, up to a checkpoint.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from somnus_reconciler.providers.protocols import ProviderError

ROOT_DISK = "vda"  # providers.domain_xml: the VM's own disk; the seed disk vdb is never backed up
_TIMEOUT_S = 6 * 3600.0


def _run(address: str, action: str, argv: list[str]) -> None:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ProviderError(address, action, str(e)) from e
    if result.returncode != 0:
        lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        raise ProviderError(address, action, " / ".join(lines[-3:]) or f"{argv[0]} exited {result.returncode}")


def backup(domain: str, chain_dir: Path, level: str, *, uri: str) -> list[Path]:
    """Run one backup of `level` ("full", "inc" or "copy") of `domain` into `chain_dir`;
    returns the data files it wrote."""
    before = set(chain_dir.glob("*.data")) if chain_dir.exists() else set()
    chain_dir.parent.mkdir(parents=True, exist_ok=True)
    _run(f"vm/{domain}", f"{level} backup", [
        # The scratch files (blocks the guest overwrites while the backup runs) stay in
        # virtnbdbackup's default /var/tmp: QEMU, not root, writes them, and the backup
        # directory is root's alone.
        "virtnbdbackup", "-U", uri, "-d", domain, "-l", level, "-o", str(chain_dir), "-i", ROOT_DISK,
        "--noprogress",
    ])
    return sorted(set(chain_dir.glob("*.data")) - before)


def checkpoints(chain_dir: Path, domain: str) -> list[str]:
    """The checkpoints of the chain, oldest first ([] for a copy)."""
    try:
        found = json.loads((chain_dir / f"{domain}.cpt").read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        raise ProviderError(f"vm/{domain}", "read checkpoints", f"{chain_dir}: {e}") from e
    return [str(name) for name in found] if isinstance(found, list) else []


def restore_disk(domain: str, chain_dir: Path, target: Path, *, until: str | None, uri: str) -> None:
    """A standalone qcow2 at `target` holding the disk as it was at checkpoint `until`
    (None: the chain's last backup); `target` is replaced only once it is complete."""
    work = Path(tempfile.mkdtemp(prefix=".restore-", dir=target.parent))
    try:
        argv = ["virtnbdrestore", "-U", uri, "-i", str(chain_dir), "-o", str(work / "out"), "-d", ROOT_DISK,
                "--noprogress", "-L", str(work / "restore.log")]
        _run(f"vm/{domain}", "restore", argv + (["-u", until] if until else []))
        produced = [p for p in (work / "out").iterdir() if p.is_file() and p.suffix not in (".xml", ".log")]
        if len(produced) != 1:
            raise ProviderError(f"vm/{domain}", "restore", f"expected one disk image, found {produced}")
        produced[0].chmod(0o644)
        produced[0].replace(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
