"""Every view's exact output, human and JSON, from typed values: no daemon, no manifests on disk.

One test (or a few) per view of `somnus_reconciler/cli/*_view.py`; `get` and
`describe` are in test_status_views.py. The JSON shapes are those of docs/output.md.
"""

from __future__ import annotations

import datetime
import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from somnus_reconciler.cli import (
    apply_view,
    guest_view,
    history_view,
    image_view,
    plan_view,
    triage_view,
    validate_view,
    views,
)
from somnus_reconciler.engine.executor import StepResult
from somnus_reconciler.journal import Event
from somnus_reconciler.passes.converge import PassReport
from somnus_reconciler.passes.history_query import HistoryItem
from somnus_reconciler.passes.rollback import Guest, RollbackDone, SnapshotListing
from somnus_reconciler.planning.plan import Action, Change, Disruption, FieldChange, Plan
from somnus_reconciler.providers.agent_client import SoftRebootConfirmation
from somnus_reconciler.semantic.triage import Category, Triage
from somnus_reconciler.values.actual import Snapshot
from somnus_reconciler.values.desired import DesiredContainer, DesiredState, DesiredVm, VmResources
from somnus_reconciler.values.diagnostics import Diagnostic, InvalidInput, Source
from somnus_reconciler.values.model import PoolSpec

GiB = 2**30
SOURCE = Source(Path("m/ws.yaml"), 3)
VM = DesiredVm("coder-1", VmResources(2, 4 * GiB, 4, 8 * GiB), "debian-12", 20 * GiB, "debian", True, (),
               3, None, "gpu-dev", SOURCE)
BOX = DesiredContainer("notebook", "somnus/base:bookworm", None, 1.5, 2 * GiB, "none", (), ("hello",), None, SOURCE)
PLAN = Plan(
    changes=(
        Change("vm/coder-1", Action.CREATE, Disruption.NONE, desired=VM),
        Change("vm/coder-2", Action.UPDATE, Disruption.LIVE, (FieldChange("memory", 4 * GiB, 8 * GiB),), drift=True),
        Change("container/notebook", Action.PACK_INSTALL, Disruption.NONE, desired=BOX, pack="hello",
               reason="new"),
        Change("container/old", Action.DELETE, Disruption.RECREATE, reason="prune"),
    ),
    leftovers=("container/scratch",),
    conflicts=(),
)
AT = datetime.datetime(2024, 5, 1, 10, 15, 7).timestamp()  # local time, as the tables show it


def streams() -> tuple[io.StringIO, io.StringIO]:
    return io.StringIO(), io.StringIO()


# -- validate ---------------------------------------------------------------------------
DESIRED = DesiredState(vms={"coder-1": VM}, containers={"notebook": BOX}, packs={}, pool=PoolSpec())
INVALID = InvalidInput((Diagnostic(SOURCE, "vm/coder-1", "spec: unknown field 'profil'"),
                        Diagnostic(None, None, "no manifests found in x")))


def test_validate_human_counts_the_objects() -> None:
    out, err = streams()
    validate_view.ValidateHuman(out, err).valid(DESIRED)
    assert (out.getvalue(), err.getvalue()) == ("valid: 1 vm, 1 container, 0 pack\n", "")


def test_validate_json_counts_the_objects() -> None:
    out, err = streams()
    validate_view.ValidateJson(out, err).valid(DESIRED)
    assert out.getvalue() == '{\n  "errors": [],\n  "objects": 2\n}\n'


def test_invalid_input_human_lists_every_problem_on_stderr() -> None:
    out, err = streams()
    views.HumanView(out, err).invalid(INVALID)
    assert out.getvalue() == ""
    assert err.getvalue() == ("m/ws.yaml:3: vm/coder-1: spec: unknown field 'profil'\n"
                              "no manifests found in x\n"
                              "2 problem(s); nothing was changed.\n")


def test_invalid_input_json_lists_every_problem_on_stdout() -> None:
    out, err = streams()
    views.JsonView(out, err).invalid(INVALID)
    assert json.loads(out.getvalue()) == {"errors": [
        {"file": "m/ws.yaml", "line": 3, "address": "vm/coder-1", "message": "spec: unknown field 'profil'"},
        {"file": None, "line": None, "address": None, "message": "no manifests found in x"},
    ]}
    assert err.getvalue() == ""


