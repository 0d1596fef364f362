"""A pack step, guarded by a snapshot: snapshot -> act (playbook) -> record | roll back.

The executor calls `SnapshotGuard.run` for every pack install or uninstall;
`guard.guarded` takes the snapshot, keeps the step open in the journal, and
rolls back on failure.

The playbook runs through a `PackRunner` (engine.pack_runner.AnsiblePackRunner).
What it reports a guest did wrong (a failed task) is classified by triage; an
error raised on the host (no snapshot, no SSH, no mark written) is judged by its
type (see `retry`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from somnus_reconciler.engine import retry
from somnus_reconciler.engine.guard import guarded
from somnus_reconciler.engine.snapshots import GuestSnapshots
from somnus_reconciler.planning.plan import Action, Change
from somnus_reconciler.providers.protocols import ProviderError
from somnus_reconciler.semantic.triage import FailureClassifier
from somnus_reconciler.values.actual import ActualContainer, ActualVm
from somnus_reconciler.values.desired import DesiredContainer, DesiredPack, DesiredVm
from somnus_reconciler.values.errors import PermanentError
from somnus_reconciler.values.model import CapabilityPackSpec
from somnus_reconciler.values.outcome import Outcome

_EMPTY_PACK_SPEC = CapabilityPackSpec()  # stands in for a pack removed from the manifests


class PackRun(Protocol):
    """How a pack's playbook run ended (providers.ansible_results.PackRunResult)."""

    @property
    def ok(self) -> bool: ...
    @property
    def failed_task(self) -> str | None: ...
    @property
    def message(self) -> str: ...


class PackRunner(Protocol):
    """Runs one pack's playbook in one guest (pack_runner.AnsiblePackRunner)."""

    def run(self, guest: DesiredVm | DesiredContainer, pack: DesiredPack, action: str,
            on_event: Callable[[str], None]) -> PackRun: ...


@dataclass
class PackSteps:
    """What pack steps need beyond the providers."""

    runner: PackRunner
    packs: dict[str, DesiredPack]
    fingerprints: dict[str, str]
    clock: Callable[[], float] = time.time
    applied: dict[str, dict[str, str]] = field(default_factory=dict)  # address -> pack -> fingerprint


@dataclass(frozen=True)
class SnapshotGuard:
    """Runs pack steps, each between a snapshot and its record or rollback; without
    `steps` (no packs to hand) every pack step fails as undeclared."""

    snapshots: GuestSnapshots
    steps: PackSteps | None
    classifier: FailureClassifier | None

    def run(self, change: Change, on_event: Callable[[str], None]) -> retry.Attempt:
        """One try of the pack step `change`; `on_event` gets the playbook's progress lines."""
        want = change.desired
        assert change.pack is not None and isinstance(want, (DesiredVm, DesiredContainer))
        steps = self.steps
        if steps is None or (change.action is Action.PACK_INSTALL and change.pack not in steps.packs):
            return retry.failed(PermanentError(f"pack {change.pack} is not declared"))
        action = "install" if change.action is Action.PACK_INSTALL else "uninstall"

        def act() -> retry.Attempt:
            failure = self._act(steps, change, want, action, on_event) or self._record(steps, change, want, action)
            return failure or retry.Attempt(Outcome.OK, "done")

        return guarded(self.snapshots, change, f"pack {action} {change.pack}", act,
                       slug=f"pack-{change.pack}", clock=steps.clock)

    def _act(self, steps: PackSteps, change: Change, want: DesiredVm | DesiredContainer, action: str,
             on_event: Callable[[str], None]) -> retry.Attempt | None:
        """Run the playbook; None when it succeeded."""
        assert change.pack is not None
        pack = steps.packs.get(change.pack) or DesiredPack(change.pack, _EMPTY_PACK_SPEC, want.source)
        if action == "uninstall":  # what the guest's other declared packs install stays
            pack = pack.sparing(steps.packs[name] for name in want.packs if name in steps.packs)
        try:
            outcome = steps.runner.run(want, pack, action, on_event)
        except ProviderError as e:
            return retry.failed(e)
        return None if outcome.ok else retry.failed_in_guest(_failure(outcome), self.classifier)

    def _record(self, steps: PackSteps, change: Change, want: DesiredVm | DesiredContainer,
                action: str) -> retry.Attempt | None:
        """Mark the pack installed (or not) on the guest; None when that worked."""
        assert change.pack is not None
        applied = steps.applied.setdefault(change.address, dict(_applied_packs(change.actual)))
        if action == "install":
            applied[change.pack] = steps.fingerprints.get(change.pack, "")
        else:
            applied.pop(change.pack, None)
        try:
            self._write_packs(change.kind, want, change.pack, applied)
        except ProviderError as e:
            return retry.failed(e, message=f"installed, but the mark could not be written: {e}")
        return None

    def _write_packs(self, kind: str, want: DesiredVm | DesiredContainer, pack: str,
                     applied: dict[str, str]) -> None:
        if kind == "vm":
            self.snapshots.vms.write_packs(want.name, tuple(applied.items()))
            return
        actual = self.snapshots.containers.observe_one(want.name)
        if actual is None:
            raise ProviderError(f"container/{want.name}", "record packs", "the container is gone")
        self.snapshots.journal.set_container_pack(want.name, actual.container_id, pack, applied.get(pack))


def _applied_packs(actual: ActualVm | ActualContainer | None) -> tuple[tuple[str, str], ...]:
    if isinstance(actual, ActualVm):
        return actual.mark.packs if actual.mark else ()
    if isinstance(actual, ActualContainer):
        return actual.packs
    return ()


def _failure(outcome: PackRun) -> str:
    task = f"task {outcome.failed_task!r} failed" if outcome.failed_task else "the playbook failed"
    return f"{task}: {outcome.message}" if outcome.message else task
