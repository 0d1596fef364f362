"""One apply pass as a function, shared by `somnus apply`, `watch` and `gitops`.

Under the apply lock: end the playbooks a killed apply left running and roll back
the steps it left open (`Engine.recover`), observe and plan (`prepare.prepare`,
which raises `InvalidInput` when the plan must not run), set aside drift on
objects with `driftPolicy: warn` (recorded as "drift reported", not acted on),
then execute. The caller renders: it sees the plan through `on_plan` (which may
decline, as a "no" at the prompt or --dry-run does) and the steps through engine
hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from somnus_reconciler.engine.executor import Engine, EngineHook, PackSteps, StepResult, describe_action
from somnus_reconciler.engine.pack_runner import AnsiblePackRunner
from somnus_reconciler.journal import ApplyLock, Journal
from somnus_reconciler.passes import prepare
from somnus_reconciler.planning import plan as plan_mod
from somnus_reconciler.planning.plan import Change, Plan
from somnus_reconciler.providers import backends as backends_mod
from somnus_reconciler.providers.backends import Backends
from somnus_reconciler.semantic.triage import FailureClassifier
from somnus_reconciler.values.desired import DesiredState


@dataclass(frozen=True)
class PassReport:
    plan: Plan  # what was to run: without the drift only reported
    recovered: tuple[str, ...] = ()
    reported_drift: tuple[Change, ...] = ()
    results: tuple[StepResult, ...] = ()
    declined: bool = False  # `on_plan` said no: nothing ran
    stopped: bool = False  # asked to stop before every step had run

    @property
    def failed(self) -> list[StepResult]:
        return [r for r in self.results if not r.ok]


@dataclass
class PassOptions:
    prune: bool = False
    check_packs: bool = False  # a resync: run the packs' verify commands to find drift
    revision: str | None = None  # recorded on every object a step converges (gitops)
    hooks: Sequence[EngineHook] = ()
    on_plan: Callable[[Plan], bool] = lambda plan: True
    should_stop: Callable[[], bool] = lambda: False
    on_lock_wait: Callable[[str], None] = lambda message: None
    classifier: FailureClassifier | None = field(default=None)


def run_pass(desired: DesiredState, backends: Backends, options: PassOptions) -> PassReport:
    """recover -> prepare -> set aside warn-only drift -> execute; see the module docstring."""
    settings = backends.settings
    with ApplyLock(settings.state_dir, on_wait=options.on_lock_wait):
        journal = Journal(settings.journal_path)
        try:
            runner = AnsiblePackRunner(backends.vms, settings.state_dir, cancel=options.should_stop)
            engine = Engine(
                backends.vms, backends.containers, journal, options.hooks,
                pack_steps=PackSteps(runner, desired.packs, desired.pack_fingerprints),
                classifier=options.classifier,
            )
            # A killed apply's playbook may still run: end it before its step is rolled back.
            recovered = (*runner.end_interrupted_runs(), *engine.recover(desired))
            plan, reported = plan_mod.split_drift(
                prepare.prepare(desired, backends, prune=options.prune, check_packs=options.check_packs)
            )
            for change in reported:
                _report_drift(journal, change)
            if not options.on_plan(plan):
                return PassReport(plan, recovered, reported, declined=True)
            results = tuple(engine.execute(plan, revision=options.revision, should_stop=options.should_stop))
        finally:
            journal.close()
    return PassReport(plan, recovered, reported, results, stopped=len(results) < len(plan.changes))


def _report_drift(journal: Journal, change: Change) -> None:
    """One "drift reported" event per finding: a resync that finds it again adds none."""
    message = (", ".join(str(f) for f in change.fields) or describe_action(change)) + " (driftPolicy: warn)"
    last = journal.recent(change.address, limit=1)
    if not (last and last[0].action == "drift" and last[0].outcome == "reported" and last[0].message == message):
        journal.record(change.address, "drift", "reported", message)