# -- diff -------------------------------------------------------------------------------
def test_plan_human_is_one_line_per_change_then_leftovers_and_a_summary() -> None:
    out, err = streams()
    plan_view.PlanHuman(out, err).plan(PLAN)
    assert out.getvalue() == (
        "+   vm/coder-1               create (profile gpu-dev, 2 vcpu, 4Gi)\n"
        "~   vm/coder-2               memory 4Gi -> 8Gi                         (drift, live)\n"
        "+   container/notebook       pack hello (new)                          (snapshot first)\n"
        "-   container/old            delete                                    (prune)\n"
        "    container/scratch        owned but not declared: kept (--prune deletes it)\n"
        "Plan: 1 to create, 1 to change, 0 to replace, 1 to delete, 1 pack step(s).\n"
    )


def test_plan_human_in_sync() -> None:
    out, err = streams()
    plan_view.PlanHuman(out, err).plan(Plan((), (), ()))
    assert out.getvalue() == "No changes: actual state matches the manifests.\n"


def test_plan_json_has_the_documented_shape() -> None:
    out, err = streams()
    plan_view.PlanJson(out, err).plan(PLAN)
    assert json.loads(out.getvalue()) == {
        "inSync": False,
        "changes": [
            {"address": "vm/coder-1", "action": "create", "symbol": "+", "disruption": "none", "fields": [],
             "summary": "create (profile gpu-dev, 2 vcpu, 4Gi)", "drift": False},
            {"address": "vm/coder-2", "action": "update", "symbol": "~", "disruption": "live",
             "fields": [{"name": "memory", "before": 4 * GiB, "after": 8 * GiB}],
             "summary": "memory 4Gi -> 8Gi", "drift": True},
            {"address": "container/notebook", "action": "pack install", "symbol": "+", "disruption": "none",
             "fields": [], "summary": "pack hello (new)", "drift": False, "pack": "hello"},
            {"address": "container/old", "action": "delete", "symbol": "-", "disruption": "recreate",
             "fields": [], "summary": "delete", "drift": False},
        ],
        "leftovers": ["container/scratch"],
    }
    assert out.getvalue().startswith('{\n  "inSync": false,\n  "changes": [\n    {\n')


@pytest.mark.parametrize("view", [plan_view.PlanHuman, plan_view.PlanJson])
def test_an_unreachable_daemon_is_an_error_line_on_stderr_in_both_views(view: type[views.View]) -> None:
    out, err = streams()
    view(out, err).unreachable(("dockerd at unix:///x: refused",))
    assert out.getvalue() == ""
    assert err.getvalue() == "error: dockerd at unix:///x: refused; its objects were left out (retried with backoff)\n"


def test_the_view_is_chosen_by_the_output_option() -> None:
    assert isinstance(plan_view.for_output("json"), plan_view.PlanJson)
    assert isinstance(plan_view.for_output("text"), plan_view.PlanHuman)
    assert isinstance(validate_view.for_output("json"), validate_view.ValidateJson)
    assert isinstance(history_view.for_output("table"), history_view.HistoryTable)
    assert isinstance(triage_view.for_output("json"), triage_view.TriageJson)


def test_an_error_is_one_line_on_stderr() -> None:
    out, err = streams()
    views.View(out, err).error("vm/x not found")
    assert (out.getvalue(), err.getvalue()) == ("", "error: vm/x not found\n")


# -- apply ------------------------------------------------------------------------------
UPDATE, CREATE = PLAN.changes[1], PLAN.changes[0]
DONE = StepResult(CREATE, True, "done", 12.34)
FAILED = StepResult(UPDATE, False, "no route to host", 3.0, Category.NETWORK_FAILURE, attempts=3)


