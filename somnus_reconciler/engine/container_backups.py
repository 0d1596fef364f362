"""Container backups: the committed image and a tar of each named volume, outside dockerd.

`passes.backup_commands` takes, lists and restores them (`somnus backup|backups|restore
container/NAME`). Layout, under the container backup root (0700):

    <root>/<container>/<name>/image.tar          `docker save` of the committed image
    <root>/<container>/<name>/volume-<vol>.tar   each named volume, as its mount point's tar
    <root>/<container>/<name>/record.json        `ContainerBackupRecord`, written last

A directory without a record is a backup killed halfway: never listed, removed
by the next backup. A restore makes the container anew from the image with its
declared spec (as a rollback does), then puts each volume's tar back into it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from somnus_reconciler.engine.backups import chosen, digest_files
from somnus_reconciler.engine.snapshots import snapshot_name
from somnus_reconciler.providers.protocols import ContainerProvider
from somnus_reconciler.values.actual import ActualContainer
from somnus_reconciler.values.desired import DesiredContainer

_RECORD = "record.json"


@dataclass(frozen=True)
class ContainerBackupRecord:
    name: str
    container: str
    at: float
    snapshot: str  # the committed image's tag, which `image.tar` holds
    spec_hash: str
    volumes: tuple[tuple[str, str], ...]  # (volume, mount path)
    size: int  # bytes of the image tarball and the volume tars
    sha256: str  # of those files, image first, then the volumes in order
    reason: str


def container_records(root: Path, container: str) -> list[ContainerBackupRecord]:
    found = []
    for path in (root / container).glob(f"*/{_RECORD}"):
        try:
            data = json.loads(path.read_text())
            data["volumes"] = tuple(tuple(v) for v in data["volumes"])
            found.append(ContainerBackupRecord(**data))
        except (OSError, ValueError, TypeError, KeyError):
            continue
    return sorted(found, key=lambda r: (r.at, r.name))


@dataclass(frozen=True)
class ContainerBackups:
    containers: ContainerProvider
    root: Path
    clock: Callable[[], float] = time.time

    def records(self, container: str) -> list[ContainerBackupRecord]:
        return container_records(self.root, container)

    def take(self, container: ActualContainer, reason: str) -> ContainerBackupRecord:
        now = self.clock()
        snapshot = snapshot_name("backup", now)
        name = snapshot.removeprefix("somnus-backup-")
        where = self.root / container.name / name
        for directory in (self.root, self.root / container.name):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            directory.chmod(0o700)
        recorded = {r.name for r in self.records(container.name)}
        for left in (self.root / container.name).iterdir():
            if left.is_dir() and left.name not in recorded:
                shutil.rmtree(left, ignore_errors=True)  # a backup killed halfway
        where.mkdir(mode=0o700)
        self.containers.snapshot(container.name, snapshot, f"backup ({reason})")
        self.containers.save_snapshot(container.name, snapshot, where / "image.tar")
        volumes = tuple(self.containers.volume_mounts(container.name))
        files = [where / "image.tar"]
        for volume, mount in volumes:
            files.append(where / f"volume-{volume}.tar")
            self.containers.archive_path(container.name, mount, files[-1])
        size, digest = digest_files(files)
        record = ContainerBackupRecord(name, container.name, now, snapshot, container.spec_hash or "", volumes,
                                       size, digest, reason)
        partial = where / f".{_RECORD}.partial"
        partial.write_text(json.dumps(dataclasses.asdict(record), indent=2))
        partial.replace(where / _RECORD)
        return record

    def find(self, container: str, name: str | None) -> ContainerBackupRecord:
        """The backup `name` of `container` (None: the newest); ProviderError when there is none."""
        return chosen(self.records(container), name, f"container/{container}")

    def restore(self, record: ContainerBackupRecord, declared: DesiredContainer) -> None:
        """The container anew from the backup's image with its declared spec, then each
        volume emptied and filled from the backup."""
        where = self.root / record.container / record.name
        self.containers.load_snapshot(record.container, where / "image.tar")
        self.containers.restore(declared, record.snapshot)
        for volume, mount in record.volumes:
            self.containers.replace_path(record.container, mount, where / f"volume-{volume}.tar")

