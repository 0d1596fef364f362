"""The engine: executes a Plan step by step.

Called by `somnus apply` (and later by the watcher). Each change is one step:
act -> verify -> record. A pack step changes a guest, so it is guarded:
snapshot -> act (playbook) -> verify (the pack's verify commands) -> record,
and on any failure the guest is rolled back to that snapshot. The step is open
in the journal from before the snapshot until it is recorded or rolled back, so a
process killed in between is rolled back by `recover` at the next start.

A step that fails is recorded with its cause and its triage category
(`triage`: NETWORK_FAILURE, DISK_FULL, ...). A temporary failure (NETWORK_FAILURE)
is retried with backoff: a pack step from a new snapshot, any other step after
re-planning its one object from a fresh observation. A permanent one is not.
Then the engine goes on with the other resources; the caller turns any failure
into exit code 1. The engine
talks to backends only through protocols and reports progress only through
`EngineHook`s (rendering lives in views.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from somnus_reconciler.journal import Journal, OpenStep
from somnus_reconciler.planning import plan as plan_mod
from somnus_reconciler.planning.plan import Action, Change, Disruption, Plan
from somnus_reconciler.providers.protocols import ContainerProvider, ProviderError, VmProvider
from somnus_reconciler.semantic.triage import Category, FailureClassifier
from somnus_reconciler.values.actual import ActualContainer, ActualVm, Snapshot
from somnus_reconciler.values.desired import DesiredContainer, DesiredPack, DesiredState, DesiredVm
from somnus_reconciler.values.errors import PermanentError, is_temporary
from somnus_reconciler.values.model import CapabilityPackSpec


@dataclass(frozen=True)
class StepResult:
    change: Change
    ok: bool
    message: str
    duration_s: float
    category: Category | None = None  # failures only
    attempts: int = 1


@dataclass(frozen=True)
class RetryPolicy:
    """How often a step that failed temporarily is tried, and how long to wait in between."""

    attempts: int = 3
    first_delay_s: float = 2.0
    factor: float = 4.0

    def delay_s(self, failed_attempt: int) -> float:
        return self.first_delay_s * self.factor ** (failed_attempt - 1)


class EngineHook(Protocol):
    def step_started(self, change: Change) -> None: ...
    def step_event(self, change: Change, line: str) -> None:
        """A line of progress inside a step (an Ansible task finished, ...)."""
    def step_finished(self, result: StepResult) -> None: ...


class VerifyFailed(PermanentError):
    """The backend accepted the action but the object did not reach the desired state."""


class PackOutcome(Protocol):
    @property
    def ok(self) -> bool: ...
    @property
    def failed_task(self) -> str | None: ...
    @property
    def message(self) -> str: ...


class PackRunner(Protocol):
    """Runs one pack's playbook in one guest (guests.AnsiblePackRunner)."""

    def run(self, guest: DesiredVm | DesiredContainer, pack: DesiredPack, action: str,
            on_event: Callable[[str], None]) -> PackOutcome: ...


class Snapshots(Protocol):
    """What both providers offer for snapshots."""

    def snapshot(self, name: str, snapshot: str, description: str) -> object: ...
    def snapshots(self, name: str) -> list[Snapshot]: ...
    def delete_snapshot(self, name: str, snapshot: str) -> None: ...


@dataclass
class PackSteps:
    """What pack steps need beyond the providers."""

    runner: PackRunner
    packs: dict[str, DesiredPack]
    fingerprints: dict[str, str]
    clock: Callable[[], float] = time.time
    applied: dict[str, dict[str, str]] = field(default_factory=dict)  # address -> pack -> fingerprint