def test_plain_progress_is_a_line_per_step_start_event_and_end() -> None:
    out = io.StringIO()
    progress = apply_view.PlainProgress(out)
    progress.start(2)
    progress.step_started(CREATE)
    progress.step_event(CREATE, "ok: [guest] => apt")
    progress.step_finished(DONE)
    progress.step_finished(FAILED)
    progress.stop()
    assert out.getvalue() == (
        "vm/coder-1: create (profile gpu-dev, 2 vcpu, 4Gi) ...\n"
        "vm/coder-1:     ok: [guest] => apt\n"
        "vm/coder-1: done (12.3s)\n"
        "vm/coder-2: FAILED [NETWORK_FAILURE, 3 attempts]: no route to host (3.0s)\n"
    )


def test_terminal_progress_prints_a_mark_per_finished_step() -> None:
    out = io.StringIO()
    progress = apply_view.TerminalProgress(Console(file=out, width=100, color_system=None, force_interactive=True))
    progress.step_started(CREATE)
    progress.step_finished(DONE)
    progress.step_finished(FAILED)
    progress.stop()
    assert out.getvalue() == ("✓ vm/coder-1 (12.3s)\n"
                              "✗ vm/coder-2 [NETWORK_FAILURE, 3 attempts]: no route to host (3.0s)\n")


def test_apply_summary_after_steps_counts_done_and_failed_and_says_what_was_not_started() -> None:
    out, err = streams()
    report = PassReport(PLAN, recovered=("vm/coder-3: pack install x rolled back to s1",),
                        reported_drift=(UPDATE,), results=(DONE, FAILED), stopped=True)
    apply_view.ApplyHuman(out, err).summary(report)
    assert out.getvalue() == (  # what was recovered is shown before the plan, not here
        "drift (driftPolicy: warn, left alone): vm/coder-2: memory 4Gi -> 8Gi\n"
        "Interrupted: 2 step(s) not started.\n"
        "Apply finished: 1 step(s) done, 1 failed.\n"
    )


def test_what_a_recovery_did_is_a_line_each() -> None:
    out, err = streams()
    apply_view.ApplyHuman(out, err).recovered(("vm/a: pack install x rolled back to s1", "ended playbook 42"))
    assert out.getvalue() == "recovered: vm/a: pack install x rolled back to s1\nrecovered: ended playbook 42\n"


def test_a_declined_apply_has_no_step_summary() -> None:
    out, err = streams()
    apply_view.ApplyHuman(out, err).summary(PassReport(PLAN, declined=True))
    assert out.getvalue() == ""


def test_waiting_for_the_apply_lock_is_said_on_stderr() -> None:
    out, err = streams()
    apply_view.ApplyHuman(out, err).lock_wait("waiting for the apply lock (held by pid 42)")
    assert (out.getvalue(), err.getvalue()) == ("", "waiting for the apply lock (held by pid 42)\n")


# -- snapshots, rollback, soft-reboot -------------------------------------------------------
def test_snapshots_of_a_vm_with_their_description() -> None:
    out, err = streams()
    found = SnapshotListing(Guest("vm", "coder-1"), (Snapshot("somnus-pack-hello-20240501T101507", AT, "before hello"),
                                                    Snapshot("somnus-manual-1", AT + 60)))
    guest_view.SnapshotsHuman(out, err).snapshots(found)
    assert out.getvalue() == (
        f"{'somnus-pack-hello-20240501T101507':<56} 2024-05-01 10:15:07  before hello\n"
        f"{'somnus-manual-1':<56} 2024-05-01 10:16:07\n"
    )


def test_snapshots_of_a_container_show_no_description_and_none_is_said() -> None:
    out, err = streams()
    view = guest_view.SnapshotsHuman(out, err)
    view.snapshots(SnapshotListing(Guest("container", "box"), (Snapshot("somnus-pack-a-1", AT, "ignored"),)))
    view.snapshots(SnapshotListing(Guest("container", "box"), ()))
    assert out.getvalue() == f"{'somnus-pack-a-1':<56} 2024-05-01 10:15:07\nno snapshots of container/box\n"


def test_rollback_says_what_it_reverted_to() -> None:
    out, err = streams()
    guest_view.RollbackHuman(out, err).done(RollbackDone(Guest("vm", "coder-1"), "somnus-pack-a-1"))
    assert out.getvalue() == "vm/coder-1: reverted to somnus-pack-a-1\n"


