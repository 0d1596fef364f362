"""The files a capability pack's run reads, and their fingerprint.

`pack_fingerprint` hashes a pack's spec and every playbook file a run of it reads;
`passes.prepare.load_desired` computes it for every declared pack, the engine records
it in the ownership mark, and `planning.plan` compares the two, so that a changed
pack or playbook is installed again. `providers.ansible_provider` runs the same files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Protocol

from somnus_reconciler.values.desired import DesiredPack

# playbooks/ sits at the repository root, beside capability_packs/.
PLAYBOOKS_DIR = Path(__file__).resolve().parents[2] / "playbooks"


class _Digest(Protocol):
    def update(self, data: bytes, /) -> None: ...


def pack_playbook_path(pack: DesiredPack) -> Path | None:
    """The pack's own playbook, resolved relative to the manifest that declares it."""
    if not pack.spec.playbook:
        return None
    return (pack.source.file.parent / pack.spec.playbook).resolve()


def pack_fingerprint(pack: DesiredPack) -> str:
    """Hash of the pack's spec and of every playbook file a run of it reads.

    The generic playbooks (pack.yml, its task files, noop.yml) count for every
    pack: a change to them re-runs installed packs, which is the safe side.
    """
    digest = hashlib.sha256()
    spec = json.dumps(pack.spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    _feed(digest, "spec", spec.encode())
    own = pack_playbook_path(pack)
    if own is not None:
        _feed(digest, "playbook", own.read_bytes() if own.is_file() else b"\0missing")
    for path in sorted(PLAYBOOKS_DIR.rglob("*.yml")):
        _feed(digest, str(path.relative_to(PLAYBOOKS_DIR)), path.read_bytes())
    return digest.hexdigest()[:16]


def _feed(digest: _Digest, label: str, data: bytes) -> None:
    # Length-prefixed, so that moving bytes between parts changes the hash.
    digest.update(f"{label}\0{len(data)}\0".encode())
    digest.update(data)