def snapshot_name(step: str, at: float) -> str:
    """somnus-<step>-<timestamp> (SPEC section 6), usable as a libvirt name and a Docker tag."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(at)) + f"{int(at * 1000) % 1000:03d}Z"
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in step)
    return f"somnus-{safe}-{stamp}"


class Engine:
    def __init__(
        self,
        vms: VmProvider,
        containers: ContainerProvider,
        journal: Journal,
        hooks: Sequence[EngineHook] = (),
        *,
        pack_steps: PackSteps | None = None,
        verify_timeout_s: float = 30.0,
        boot_timeout_s: float = 300.0,
        classifier: FailureClassifier | None = None,
        retry: RetryPolicy = RetryPolicy(),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._vms = vms
        self._containers = containers
        self._journal = journal
        self._hooks = hooks
        self._packs = pack_steps
        self._verify_timeout_s = verify_timeout_s
        self._boot_timeout_s = boot_timeout_s
        self._classifier = classifier
        self._retry = retry
        self._sleep = sleep

    def execute(self, plan: Plan, *, revision: str | None = None,
                should_stop: Callable[[], bool] = lambda: False) -> list[StepResult]:
        """Run the plan's steps in order; `should_stop` is asked before each one (a
        watcher told to stop lets the current step finish or roll back, then returns).

        Each object a step converged is recorded in the journal as applied, with its
        spec hash and `revision` (gitops); that is how a later resync tells drift
        from intent for an object that has gone.
        """
        failed: set[str] = set()
        results = []
        for change in plan.changes:
            if should_stop():
                break
            if change.action.is_pack_step and change.address in failed:
                # The guest's own change failed: its packs wait for the next run.
                for hook in self._hooks:
                    hook.step_started(change)
                result = StepResult(change, False, f"skipped: {change.address} did not converge", 0.0)
                self._finish(change, result, "skipped")
            else:
                result = self._step(change)
                self._record_applied(result, revision)
            if not result.ok:
                failed.add(change.address)
            results.append(result)
        return results

    def _record_applied(self, result: StepResult, revision: str | None) -> None:
        change = result.change
        if change.drift:
            what = ", ".join(str(f) for f in change.fields) or describe_action(change)
            self._journal.record(change.address, "drift", "corrected" if result.ok else "failed",
                                 f"{what}: {result.message}", result.category.value if result.category else None)
        if not result.ok:
            return
        if change.action is Action.DELETE:
            self._journal.forget_applied(change.address)
        elif change.desired is not None:
            self._journal.set_applied(change.address, change.desired.spec_hash, revision)

    def _step(self, change: Change) -> StepResult:
        for hook in self._hooks:
            hook.step_started(change)
        started = time.monotonic()
        attempt = 1
        current: Change | None = change
        while True:
            if current is None:  # re-planned after a failure: nothing left to do
                ok, message, outcome, unreachable = True, "done", "ok", False
            elif change.action.is_pack_step:
                ok, message, outcome = self._pack_step(change)
                unreachable = False
            else:
                ok, message, outcome, unreachable = self._act_and_verify(current)
            # A daemon that went away is a temporary failure whatever the words say.
            category = None if ok else Category.NETWORK_FAILURE if unreachable else self._categorize(message)
            if category is None or not category.temporary or attempt >= self._retry.attempts:
                break
            delay = self._retry.delay_s(attempt)
            self._journal.record(change.address, _action_label(change), "retrying",
                                 f"attempt {attempt} of {self._retry.attempts}: {message}; "
                                 f"retrying in {delay:g}s", category.value)
            for hook in self._hooks:
                hook.step_event(change, f"{category.value}: attempt {attempt} failed, retrying in {delay:g}s")
            self._sleep(delay)
            attempt += 1
            if not change.action.is_pack_step:
                current = self._replan(change)
        result = StepResult(change, ok, message, time.monotonic() - started, category, attempt)
        self._finish(change, result, outcome)
        return result

    def _act_and_verify(self, change: Change) -> tuple[bool, str, str, bool]:
        """(ok, message, journal outcome, the backend was unreachable)."""
        try:
            if change.kind == "vm":
                self._act_vm(change)
            else:
                self._act_container(change)
            self._verify(change)
        except (ProviderError, VerifyFailed) as e:
            return False, str(e), "failed", is_temporary(e)
        return True, "done", "ok", False

    def _replan(self, change: Change) -> Change | None:
        """The change still needed for this one object, from a fresh observation."""
        try:
            if change.action is Action.DELETE:
                observe_one = self._vms.observe_one if change.kind == "vm" else self._containers.observe_one
                return change if observe_one(change.name) is not None else None
            if isinstance(change.desired, DesiredVm):
                return plan_mod.vm_change(change.desired, self._vms.observe_one(change.name))
            assert isinstance(change.desired, DesiredContainer)
            return plan_mod.container_change(change.desired, self._containers.observe_one(change.name))
        except ProviderError:
            return change  # still unreachable: the next attempt says so

    def _categorize(self, message: str) -> Category:
        if self._classifier is None:
            return Category.UNKNOWN
        return self._classifier.classify(message).category

    def _finish(self, change: Change, result: StepResult, outcome: str) -> None:
        category = result.category.value if result.category is not None else None
        self._journal.record(change.address, _action_label(change), outcome, result.message, category)
        for hook in self._hooks:
            hook.step_finished(result)

    # -- pack steps: snapshot -> act -> verify -> record | rollback -----------------
    def _snapshots(self, kind: str) -> Snapshots:
        return self._vms if kind == "vm" else self._containers

    def _pack_step(self, change: Change) -> tuple[bool, str, str]:
        """(ok, message, journal outcome: ok | failed | rolled back)."""
        steps = self._packs
        want = change.desired
        assert change.pack is not None and isinstance(want, (DesiredVm, DesiredContainer))
        if steps is None or (change.action is Action.PACK_INSTALL and change.pack not in steps.packs):
            return False, f"pack {change.pack} is not declared", "failed"
        applied = steps.applied.setdefault(change.address, dict(_applied_packs(change.actual)))
        action = "install" if change.action is Action.PACK_INSTALL else "uninstall"
        pack = steps.packs.get(change.pack) or DesiredPack(change.pack, _EMPTY_PACK_SPEC, want.source)
        snapshots = self._snapshots(change.kind)
        snapshot = snapshot_name(f"pack-{change.pack}", steps.clock())
        detail = json.dumps({"kind": change.kind, "name": want.name})
        step_id = self._journal.open_step(change.address, f"pack {action} {change.pack}", snapshot, detail)
        try:
            snapshots.snapshot(want.name, snapshot, f"before pack {action} {change.pack}")
        except ProviderError as e:
            self._journal.close_step(step_id, "failed")
            return False, f"no snapshot, so nothing was done: {e}", "failed"
        self._journal.step_phase(step_id, "snapshot taken")

        def on_event(line: str) -> None:
            for hook in self._hooks:
                hook.step_event(change, line)

        try:
            outcome = steps.runner.run(want, pack, action, on_event)
            ok, message = outcome.ok, _failure(outcome)
        except ProviderError as e:
            ok, message = False, str(e)
        self._journal.step_phase(step_id, "acted")
        if ok:
            try:
                if action == "install":
                    applied[change.pack] = steps.fingerprints.get(change.pack, "")
                else:
                    applied.pop(change.pack, None)
                self._record_packs(change.kind, want, change.pack, applied)
            except ProviderError as e:
                ok, message = False, f"installed, but the mark could not be written: {e}"
        if not ok:
            rolled = self._rollback(change.kind, want, snapshot)
            self._journal.close_step(step_id, "rolled back")
            self._prune_snapshots(change.kind, want.name, want)
            return False, f"{message}; {rolled}", "rolled back"
        self._journal.close_step(step_id, "done")
        self._prune_snapshots(change.kind, want.name, want)
        return True, f"done (snapshot {snapshot})", "ok"

    def _record_packs(self, kind: str, want: DesiredVm | DesiredContainer, pack: str,
                      applied: dict[str, str]) -> None:
        if kind == "vm":
            self._vms.write_packs(want.name, tuple(applied.items()))
            return
        actual = self._containers.observe_one(want.name)
        if actual is None:
            raise ProviderError(f"container/{want.name}", "record packs", "the container is gone")
        self._journal.set_container_pack(want.name, actual.container_id, pack, applied.get(pack))

    def _rollback(self, kind: str, want: DesiredVm | DesiredContainer, snapshot: str) -> str:
        try:
            if kind == "vm":
                self._vms.revert(want.name, snapshot)
            else:
                assert isinstance(want, DesiredContainer)
                new_id = self._containers.restore(want, snapshot)
                self._journal.move_container_packs(want.name, new_id)
        except ProviderError as e:
            return f"ROLLBACK FAILED ({e}); the snapshot {snapshot} is kept"
        return f"rolled back to {snapshot}"

    def _prune_snapshots(self, kind: str, name: str, want: DesiredVm | DesiredContainer | None) -> None:
        """Keep the newest `retain` snapshots, after a step whether it succeeded or was rolled back."""
        retain = want.snapshot_retain if isinstance(want, DesiredVm) else _DEFAULT_RETAIN
        snapshots = self._snapshots(kind)
        try:
            for old in snapshots.snapshots(name)[:-retain]:
                snapshots.delete_snapshot(name, old.name)
        except ProviderError:
            pass  # retention is housekeeping; the next successful step tries again

    def recover(self, desired: DesiredState) -> list[str]:
        """Roll back every step a killed process left open; returns what was done.

        A container is made anew from its snapshot with its declared spec, so
        `desired` is needed; one no longer declared keeps its snapshot for `rollback`.
        """
        return [self._recover_step(step, desired) for step in self._journal.open_steps()]

    def _recover_step(self, step: OpenStep, desired: DesiredState) -> str:
        detail = json.loads(step.detail or "{}")
        kind, name = detail.get("kind", ""), detail.get("name", "")
        message = f"{step.address}: {step.step} was interrupted (pid {step.pid})"
        if step.snapshot is None or not any(s.name == step.snapshot for s in self._snapshot_list(kind, name)):
            self._journal.close_step(step.id, "failed")
            outcome = f"{message}; its snapshot was never taken, nothing to roll back"
        else:
            try:
                if kind == "vm":
                    self._vms.revert(name, step.snapshot)
                elif name in desired.containers:
                    want = desired.containers[name]
                    self._journal.move_container_packs(name, self._containers.restore(want, step.snapshot))
                else:
                    raise ProviderError(step.address, "rollback", "no longer declared; use somnus rollback")
                self._journal.close_step(step.id, "rolled back")
                self._prune_snapshots(kind, name, desired.vms.get(name) if kind == "vm" else None)
                outcome = f"{message}; rolled back to {step.snapshot}"
            except ProviderError as e:
                outcome = f"{message}; rollback failed: {e}"
        self._journal.record(step.address, "recover", "rolled back" if "rolled back to" in outcome
                             else "failed", outcome)
        return outcome

    def _snapshot_list(self, kind: str, name: str) -> list[Snapshot]:
        try:
            return self._snapshots(kind).snapshots(name)
        except ProviderError:
            return []

    # -- act ----------------------------------------------------------------
    def _act_vm(self, change: Change) -> None:
        vms = self._vms
        want = change.desired
        if change.action is Action.DELETE:
            vms.delete(change.name)
            return
        assert isinstance(want, DesiredVm)
        if change.action is Action.CREATE:
            vms.create(want)
        elif change.action is Action.REPLACE:
            vms.delete(want.name)
            vms.create(want)
        elif change.action is Action.STOP:
            vms.stop(want.name)
            vms.redefine(want)
        elif change.action is Action.START:
            vms.redefine(want)
            vms.start(want.name)
        elif change.disruption is Disruption.LIVE:
            vms.resize_live(want)
            vms.write_mark(want)
        elif change.disruption is Disruption.RESTART:
            vms.redefine(want)
            vms.stop(want.name)
            vms.start(want.name)
        else:  # shut off, or only the mark differs
            vms.redefine(want)
            vms.write_mark(want)

    def _act_container(self, change: Change) -> None:
        containers = self._containers
        if change.action is Action.DELETE:
            containers.delete(change.name)
            return
        want = change.desired
        assert isinstance(want, DesiredContainer)
        if change.action is Action.REPLACE:
            containers.delete(want.name)
            containers.create(want)
        elif change.action is Action.CREATE:
            containers.create(want)
        elif change.action is Action.START:
            containers.start(want.name)

    # -- verify -------------------------------------------------------------
    def _verify(self, change: Change) -> None:
        """Re-observe the one object until it matches the desired state."""
        check: Callable[[], str | None]
        if change.action is Action.DELETE:
            observe_one = self._vms.observe_one if change.kind == "vm" else self._containers.observe_one
            check = lambda: None if observe_one(change.name) is None else "still exists"  # noqa: E731
        elif isinstance(change.desired, DesiredVm):
            want_vm = change.desired
            check = lambda: _remaining(plan_mod.vm_change(want_vm, self._vms.observe_one(want_vm.name)))  # noqa: E731
        else:
            assert isinstance(change.desired, DesiredContainer)
            want_c = change.desired
            check = lambda: _remaining(  # noqa: E731
                plan_mod.container_change(want_c, self._containers.observe_one(want_c.name))
            )
        # A guest that (re)boots reaches its declared memory only once its balloon
        # driver has loaded, which under TCG can take minutes on a busy host.
        boots = change.kind == "vm" and (change.action in (Action.CREATE, Action.REPLACE, Action.START)
                                         or change.disruption is Disruption.RESTART)
        deadline = time.monotonic() + (self._boot_timeout_s if boots else self._verify_timeout_s)
        while (problem := check()) is not None:
            if time.monotonic() >= deadline:
                raise VerifyFailed(f"{change.address}: not converged after {change.action.value}: {problem}")
            time.sleep(0.5)


_DEFAULT_RETAIN = 5  # containers have no snapshot policy in their spec, nor has an undeclared VM
_EMPTY_PACK_SPEC = CapabilityPackSpec()  # stands in for a pack removed from the manifests


def _action_label(change: Change) -> str:
    return change.action.value + (f" {change.pack}" if change.pack else "")


def describe_action(change: Change) -> str:
    """'start', 'pack install web-development (verify failed)': for journal messages."""
    return _action_label(change) + (f" ({change.reason})" if change.reason else "")


def _applied_packs(actual: ActualVm | ActualContainer | None) -> tuple[tuple[str, str], ...]:
    if isinstance(actual, ActualVm):
        return actual.mark.packs if actual.mark else ()
    if isinstance(actual, ActualContainer):
        return actual.packs
    return ()


def _failure(outcome: PackOutcome) -> str:
    if outcome.ok:
        return "done"
    task = f"task {outcome.failed_task!r} failed" if outcome.failed_task else "the playbook failed"
    return f"{task}: {outcome.message}" if outcome.message else task


def _remaining(change: Change | None) -> str | None:
    if change is None:
        return None
    details = ", ".join(str(f) for f in change.fields)
    return f"still needs {change.action.value}" + (f" ({details})" if details else "")