@pytest.mark.parametrize(("confirmed", "line"), [
    (True, "vm/coder-1: soft reboot confirmed in 2.3s: 1 process(es) back\n"),
    (False, "vm/coder-1: soft reboot NOT confirmed in 2.3s: 1 process(es) back\n"),
])
def test_soft_reboot_says_whether_it_was_confirmed(confirmed: bool, line: str) -> None:
    out, err = streams()
    guest_view.SoftRebootHuman(out, err).result("vm/coder-1", SoftRebootConfirmation(confirmed, "1 process(es) back", 2.26))
    assert out.getvalue() == line


# -- history, triage, image build ---------------------------------------------------------
EVENTS = (Event(7, AT, "vm/coder-1", "pack install web", "rolled back", "no route\nto host", "NETWORK_FAILURE"),
          Event(8, AT + 1, "container/box", "create", "ok", "created"))


def test_history_table_is_a_log_with_the_category_in_the_message() -> None:
    out, err = streams()
    history_view.HistoryTable(out, err, width=120).events([HistoryItem(e) for e in EVENTS])
    assert out.getvalue() == (
        "TIME                 ADDRESS        ACTION            OUTCOME      MESSAGE\n"
        "2024-05-01 10:15:07  vm/coder-1     pack install web  rolled back  [NETWORK_FAILURE] no route to host\n"
        "2024-05-01 10:15:08  container/box  create            ok           created\n"
    )


def test_history_table_of_a_search_has_a_score_column_and_of_nothing_says_so() -> None:
    out, err = streams()
    view = history_view.HistoryTable(out, err, width=120)
    view.events([HistoryItem(EVENTS[1], 0.8125)])
    view.events([])
    assert out.getvalue() == (
        "SCORE  TIME                 ADDRESS        ACTION  OUTCOME  MESSAGE\n"
        "0.812  2024-05-01 10:15:08  container/box  create  ok       created\n"
        "no events\n"
    )


def test_history_json_has_utc_times_and_a_search_s_score() -> None:
    out, err = streams()
    history_view.HistoryJson(out, err).events([HistoryItem(EVENTS[0]), HistoryItem(EVENTS[1], 0.5)])
    at = datetime.datetime.fromtimestamp(AT, datetime.UTC)
    assert json.loads(out.getvalue()) == {"items": [
        {"id": 7, "at": at.isoformat(timespec="seconds"), "address": "vm/coder-1", "action": "pack install web",
         "outcome": "rolled back", "category": "NETWORK_FAILURE", "message": "no route\nto host"},
        {"id": 8, "at": (at + datetime.timedelta(seconds=1)).isoformat(timespec="seconds"),
         "address": "container/box", "action": "create", "outcome": "ok", "category": None, "message": "created",
         "score": 0.5},
    ]}


@pytest.mark.parametrize("view_class", [history_view.HistoryTable, history_view.HistoryJson])
def test_a_rebuilt_index_is_counted_on_stderr_when_search_results_follow(
        view_class: type[history_view.HistoryView]) -> None:
    out, err = streams()
    view = view_class(out, err)
    view.reindexed(12, results_follow=False)
    view.reindexed(3, results_follow=True)
    assert (out.getvalue(), err.getvalue()) == ("indexed 12 event(s)\n", "indexed 3 event(s)\n")


def test_triage_table_and_json() -> None:
    verdict = Triage(Category.DISK_FULL, 0.8421)
    table, json_out = io.StringIO(), io.StringIO()
    triage_view.TriageTable(table).verdict(verdict)
    triage_view.TriageJson(json_out).verdict(verdict)
    assert table.getvalue() == "DISK_FULL  0.842\n"
    assert json_out.getvalue() == '{"category": "DISK_FULL", "score": 0.8421}\n'


def test_image_build_progress() -> None:
    out, err = streams()
    view = image_view.ImageBuildHuman(out, err)
    view.building("tiny-linux")
    view.log("kernel: cached")
    view.built("tiny-linux", Path("/images/tiny-linux/v3"))
    view.building("somnus/busybox:latest")
    view.built("somnus/busybox:latest", None)
    assert out.getvalue() == ("building tiny-linux\n  kernel: cached\ntiny-linux: /images/tiny-linux/v3\n"
                              "building somnus/busybox:latest\nsomnus/busybox:latest: present\n")
