"""The secret files step: snapshot -> write (agent or docker exec) -> verify -> record | roll back.

The plan's `Action.FILES` change names a guest whose secret files differ from what
its record says (`planning.plan.files_change`). The step writes the ones that
differ and removes the ones no longer declared, in one `guard.guarded` step: a
VM through its agent (`POST /files`, over the pinned TLS session), a container
through `docker exec`. It verifies what the guest reports (each file's SHA-256 and
mode against the value and mode declared) and records each file's keyed digest
(never its value) on the guest: in the VM's mark, or in the journal beside the
container's packs. Any failure rolls the guest back to the snapshot.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from somnus_reconciler.engine import retry
from somnus_reconciler.engine.guard import guarded
from somnus_reconciler.engine.snapshots import GuestSnapshots
from somnus_reconciler.planning.plan import Change
from somnus_reconciler.providers import agent_client
from somnus_reconciler.providers.protocols import ProviderError, as_provider_error
from somnus_reconciler.values.actual import WrittenFile
from somnus_reconciler.values.desired import DesiredContainer, DesiredVm, Revealed, SecretFile
from somnus_reconciler.values.errors import SomnusError
from somnus_reconciler.values.outcome import Outcome


@dataclass(frozen=True)
class FileSteps:
    """Runs `Action.FILES` changes; `state_dir` holds the VMs' agent tokens and certificates."""

    snapshots: GuestSnapshots
    state_dir: Path | None
    clock: Callable[[], float] = time.time

    def run(self, change: Change, on_event: Callable[[str], None]) -> retry.Attempt:
        want = change.desired
        assert isinstance(want, (DesiredVm, DesiredContainer))
        declared = dict(want.files.digests)
        planned = {f.name for f in change.fields if f.after != "absent"}
        writes = [(f, want.files.value(f.path)) for f in want.secret_files if f.path in planned]
        removes = [f.name for f in change.fields if f.after == "absent"]

        def act() -> retry.Attempt:
            try:
                on_event(f"writing {len(writes)} file(s), removing {len(removes)}")
                problem = _unverified(writes, self._write(change, writes, removes))
                if problem is not None:
                    return retry.failed(ProviderError(change.address, "verify files", problem))
                self._record(change, declared, removes)
            except ProviderError as e:
                return retry.failed(e)
            return retry.Attempt(Outcome.OK, f"{len(writes)} written, {len(removes)} removed, verified")

        return guarded(self.snapshots, change, "files", act, clock=self.clock)

    def _write(self, change: Change, writes: Sequence[tuple[SecretFile, Revealed]],
               removes: Sequence[str]) -> list[WrittenFile]:
        if change.kind == "container":
            return self.snapshots.containers.write_files(change.name, writes, removes)
        actual = self.snapshots.vms.observe_one(change.name)
        client = agent_client.for_vm(actual, self.state_dir) if actual and self.state_dir else None
        if client is None:
            raise ProviderError(change.address, "write files", "the VM has no agent to write them")
        try:
            return client.write_files(writes, removes)
        except SomnusError as e:  # unreachable (temporary: still booting), unproven or refused
            raise as_provider_error(change.address, "write files", e) from e

    def _record(self, change: Change, declared: dict[str, str], removes: Sequence[str]) -> None:
        if change.kind == "vm":
            self.snapshots.vms.write_files(change.name, tuple(declared.items()))
            return
        actual = self.snapshots.containers.observe_one(change.name)
        if actual is None:
            raise ProviderError(change.address, "record files", "the container is gone")
        journal = self.snapshots.journal
        for path, digest in declared.items():
            journal.set_container_file(change.name, actual.container_id, path, digest)
        for path in removes:
            journal.set_container_file(change.name, actual.container_id, path, None)


def _unverified(writes: Sequence[tuple[SecretFile, Revealed]], written: Sequence[WrittenFile]) -> str | None:
    """What the guest reports differing from what was sent (content or mode); None when all match."""
    reported = {w.path: w for w in written}
    for file, value in writes:
        got = reported.get(file.path)
        if got is None:
            return f"{file.path} was not reported written"
        if got.sha256 != hashlib.sha256(value.reveal().encode()).hexdigest():
            return f"{file.path} does not hold the value sent"
        if got.mode != file.mode:
            return f"{file.path} has mode {got.mode:o}, not {file.mode:o}"
    return None
