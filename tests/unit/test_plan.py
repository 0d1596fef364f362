"""plan.compute: every kind of change, from hand-built desired and actual values."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from somnus_reconciler.planning import plan
from somnus_reconciler.planning.plan import Action, Disruption, FieldChange
from somnus_reconciler.values.actual import ActualContainer, ActualState, ActualVm, PowerState, VmMark
from somnus_reconciler.values.desired import DesiredContainer, DesiredState, DesiredVm, VmResources
from somnus_reconciler.values.diagnostics import Source
from somnus_reconciler.values.model import PoolSpec

GiB = 2**30


def want_vm(name: str = "coder-1", *, running: bool = True, vcpus: int = 2, memory: int = 4 * GiB,
            max_vcpus: int = 4, max_memory: int = 8 * GiB, image: str = "debian-12",
            disk_size: int = 20 * GiB, os_family: str = "debian", owner: str | None = "alice",
            packs: tuple[str, ...] = ()) -> DesiredVm:
    return DesiredVm(
        name=name, resources=VmResources(vcpus, memory, max_vcpus, max_memory), image=image,
        disk_size=disk_size, os_family=os_family, running=running, packs=packs,
        snapshot_retain=5, owner=owner, profile=None, source=Source(Path("vms.yaml"), 4),
    )


def have_vm(want: DesiredVm, *, running: bool | None = None, managed: bool = True,
            **changes: object) -> ActualVm:
    """The actual VM that `want` would have produced; `changes` alter it."""
    mark = VmMark(spec_hash=want.spec_hash, image=want.image, disk_size=want.disk_size,
                  os_family=want.os_family, owner=want.owner)
    mark_changes = {k: v for k, v in changes.items() if k in ("spec_hash", "image", "disk_size", "os_family")}
    mark = dataclasses.replace(mark, **mark_changes)  # type: ignore[arg-type]
    r = want.resources
    on = want.running if running is None else running
    vm = ActualVm(
        name=want.name, power=PowerState.RUNNING if on else PowerState.SHUTOFF,
        domain_id=7 if on else None, vcpus=r.vcpus, max_vcpus=r.max_vcpus, memory=r.memory,
        max_memory=r.max_memory, mark=mark if managed else None,
    )
    vm_changes = {k: v for k, v in changes.items() if k in ("vcpus", "max_vcpus", "memory", "max_memory", "balloon")}
    return dataclasses.replace(vm, **vm_changes)  # type: ignore[arg-type]


def want_box(name: str = "box", *, image: str = "somnus/base:bookworm") -> DesiredContainer:
    return DesiredContainer(
        name=name, image=image, command=("sleep", "infinity"), cpus=1.0, memory=GiB, network="none",
        env=(("A", "1"),), packs=(), owner=None, source=Source(Path("boxes.yaml"), 2),
    )


def have_box(want: DesiredContainer, *, state: str = "running",
             spec_hash: str | None = "same") -> ActualContainer:
    return ActualContainer(
        name=want.name, container_id="c0ffee", image=want.image, state=state,
        spec_hash=want.spec_hash if spec_hash == "same" else spec_hash,
    )


def desired_of(vms: list[DesiredVm] = [], boxes: list[DesiredContainer] = []) -> DesiredState:  # noqa: B006
    return DesiredState({v.name: v for v in vms}, {c.name: c for c in boxes}, {}, PoolSpec())


def actual_of(vms: list[ActualVm] = [], boxes: list[ActualContainer] = []) -> ActualState:  # noqa: B006
    return ActualState({v.name: v for v in vms}, {c.name: c for c in boxes})


def only_change(desired: DesiredState, actual: ActualState) -> plan.Change:
    result = plan.compute(desired, actual, prune=False)
    assert result.conflicts == () and result.leftovers == ()
    [change] = result.changes
    return change


WANT = want_vm()

VM_CASES = {
    "create": (WANT, None, Action.CREATE, Disruption.NONE, ()),
    "replace for a new image": (
        dataclasses.replace(WANT, image="debian-13"), have_vm(WANT), Action.REPLACE, Disruption.RECREATE,
        (FieldChange("image", "debian-12", "debian-13"),)),
    "a larger disk grows live": (
        dataclasses.replace(WANT, disk_size=40 * GiB), have_vm(WANT), Action.UPDATE, Disruption.LIVE,
        (FieldChange("diskSize", 20 * GiB, 40 * GiB),)),
    "a larger disk of a stopped VM grows offline": (
        want_vm(running=False, disk_size=40 * GiB), have_vm(want_vm(running=False)), Action.UPDATE,
        Disruption.NONE, (FieldChange("diskSize", 20 * GiB, 40 * GiB),)),
    "replace for a new OS family": (
        dataclasses.replace(WANT, os_family="windows"), have_vm(WANT), Action.REPLACE, Disruption.RECREATE,
        (FieldChange("osFamily", "debian", "windows"),)),
    "start": (WANT, have_vm(WANT, running=False), Action.START, Disruption.NONE, ()),
    "start with new sizes": (
        WANT, have_vm(WANT, running=False, vcpus=1, max_vcpus=2), Action.START, Disruption.NONE,
        (FieldChange("maxVcpus", 2, 4), FieldChange("vcpus", 1, 2))),
    "stop": (want_vm(running=False), have_vm(want_vm(running=False), running=True),
             Action.STOP, Disruption.RESTART, ()),
    "live vcpus": (WANT, have_vm(WANT, vcpus=1), Action.UPDATE, Disruption.LIVE,
                   (FieldChange("vcpus", 1, 2),)),
    "live memory": (WANT, have_vm(WANT, memory=2 * GiB), Action.UPDATE, Disruption.LIVE,
                    (FieldChange("memory", 2 * GiB, 4 * GiB),)),
    "live memory down": (
        want_vm(memory=2 * GiB), have_vm(WANT), Action.UPDATE, Disruption.LIVE,
        (FieldChange("memory", 4 * GiB, 2 * GiB),)),
    "restart for fewer vcpus": (
        want_vm(vcpus=1, memory=2 * GiB), have_vm(WANT), Action.UPDATE, Disruption.RESTART,
        (FieldChange("vcpus", 2, 1), FieldChange("memory", 4 * GiB, 2 * GiB))),
    "restart for a larger maxVcpus": (
        want_vm(vcpus=6, max_vcpus=8), have_vm(WANT), Action.UPDATE, Disruption.RESTART,
        (FieldChange("maxVcpus", 4, 8), FieldChange("vcpus", 2, 6))),
    "restart for a larger maxMemory": (
        want_vm(max_memory=16 * GiB), have_vm(WANT), Action.UPDATE, Disruption.RESTART,
        (FieldChange("maxMemory", 8 * GiB, 16 * GiB),)),
    "offline update": (
        want_vm(running=False, vcpus=4, max_vcpus=8), have_vm(want_vm(running=False)),
        Action.UPDATE, Disruption.NONE, (FieldChange("maxVcpus", 4, 8), FieldChange("vcpus", 2, 4))),
    "mark only (owner changed)": (
        want_vm(owner="bob"), have_vm(want_vm(owner="alice")), Action.UPDATE, Disruption.NONE, ()),
    "mark only while stopped": (
        want_vm(running=False, owner=None), have_vm(want_vm(running=False)), Action.UPDATE,
        Disruption.NONE, ()),
}


@pytest.mark.parametrize("want, have, action, disruption, fields", VM_CASES.values(), ids=VM_CASES.keys())
def test_vm_changes(want: DesiredVm, have: ActualVm | None, action: Action, disruption: Disruption,
                    fields: tuple[FieldChange, ...]) -> None:
    change = only_change(desired_of([want]), actual_of([have] if have else []))
    assert (change.address, change.action, change.disruption, change.fields) == (
        "vm/coder-1", action, disruption, fields)
    assert change.desired is want and change.actual is have


def test_a_smaller_disk_is_refused_and_nothing_is_planned_for_the_vm() -> None:
    result = plan.compute(desired_of([want_vm(disk_size=8 * GiB)]), actual_of([have_vm(WANT)]), prune=False)
    assert result.changes == ()
    assert [str(d) for d in result.conflicts] == [
        "vms.yaml:4: vm/coder-1: spec.diskSize: 8Gi is smaller than the disk's 20Gi; shrinking a disk is not "
        "supported (nothing was changed; a larger size grows it in place)"]


def test_a_smaller_disk_with_a_new_image_is_a_new_disk() -> None:
    want = want_vm(disk_size=8 * GiB, image="debian-13")
    assert only_change(desired_of([want]), actual_of([have_vm(WANT)])).action is Action.REPLACE


def test_mark_only_update_says_why() -> None:
    change = only_change(desired_of([want_vm(owner="bob")]), actual_of([have_vm(want_vm())]))
    assert change.reason == "mark"


@pytest.mark.parametrize("want, have", [
    (WANT, have_vm(WANT)),
    (want_vm(running=False), have_vm(want_vm(running=False))),
    (WANT, have_vm(WANT, balloon=8 * GiB)),  # the balloon target is set; the guest never got there
], ids=["running", "stopped", "running, balloon elsewhere"])
def test_vm_in_sync_is_a_no_op(want: DesiredVm, have: ActualVm) -> None:
    result = plan.compute(desired_of([want]), actual_of([have]), prune=True)
    assert result.changes == () and result.in_sync


BOX = want_box()

CONTAINER_CASES = {
    "create": (BOX, None, Action.CREATE, Disruption.NONE, ""),
    "replace for a changed spec": (
        want_box(image="somnus/base:trixie"), have_box(BOX), Action.REPLACE, Disruption.RECREATE,
        "spec changed"),
    "start": (BOX, have_box(BOX, state="exited"), Action.START, Disruption.NONE, ""),
}


@pytest.mark.parametrize("want, have, action, disruption, reason", CONTAINER_CASES.values(),
                         ids=CONTAINER_CASES.keys())
def test_container_changes(want: DesiredContainer, have: ActualContainer | None, action: Action,
                           disruption: Disruption, reason: str) -> None:
    change = only_change(desired_of(boxes=[want]), actual_of(boxes=[have] if have else []))
    assert (change.address, change.action, change.disruption, change.reason) == (
        "container/box", action, disruption, reason)


def test_container_start_names_the_state() -> None:
    change = only_change(desired_of(boxes=[BOX]), actual_of(boxes=[have_box(BOX, state="created")]))
    assert change.fields == (FieldChange("state", "created", "running"),)


def test_container_in_sync_is_a_no_op() -> None:
    assert plan.compute(desired_of(boxes=[BOX]), actual_of(boxes=[have_box(BOX)]), prune=False).in_sync


@pytest.mark.parametrize("desired, actual, address, what", [
    (desired_of([WANT]), actual_of([have_vm(WANT, managed=False)]), "vm/coder-1", "a libvirt domain"),
    (desired_of(boxes=[BOX]), actual_of(boxes=[have_box(BOX, spec_hash=None)]), "container/box",
     "a Docker container"),
], ids=["vm", "container"])
@pytest.mark.parametrize("prune", [False, True])
def test_unowned_objects_with_a_declared_name_are_conflicts(
    desired: DesiredState, actual: ActualState, address: str, what: str, prune: bool,
) -> None:
    result = plan.compute(desired, actual, prune=prune)
    assert result.changes == () and not result.in_sync
    [conflict] = result.conflicts
    assert conflict.address == address
    assert conflict.message.startswith(f"{what} named {address.split('/')[1]!r} exists but carries no somnus")


def test_unowned_objects_not_declared_are_ignored_even_with_prune() -> None:
    actual = actual_of([have_vm(want_vm("theirs"), managed=False)],
                       [have_box(want_box("theirs"), spec_hash=None)])
    result = plan.compute(desired_of(), actual, prune=True)
    assert result.changes == () and result.leftovers == () and result.in_sync


LEFTOVERS = actual_of([have_vm(want_vm("old-vm"))], [have_box(want_box("old-box"))])


def test_owned_leftovers_are_kept_without_prune() -> None:
    result = plan.compute(desired_of(), LEFTOVERS, prune=False)
    assert result.changes == ()
    assert result.leftovers == ("vm/old-vm", "container/old-box")
    assert result.in_sync  # leftovers alone are no pending change


def test_owned_leftovers_are_deleted_with_prune() -> None:
    result = plan.compute(desired_of(), LEFTOVERS, prune=True)
    assert result.leftovers == ()
    assert [(c.address, c.action, c.disruption, c.reason) for c in result.changes] == [
        ("vm/old-vm", Action.DELETE, Disruption.RECREATE, "prune"),
        ("container/old-box", Action.DELETE, Disruption.RECREATE, "prune"),
    ]
    assert result.changes[0].actual is LEFTOVERS.vms["old-vm"]


def test_changes_come_vms_first_sorted_by_name() -> None:
    desired = desired_of([want_vm("b"), want_vm("a")], [want_box("z"), want_box("y")])
    result = plan.compute(desired, actual_of(), prune=False)
    assert [c.address for c in result.changes] == ["vm/a", "vm/b", "container/y", "container/z"]


def test_a_plan_is_the_same_for_the_same_input() -> None:
    desired = desired_of([want_vm("a"), want_vm("b", vcpus=3)], [want_box("y")])
    actual = actual_of([have_vm(want_vm("b"))], [have_box(want_box("x"))])
    assert plan.compute(desired, actual, prune=True) == plan.compute(desired, actual, prune=True)


@pytest.mark.parametrize("action, symbol", [
    (Action.CREATE, "+"), (Action.DELETE, "-"), (Action.REPLACE, "-/+"),
    (Action.UPDATE, "~"), (Action.START, "~"), (Action.STOP, "~"),
])
def test_action_symbols(action: Action, symbol: str) -> None:
    assert action.symbol == symbol


@pytest.mark.parametrize("field, text", [
    (FieldChange("memory", 4 * GiB, 8 * GiB), "memory 4Gi -> 8Gi"),
    (FieldChange("vcpus", 4, 12), "vcpus 4 -> 12"),
    (FieldChange("diskSize", 20 * GiB, 1536 * 2**20), "diskSize 20Gi -> 1536Mi"),
])
def test_field_changes_read_like_the_plan(field: FieldChange, text: str) -> None:
    assert str(field) == text


def _in_pool(state: ActualState, pool: str) -> ActualState:
    return ActualState(
        {n: dataclasses.replace(v, mark=dataclasses.replace(v.mark, pool=pool)) if v.mark else v
         for n, v in state.vms.items()},
        {n: dataclasses.replace(c, pool=pool) for n, c in state.containers.items()},
    )


@pytest.mark.parametrize("prune", [False, True])
def test_objects_of_another_pool_are_neither_leftovers_nor_pruned(prune: bool) -> None:
    result = plan.compute(desired_of(), _in_pool(LEFTOVERS, "lab"), prune=prune)
    assert (result.changes, result.leftovers) == ((), ())


def test_declared_name_owned_by_another_pool_is_a_conflict() -> None:
    vm, box = want_vm(), want_box()
    actual = _in_pool(actual_of([have_vm(vm)], [have_box(box)]), "lab")
    result = plan.compute(desired_of([vm], [box]), actual, prune=True)
    assert result.changes == ()
    assert [(d.address, "pool/lab" in d.message) for d in result.conflicts] == [
        ("vm/coder-1", True), ("container/box", True),
    ]


# -- pack steps ------------------------------------------------------------------
FPS = {"base-tools": "fp-base", "web": "fp-web"}


def _with_packs(desired: DesiredState) -> DesiredState:
    return dataclasses.replace(desired, pack_fingerprints=FPS)


def _steps(result: plan.Plan) -> list[tuple[str, str, str | None, str]]:
    return [(c.address, c.action.symbol, c.pack, c.reason) for c in result.changes]


def test_a_new_vm_gets_its_packs_after_it_is_created_in_requires_order() -> None:
    vm = want_vm(packs=("base-tools", "web"))
    result = plan.compute(_with_packs(desired_of([vm])), actual_of(), prune=False)
    assert _steps(result) == [("vm/coder-1", "+", None, ""), ("vm/coder-1", "+", "base-tools", ""),
                              ("vm/coder-1", "+", "web", "")]
    assert all(c.action is Action.PACK_INSTALL for c in result.changes[1:])


def test_packs_with_matching_fingerprints_plan_nothing() -> None:
    vm = want_vm(packs=("base-tools", "web"))
    have = have_vm(vm)
    have = dataclasses.replace(have, mark=dataclasses.replace(have.mark, packs=tuple(FPS.items())))
    assert plan.compute(_with_packs(desired_of([vm])), actual_of([have]), prune=False).changes == ()


def test_a_changed_pack_runs_again_and_an_undeclared_one_is_removed() -> None:
    vm = want_vm(packs=("base-tools",))
    have = have_vm(vm)
    have = dataclasses.replace(have, mark=dataclasses.replace(
        have.mark, packs=(("base-tools", "old"), ("web", "fp-web"))))
    result = plan.compute(_with_packs(desired_of([vm])), actual_of([have]), prune=False)
    assert _steps(result) == [("vm/coder-1", "+", "base-tools", "changed"), ("vm/coder-1", "-", "web", "")]
    assert result.changes[1].action is Action.PACK_REMOVE


def test_a_stopped_vm_gets_no_pack_steps() -> None:
    vm = want_vm(running=False, packs=("base-tools",))
    assert plan.compute(_with_packs(desired_of([vm])), actual_of([have_vm(vm)]), prune=False).changes == ()


def test_a_replaced_container_gets_its_packs_again_and_adding_a_pack_does_not_replace_it() -> None:
    box = dataclasses.replace(want_box(), packs=("web",))
    have = dataclasses.replace(have_box(want_box()), packs=(("web", "fp-web"),))
    assert box.spec_hash == want_box().spec_hash
    assert plan.compute(_with_packs(desired_of(boxes=[box])), actual_of(boxes=[have]), prune=False).changes == ()
    replaced = dataclasses.replace(box, image="other:1")
    result = plan.compute(_with_packs(desired_of(boxes=[replaced])), actual_of(boxes=[have]), prune=False)
    assert _steps(result) == [("container/box", "-/+", None, "spec changed"), ("container/box", "+", "web", "")]


# --- drift: the declaration is the one applied, the object changed -----------------------


def test_an_out_of_band_resize_or_stop_of_a_vm_is_drift() -> None:
    want = want_vm()
    resized = plan.compute(desired_of([want]), actual_of([have_vm(want, memory=2 * GiB)]),
                           prune=False)
    stopped = plan.compute(desired_of([want]), actual_of([have_vm(want, running=False)]),
                           prune=False)
    assert [c.drift for c in resized.changes + stopped.changes] == [True, True]


def test_a_changed_declaration_is_intent_not_drift() -> None:
    want = want_vm(memory=6 * GiB)
    have = have_vm(want_vm(), memory=4 * GiB)  # marked with the old declaration's hash
    [change] = plan.compute(desired_of([want]), actual_of([have]), prune=False).changes
    assert not change.drift


def test_a_removed_object_is_drift_only_when_the_journal_applied_this_very_declaration() -> None:
    box = want_box()
    desired = desired_of(boxes=[box])
    empty = actual_of()
    [gone] = plan.compute(desired, empty, prune=False, applied={box.address: box.spec_hash}).changes
    [new] = plan.compute(desired, empty, prune=False).changes
    [changed] = plan.compute(desired, empty, prune=False, applied={box.address: "older"}).changes
    assert (gone.action, gone.drift, new.drift, changed.drift) == (Action.CREATE, True, False, False)


def test_a_pack_whose_verify_fails_is_planned_again_as_drift() -> None:
    want = want_vm(packs=("tools",))
    plain = have_vm(want)
    assert plain.mark is not None
    have = dataclasses.replace(plain, mark=dataclasses.replace(plain.mark, packs=(("tools", "fp"),)))
    desired = dataclasses.replace(desired_of([want]), pack_fingerprints={"tools": "fp"})
    assert plan.compute(desired, actual_of([have]), prune=False).changes == ()
    [again] = plan.compute(desired, actual_of([have]), prune=False,
                           failing_packs=frozenset({(want.address, "tools")})).changes
    assert (again.action, again.pack, again.reason, again.drift) == (Action.PACK_INSTALL, "tools", "verify failed", True)


def test_warn_policy_sets_drift_aside_but_runs_intended_changes() -> None:
    warned = dataclasses.replace(want_vm("warned"), drift_policy="warn")
    corrected = want_vm("corrected")
    changed = dataclasses.replace(want_vm("changed", memory=6 * GiB), drift_policy="warn")
    actual = actual_of([have_vm(warned, running=False), have_vm(corrected, running=False),
                        have_vm(want_vm("changed"), memory=4 * GiB)])
    to_run, reported = plan.split_drift(plan.compute(desired_of([warned, corrected, changed]), actual, prune=False))
    assert [c.address for c in to_run.changes] == ["vm/changed", "vm/corrected"]
    assert [c.address for c in reported] == ["vm/warned"]


def test_the_drift_policy_is_not_part_of_the_spec_hash() -> None:
    assert dataclasses.replace(want_vm(), drift_policy="warn").spec_hash == want_vm().spec_hash


def test_spec_hashes_are_those_recorded_in_existing_marks() -> None:
    """The hashes that marks and labels of existing objects carry (computed by the earlier
    `dataclasses.asdict` formula): a change to how they are computed would replace everything."""
    from somnus_reconciler.values.desired import SecretEnv, SecretFile
    from somnus_reconciler.values.model import BackupPolicy

    vm = dataclasses.replace(want_vm(), backup=BackupPolicy.model_validate({"schedule": "6h", "retain": 3}),
                             secret_files=(SecretFile("/etc/x", "s", "k", 0o600, "root"),), packs=("a",))
    box = dataclasses.replace(want_box(), volumes=(("data", "/data"),), secret_env=(SecretEnv("TOKEN", "s", "k"),),
                              secret_digest="abc")
    assert [want_vm().spec_hash, vm.spec_hash, want_box().spec_hash, box.spec_hash] == [
        "23109116d7bab410", "650ec52405fd393f", "0e411809d7ff875e", "1e1d34201764b6d1"]
