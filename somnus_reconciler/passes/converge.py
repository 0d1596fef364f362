"""One apply pass as a function, shared by `somnus apply`, `watch` and `gitops`.

Under the apply lock: end the playbooks a killed apply left running and roll back
the steps it left open (`Engine.recover`), observe and plan (`prepare.prepare`,
which raises `InvalidInput` when the plan must not run), set aside drift on
objects with `driftPolicy: warn` (recorded as "drift reported", not acted on),
then execute, and return a `PassReport`. The caller renders: it sees the plan
through `on_plan` (which may decline, as a "no" at the prompt or --dry-run does)
and the steps through engine hooks.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from somnus_reconciler.journal import ApplyLock, Journal
from somnus_reconciler.passes import prepare
from somnus_reconciler.planning import plan as plan_mod
from somnus_reconciler.planning.plan import Action, Change, Plan
from somnus_reconciler.providers.backends import Backends
from somnus_reconciler.values.desired import DesiredState
from somnus_reconciler.values.diagnostics import Diagnostics
from somnus_reconciler.values.outcome import Outcome

if TYPE_CHECKING:  # the engine is imported when a pass has something to do (`_engine`)
    from somnus_reconciler.engine.executor import Engine, EngineHook, StepResult
    from somnus_reconciler.engine.pack_runner import AnsiblePackRunner
    from somnus_reconciler.semantic.triage import FailureClassifier


class PassVerdict(enum.StrEnum):
    """How a pass ended: the "outcome" of a loop's "reconciled" event (docs/output.md).

    A pass's words, not a step's: how each step ended is an `Outcome`.
    """

    IN_SYNC = "in sync"
    CONVERGED = "converged"
    FAILED = "failed"  # a step failed (and was rolled back)
    STOPPED = "stopped"  # asked to stop before every step had run
    INVALID = "invalid"  # the manifests did not load or plan: nothing ran
    ERROR = "error"  # a daemon could not be reached

    @property
    def good(self) -> bool:
        """Valid and nothing failed (a step rolled back makes a gitops revision bad)."""
        return self in (PassVerdict.IN_SYNC, PassVerdict.CONVERGED)


@dataclass(frozen=True)
class PassReport:
    """What one pass did, returned by `run_pass` (to `apply`) and by `Loop.run_pass`.

    The loop also reports a pass that `run_pass` did not finish: its manifests were
    invalid (`invalid`) or a daemon could not be reached (`unavailable`); `apply`
    sees those as the exceptions `run_pass` raises. `verdict` says how it ended.
    """

    plan: Plan = field(default_factory=lambda: Plan(changes=(), leftovers=(), conflicts=()))
    recovered: tuple[str, ...] = ()
    reported_drift: tuple[Change, ...] = ()  # set aside from `plan`: only recorded
    results: tuple[StepResult, ...] = ()
    declined: bool = False  # `on_plan` said no: nothing ran
    stopped: bool = False  # asked to stop before every step had run
    invalid: tuple[str, ...] | None = None  # the diagnostics, when the manifests did not load or plan
    unavailable: str | None = None  # why, when a daemon could not be reached at all

    @property
    def failed(self) -> list[StepResult]:
        return [r for r in self.results if not r.ok]

    @property
    def verdict(self) -> PassVerdict:
        if self.invalid is not None:
            return PassVerdict.INVALID
        if self.unavailable is not None:
            return PassVerdict.ERROR
        if self.stopped:
            return PassVerdict.STOPPED
        if self.failed:
            return PassVerdict.FAILED
        if self.plan.unreachable:  # the reachable half went on
            return PassVerdict.ERROR
        return PassVerdict.CONVERGED if self.results else PassVerdict.IN_SYNC

    @property
    def errors(self) -> tuple[str, ...]:
        """What went wrong, one line each: diagnostics, the daemon's error, or each failed
        step (`address: message`) and each half of the plan left out."""
        if self.invalid is not None:
            return self.invalid
        if self.unavailable is not None:
            return (self.unavailable,)
        return (*(f"{r.change.address}: {r.message}" for r in self.failed), *self.plan.unreachable)


DEFAULT_PARALLELISM = 10  # as Terraform's -parallelism


@dataclass
class PassOptions:
    prune: bool = False
    replace: frozenset[str] = frozenset()  # VMs whose disk may be replaced (`apply --replace vm/NAME`)
    check_packs: bool = False  # a resync: run the packs' verify commands to find drift
    revision: str | None = None  # recorded on every object a step converges (gitops)
    hooks: Sequence[EngineHook] = ()
    on_recovered: Callable[[tuple[str, ...]], None] = lambda lines: None  # before the plan is shown
    on_plan: Callable[[Plan], bool] = lambda plan: True
    should_stop: Callable[[], bool] = lambda: False
    on_lock_wait: Callable[[str], None] = lambda message: None
    classifier: FailureClassifier | None = field(default=None)
    parallelism: int = DEFAULT_PARALLELISM  # objects converged at the same time


def _refuse_unconsented(plan: Plan, replace: frozenset[str]) -> None:
    """A VM's disk is replaced only when the user named the VM (`--replace vm/NAME`, as
    `terraform apply -replace=ADDR`); a prune is consented to by `--prune` itself."""
    problems = Diagnostics()
    for change in plan.changes:
        if change.kind == "vm" and change.action is Action.REPLACE and change.address not in replace:
            what = ", ".join(str(f) for f in change.fields) or change.reason
            problems.add(change.desired.source if change.desired else None, change.address,
                         f"{what} means a new disk: the VM's disk would be replaced (a backup is taken first); "
                         f"apply with --replace {change.address} to consent")
    problems.raise_if_any()


def run_pass(desired: DesiredState, backends: Backends, options: PassOptions) -> PassReport:
    """recover -> prepare -> set aside warn-only drift -> execute; see the module docstring."""
    settings = backends.settings
    lock = ApplyLock(settings.state_dir, on_wait=options.on_lock_wait)
    with lock, Journal(settings.journal_path) as journal:
        engine: Engine | None = None
        recovered: tuple[str, ...] = ()
        if journal.open_steps() or (settings.runs_dir.is_dir() and any(settings.runs_dir.iterdir())):
            # A killed apply's playbook may still run: end it before its step is rolled back.
            runner, engine = _engine(desired, backends, journal, options)
            recovered = (*runner.end_interrupted_runs(), *engine.recover(desired))
            if recovered:
                options.on_recovered(recovered)
        _drop_stale_listing(backends, lock, recovered=bool(recovered))
        plan, reported = plan_mod.split_drift(
            prepare.prepare(desired, backends, prune=options.prune, check_packs=options.check_packs)
        )
        _refuse_unconsented(plan, options.replace)
        for change in reported:
            _report_drift(journal, change)
        if not options.on_plan(plan):
            return PassReport(plan, recovered, reported, declined=True)
        if engine is None:  # built only now: a pass with nothing to do imports none of it
            engine = _engine(desired, backends, journal, options)[1]
        results = tuple(engine.execute(plan, revision=options.revision, should_stop=options.should_stop,
                                       parallelism=options.parallelism))
    return PassReport(plan, recovered, reported, results, stopped=len(results) < len(plan.changes))


def _engine(desired: DesiredState, backends: Backends, journal: Journal,
            options: PassOptions) -> tuple[AnsiblePackRunner, Engine]:
    from somnus_reconciler.engine.backups import VmBackups
    from somnus_reconciler.engine.container_backups import ContainerBackups
    from somnus_reconciler.engine.executor import Engine, PackSteps
    from somnus_reconciler.engine.pack_runner import AnsiblePackRunner

    settings = backends.settings
    runner = AnsiblePackRunner(backends.vms, settings.state_dir, settings.runs_dir, cancel=options.should_stop)
    return runner, Engine(
        backends.vms, backends.containers, journal, options.hooks,
        pack_steps=PackSteps(runner, desired.packs, desired.pack_fingerprints),
        classifier=options.classifier, state_dir=settings.state_dir,
        backups=VmBackups(backends.vms, settings.backups_dir, settings.state_dir, settings.libvirt_uri),
        container_backups=ContainerBackups(backends.containers, settings.container_backups_dir),
    )


def _drop_stale_listing(backends: Backends, lock: ApplyLock, *, recovered: bool) -> None:
    """A container listing begun before this process held the lock (`docker_listing`) is
    used only if no other command could have changed a container since it began: every
    change is made under the lock, and the last holder let go before the listing began."""
    if recovered or lock.waited or lock.previous_release is None:
        backends.containers.drop_listing()
    else:
        backends.containers.drop_listing(unless_started_after=lock.previous_release)


def _report_drift(journal: Journal, change: Change) -> None:
    """One "drift reported" event per finding: a resync that finds it again adds none."""
    from somnus_reconciler.engine.executor import describe_action

    message = (", ".join(str(f) for f in change.fields) or describe_action(change)) + " (driftPolicy: warn)"
    last = journal.recent(change.address, limit=1)
    if not (last and last[0].action == "drift" and last[0].outcome == Outcome.REPORTED
            and last[0].message == message):
        journal.record(change.address, "drift", Outcome.REPORTED, message)
