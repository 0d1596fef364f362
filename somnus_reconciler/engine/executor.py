"""The engine: executes a Plan step by step; `somnus apply`, `watch` and `gitops`
run it through passes.converge.

Objects are converged at the same time, up to `parallelism` of them, each in a
thread of its own; one object's steps keep their plan order. What the threads
share is made for it: the journal serializes its statements, hooks are called one
at a time, each thread has its own Docker client, and libvirt's connection is
thread-safe.

Each change is one step, tried by its own module: a VM or container change by
`resource_step` (act -> verify -> settle), a pack step by `pack_step`, secret
files by `file_step`. A step
that changes a guest (a pack step, a VM's restart or stop, a container's
recreate) runs inside `guard.guarded`: snapshot -> act -> record | roll back.
Every step ends in the journal with its outcome, message
and, for a failure, a triage category.

A failed try is tried again, with the `RetryPolicy`'s backoff, only when it was
temporary (see `retry`: a `TemporaryError` by its type, a guest's failure by
its triage category): a pack step from a new snapshot; any other step after
re-planning its one object from a fresh observation (from a new snapshot too
when it changes a guest). The engine then goes on
with the other resources; the caller turns any failure into exit code 1.
Steps left open by a killed process are rolled back by `recover` (`recovery`).

The engine talks to backends only through protocols and reports progress only
through `EngineHook`s (rendering lives in cli/: `apply_view` for apply, `loop_views` for
watch and gitops).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from somnus_reconciler.engine import recovery
from somnus_reconciler.engine.backups import VmBackups
from somnus_reconciler.engine.container_backups import ContainerBackups
from somnus_reconciler.engine.file_step import FileSteps
from somnus_reconciler.engine.guard import guarded
from somnus_reconciler.engine.pack_step import PackSteps, SnapshotGuard
from somnus_reconciler.engine.resource_step import ResourceSteps, changes_guest
from somnus_reconciler.engine.retry import DONE, Attempt, RetryPolicy
from somnus_reconciler.engine.snapshots import GuestSnapshots
from somnus_reconciler.journal import Journal
from somnus_reconciler.planning.plan import Action, Change, Plan
from somnus_reconciler.providers.protocols import ContainerProvider, VmProvider
from somnus_reconciler.semantic.triage import Category, FailureClassifier
from somnus_reconciler.values.desired import DesiredState
from somnus_reconciler.values.outcome import Outcome

# passes.converge builds an Engine with these.
__all__ = ["Engine", "EngineHook", "PackSteps", "RetryPolicy", "StepResult", "describe_action"]

_DEFAULT_RETRY = RetryPolicy()


@dataclass(frozen=True)
class StepResult:
    change: Change
    ok: bool
    message: str
    duration_s: float
    category: Category | None = None  # failures only
    attempts: int = 1


class EngineHook(Protocol):
    def step_started(self, change: Change) -> None: ...
    def step_event(self, change: Change, line: str) -> None:
        """A line of progress inside a step (an Ansible task finished, ...)."""
    def step_finished(self, result: StepResult) -> None: ...


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
        state_dir: Path | None = None,
        backups: VmBackups | None = None,
        container_backups: ContainerBackups | None = None,
        classifier: FailureClassifier | None = None,
        retry: RetryPolicy = _DEFAULT_RETRY,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._journal = journal
        self._hooks = hooks
        self._hooks_lock = threading.Lock()  # hooks are called from the steps' threads, one at a time
        self._resources = ResourceSteps(vms, containers, verify_timeout_s, boot_timeout_s, state_dir, backups,
                                        container_backups)
        self._snapshots = GuestSnapshots(vms, containers, journal)
        self._packs = SnapshotGuard(self._snapshots, pack_steps, classifier)
        self._files = FileSteps(self._snapshots, state_dir)
        self._retry = retry
        self._sleep = sleep

    def execute(self, plan: Plan, *, revision: str | None = None,
                should_stop: Callable[[], bool] = lambda: False, parallelism: int = 1) -> list[StepResult]:
        """Run the plan's steps; `should_stop` is asked before each one (a loop or an
        apply told to stop lets the steps under way finish or roll back, then returns).

        The steps of one object run in plan order (its own change, its files, its packs
        in `requires` order); up to `parallelism` objects are converged at the same time.
        A failed step stops only its own object's later guest steps. Results come back
        in plan order.

        Each object a step converged is recorded in the journal as applied, with its
        spec hash and `revision` (gitops); that is how a later resync tells drift
        from intent for an object that has gone.
        """
        objects: dict[str, list[tuple[int, Change]]] = {}
        for index, change in enumerate(plan.changes):
            objects.setdefault(change.address, []).append((index, change))

        def converge(steps: list[tuple[int, Change]]) -> list[tuple[int, StepResult]]:
            return self._converge_object(steps, revision, should_stop)

        if parallelism <= 1 or len(objects) <= 1:
            done = [result for steps in objects.values() for result in converge(steps)]
        else:
            with ThreadPoolExecutor(max_workers=min(parallelism, len(objects)),
                                    thread_name_prefix="somnus-step") as pool:
                done = [result for results in pool.map(converge, objects.values()) for result in results]
        return [result for _, result in sorted(done, key=lambda item: item[0])]

    def _converge_object(self, steps: list[tuple[int, Change]], revision: str | None,
                         should_stop: Callable[[], bool]) -> list[tuple[int, StepResult]]:
        """One object's steps in order; after a failure its guest steps are skipped."""
        failed = False
        results = []
        for index, change in steps:
            if should_stop():
                break
            if change.action.is_guest_step and failed:
                result = self._skip(change)  # the guest's own change failed: its files and packs wait
            else:
                result = self._step(change)
                self._record_applied(result, revision)
            failed = failed or not result.ok
            results.append((index, result))
        return results

    def recover(self, desired: DesiredState) -> list[str]:
        """Roll back every step a killed process left open; returns what was done."""
        return recovery.recover(self._snapshots, desired)

    def _step(self, change: Change) -> StepResult:
        """Try the step, and again while it fails temporarily and attempts remain."""
        self._started(change)
        started = time.monotonic()
        tries = 1
        current: Change | None = change
        while True:
            attempt = self._try(change, current)
            if attempt.retry_after_s is None or tries >= self._retry.attempts:
                break
            self._wait_to_retry(change, attempt, tries)
            tries += 1
            if not change.action.is_guest_step:
                current = self._resources.replan(change)
        result = StepResult(change, attempt.ok, attempt.message, time.monotonic() - started,
                            attempt.category, tries)
        self._finish(result, attempt.outcome)
        return result

    def _try(self, change: Change, current: Change | None) -> Attempt:
        if current is None:  # re-planned after a failure: nothing left to do
            return DONE
        if change.action.is_pack_step:
            return self._packs.run(change, lambda line: self._event(change, line))
        if change.action is Action.FILES:
            return self._files.run(change, lambda line: self._event(change, line))
        def act() -> Attempt:
            return self._resources.attempt(current, lambda line: self._event(change, line))

        guarded_as = changes_guest(current)
        if guarded_as is None:
            return act()
        if current.kind != "vm":
            return guarded(self._snapshots, current, guarded_as, act)
        vms, name = self._snapshots.vms, current.name
        return guarded(self._snapshots, current, guarded_as, act,
                       shut_down=lambda: vms.stop(name), after_rollback=lambda: vms.start(name))

    def _wait_to_retry(self, change: Change, attempt: Attempt, tries: int) -> None:
        """Record the failed try, tell the hooks, and sleep the backoff (at least the error's delay)."""
        delay = max(self._retry.delay_s(tries), attempt.retry_after_s or 0.0)
        category = attempt.category or Category.UNKNOWN
        self._journal.record(change.address, _action_label(change), Outcome.RETRYING,
                             f"attempt {tries} of {self._retry.attempts}: {attempt.message}; "
                             f"retrying in {delay:g}s", category.value)
        self._event(change, f"{category.value}: attempt {tries} failed, retrying in {delay:g}s")
        self._sleep(delay)

    def _skip(self, change: Change) -> StepResult:
        self._started(change)
        result = StepResult(change, False, f"skipped: {change.address} did not converge", 0.0)
        self._finish(result, Outcome.SKIPPED)
        return result

    def _event(self, change: Change, line: str) -> None:
        with self._hooks_lock:
            for hook in self._hooks:
                hook.step_event(change, line)

    def _finish(self, result: StepResult, outcome: Outcome) -> None:
        category = result.category.value if result.category is not None else None
        self._journal.record(result.change.address, _action_label(result.change), outcome, result.message, category,
                             started_at=time.time() - result.duration_s)
        with self._hooks_lock:
            for hook in self._hooks:
                hook.step_finished(result)

    def _started(self, change: Change) -> None:
        with self._hooks_lock:
            for hook in self._hooks:
                hook.step_started(change)

    def _record_applied(self, result: StepResult, revision: str | None) -> None:
        change = result.change
        if change.drift:
            what = ", ".join(str(f) for f in change.fields) or describe_action(change)
            self._journal.record(change.address, "drift", Outcome.CORRECTED if result.ok else Outcome.FAILED,
                                 f"{what}: {result.message}", result.category.value if result.category else None)
        if not result.ok:
            return
        if change.action is Action.DELETE:
            self._journal.forget_applied(change.address)
        elif change.desired is not None:
            self._journal.set_applied(change.address, change.desired.spec_hash, revision)


def _action_label(change: Change) -> str:
    return change.action.value + (f" {change.pack}" if change.pack else "")


def describe_action(change: Change) -> str:
    """'start', 'pack install web-development (verify failed)': for journal messages."""
    return _action_label(change) + (f" ({change.reason})" if change.reason else "")
