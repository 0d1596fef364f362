"""The engine: executes a Plan step by step: act -> verify -> record.

Called by `somnus apply` (and later by the watcher). Each change is one step.
A step that fails is recorded with its cause and the engine goes on with the
other resources; the caller turns any failure into exit code 1. The engine
talks to backends only through the provider protocols and reports progress
only through `EngineHook`s (rendering lives in views.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from somnus_reconciler import plan as plan_mod
from somnus_reconciler.desired import DesiredContainer, DesiredVm
from somnus_reconciler.journal import Journal
from somnus_reconciler.plan import Action, Change, Disruption, Plan
from somnus_reconciler.providers import ContainerProvider, ProviderError, VmProvider


@dataclass(frozen=True)
class StepResult:
    change: Change
    ok: bool
    message: str
    duration_s: float


class EngineHook(Protocol):
    def step_started(self, change: Change) -> None: ...
    def step_finished(self, result: StepResult) -> None: ...


class VerifyFailed(Exception):
    """The backend accepted the action but the object did not reach the desired state."""


class Engine:
    def __init__(
        self,
        vms: VmProvider,
        containers: ContainerProvider,
        journal: Journal,
        hooks: Sequence[EngineHook] = (),
        *,
        verify_timeout_s: float = 30.0,
    ) -> None:
        self._vms = vms
        self._containers = containers
        self._journal = journal
        self._hooks = hooks
        self._verify_timeout_s = verify_timeout_s

    def execute(self, plan: Plan) -> list[StepResult]:
        return [self._step(change) for change in plan.changes]

    def _step(self, change: Change) -> StepResult:
        for hook in self._hooks:
            hook.step_started(change)
        started = time.monotonic()
        try:
            if change.kind == "vm":
                self._act_vm(change)
            else:
                self._act_container(change)
            self._verify(change)
            result = StepResult(change, True, "done", time.monotonic() - started)
        except (ProviderError, VerifyFailed) as e:
            result = StepResult(change, False, str(e), time.monotonic() - started)
        self._journal.record(
            change.address, change.action.value, "ok" if result.ok else "failed", result.message
        )
        for hook in self._hooks:
            hook.step_finished(result)
        return result

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
        deadline = time.monotonic() + self._verify_timeout_s
        while (problem := check()) is not None:
            if time.monotonic() >= deadline:
                raise VerifyFailed(f"{change.address}: not converged after {change.action.value}: {problem}")
            time.sleep(0.5)


def _remaining(change: Change | None) -> str | None:
    if change is None:
        return None
    details = ", ".join(str(f) for f in change.fields)
    return f"still needs {change.action.value}" + (f" ({details})" if details else "")
