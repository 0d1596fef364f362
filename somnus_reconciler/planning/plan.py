"""The plan: a pure function from desired and actual state to a list of changes.

`compute(desired, actual, prune=...)` does no I/O and reads no clock; what
`apply` does is defined by the returned `Plan` alone. `cli.views` renders it,
`planning.admission` checks what it would run, `engine.executor` executes it,
and `passes.prepare` is the caller that puts them together.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from somnus_reconciler.values import gpu
from somnus_reconciler.values.actual import ActualContainer, ActualState, ActualVm
from somnus_reconciler.values.desired import DesiredContainer, DesiredState, DesiredVm
from somnus_reconciler.values.diagnostics import Diagnostic
from somnus_reconciler.values.quantity import format_bytes


class Action(enum.Enum):
    CREATE = "create"
    UPDATE = "update"
    REPLACE = "replace"
    START = "start"
    STOP = "stop"
    DELETE = "delete"
    PACK_INSTALL = "pack install"
    PACK_REMOVE = "pack remove"
    FILES = "files"  # secret files written into (or removed from) a running guest


    @property
    def symbol(self) -> str:
        return {"create": "+", "delete": "-", "replace": "-/+", "pack install": "+",
                "pack remove": "-"}.get(self.value, "~")

    @property
    def is_pack_step(self) -> bool:
        return self in (Action.PACK_INSTALL, Action.PACK_REMOVE)

    @property
    def is_guest_step(self) -> bool:
        """Runs inside a guest after the guest's own change, between a snapshot and its
        record or rollback: a pack step or the secret files."""
        return self.is_pack_step or self is Action.FILES


class Disruption(enum.IntEnum):
    """How much a change disturbs a running guest; larger is worse."""

    NONE = 0  # nothing runs, or only metadata changes
    LIVE = 1  # applied to the running guest without a restart
    RESTART = 2  # the guest is shut down and started again
    RECREATE = 3  # the guest and its disk are destroyed and made anew

    @property
    def label(self) -> str:
        return {0: "", 1: "live", 2: "restart required", 3: "recreate"}[self.value]


@dataclass(frozen=True)
class FieldChange:
    name: str
    before: object
    after: object

    def __str__(self) -> str:
        return f"{self.name} {_show(self.name, self.before)} -> {_show(self.name, self.after)}"


@dataclass(frozen=True)
class Change:
    address: str  # "vm/coder-1"
    action: Action
    disruption: Disruption
    fields: tuple[FieldChange, ...] = ()
    desired: DesiredVm | DesiredContainer | None = field(default=None, compare=False)
    actual: ActualVm | ActualContainer | None = field(default=None, compare=False)
    reason: str = ""  # why (prune, spec changed, ...), for the plan line
    pack: str | None = None  # for pack steps: which pack
    # Out-of-band: the declaration did not change since it was applied, the object did.
    drift: bool = False

    @property
    def kind(self) -> str:
        return self.address.split("/", 1)[0]

    @property
    def name(self) -> str:
        return self.address.split("/", 1)[1]


@dataclass(frozen=True)
class Plan:
    changes: tuple[Change, ...]
    leftovers: tuple[str, ...]  # owned, not declared, kept because --prune was not given
    conflicts: tuple[Diagnostic, ...]  # declared names held by objects somnus does not own
    # Why a half was left out: its daemon (libvirtd, dockerd) could not be reached.
    unreachable: tuple[str, ...] = ()

    @property
    def in_sync(self) -> bool:
        return not self.changes and not self.conflicts and not self.unreachable


def _show(name: str, value: object) -> str:
    if name in ("memory", "maxMemory", "diskSize") and isinstance(value, int):
        return format_bytes(value)
    return str(value)


def compute(desired: DesiredState, actual: ActualState, *, prune: bool,
            applied: Mapping[str, str] | None = None,
            failing_packs: frozenset[tuple[str, str]] = frozenset()) -> Plan:
    """The changes from `actual` to `desired`.

    `applied` (address -> spec hash last applied, from the journal) tells drift from
    intent for objects that are gone; `failing_packs` ((address, pack) whose verify
    commands failed in the guest at a resync) plans those packs again as drift.
    """
    applied = applied or {}
    declared = [
        _declared_vm(want, actual.vms.get(name), desired, applied, failing_packs)
        for name, want in sorted(desired.vms.items())
    ] + [
        _declared_container(want, actual.containers.get(name), desired, applied, failing_packs)
        for name, want in sorted(desired.containers.items())
    ]
    changes = [change for steps in declared if isinstance(steps, list) for change in steps]
    conflicts = [conflict for conflict in declared if isinstance(conflict, Diagnostic)]
    leftovers: list[str] = []
    for obj in _undeclared(desired, actual):
        address = f"{'vm' if isinstance(obj, ActualVm) else 'container'}/{obj.name}"
        if prune:
            changes.append(
                Change(address, Action.DELETE, Disruption.RECREATE, actual=obj, reason="prune")
            )
        else:
            leftovers.append(address)
    return Plan(tuple(changes), tuple(leftovers), tuple(conflicts))


def _declared_vm(want: DesiredVm, have: ActualVm | None, desired: DesiredState,
                 applied: Mapping[str, str], failing_packs: frozenset[tuple[str, str]],
                 ) -> list[Change] | Diagnostic:
    """The VM's own change and its pack steps, or the conflict that leaves it alone."""
    mark = have.mark if have is not None else None
    if have is not None and mark is None:
        return _unowned(want, "a libvirt domain")
    if mark is not None and mark.pool != desired.scope:
        return _other_pool(want, mark.pool)
    same_disk = mark is not None and (mark.image, mark.os_family) == (want.image, want.os_family)
    if mark is not None and same_disk and want.disk_size < mark.disk_size:
        return Diagnostic(want.source, want.address, (
            f"spec.diskSize: {format_bytes(want.disk_size)} is smaller than the disk's {format_bytes(mark.disk_size)}; "
            "shrinking a disk is not supported (nothing was changed; a larger size grows it in place)"))
    change = _with_drift(vm_change(want, have), mark.spec_hash if mark else None,
                         applied.get(want.address), want.spec_hash)
    steps = [change] if change is not None else []
    if want.running:  # a stopped guest gets its files and packs when it runs
        steps += files_change(want, _records_kept(change, mark.files if mark else ()), have)
        steps += pack_changes(want, _records_kept(change, mark.packs if mark else ()),
                              desired.pack_fingerprints, have, failing_packs)
    return steps


def _declared_container(want: DesiredContainer, have: ActualContainer | None, desired: DesiredState,
                        applied: Mapping[str, str], failing_packs: frozenset[tuple[str, str]],
                        ) -> list[Change] | Diagnostic:
    """The container's own change and its pack steps, or the conflict that leaves it alone."""
    if have is not None and not have.managed:
        return _unowned(want, "a Docker container")
    if have is not None and have.pool != desired.scope:
        return _other_pool(want, have.pool)
    change = _with_drift(container_change(want, have), have.spec_hash if have else None,
                         applied.get(want.address), want.spec_hash)
    steps = [change] if change is not None else []
    steps += files_change(want, _records_kept(change, have.files if have else ()), have)
    steps += pack_changes(want, _records_kept(change, have.packs if have else ()),
                          desired.pack_fingerprints, have, failing_packs)
    return steps


def _undeclared(desired: DesiredState, actual: ActualState) -> list[ActualVm | ActualContainer]:
    """Owned objects no manifest declares. Only objects applied under the same Pool
    are ours to list or prune."""
    scope = desired.scope
    undeclared: list[ActualVm | ActualContainer] = [
        vm for name, vm in sorted(actual.vms.items())
        if vm.mark is not None and vm.mark.pool == scope and name not in desired.vms
    ]
    undeclared += [
        c for name, c in sorted(actual.containers.items())
        if c.managed and c.pool == scope and name not in desired.containers
    ]
    return undeclared


def _with_drift(change: Change | None, marked: str | None, applied: str | None, wanted: str) -> Change | None:
    """Flag `change` as drift when the declaration is the one last applied: the
    object's mark says so, or, for an object that is gone, the journal does."""
    if change is None or change.action is Action.REPLACE:
        return change
    if (marked if marked is not None else applied) == wanted:
        return dataclasses.replace(change, drift=True)
    return change


def split_drift(plan: Plan) -> tuple[Plan, tuple[Change, ...]]:
    """(the plan to run, drift only reported): drift on objects with `driftPolicy: warn`
    is left alone, and so are their guest steps; everything else runs."""
    held = {c.address for c in plan.changes
            if c.drift and c.desired is not None and c.desired.drift_policy == "warn"}
    reported = tuple(c for c in plan.changes if c.address in held and c.drift)
    kept = tuple(c for c in plan.changes if not (c.address in held and (c.drift or c.action.is_guest_step)))
    return dataclasses.replace(plan, changes=kept), reported


def _records_kept(change: Change | None, applied: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """Packs (or secret files) the object will still have after its own change: none once made anew."""
    if change is not None and change.action in (Action.CREATE, Action.REPLACE):
        return {}
    return dict(applied)


def files_change(want: DesiredVm | DesiredContainer, applied: dict[str, str],
                 have: ActualVm | ActualContainer | None) -> list[Change]:
    """One step writing every secret file whose keyed digest (value, mode, owner) is not
    the one recorded on the guest and removing those no longer declared. Its fields say
    what happens to each path (before: written | absent, after: secret/NAME/KEY | absent);
    its reason names the Secrets, never a value. Nothing before the values are revealed."""
    declared = dict(want.files.digests)
    if want.secret_files and not declared:
        return []
    fields = [FieldChange(f.path, "written" if f.path in applied else "absent", f"secret/{f.secret}/{f.key}")
              for f in want.secret_files if applied.get(f.path) != declared[f.path]]
    fields += [FieldChange(path, "written", "absent") for path in applied if path not in declared]
    if not fields:
        return []
    writes = [f"{f.name} ({str(f.after).rsplit('/', 1)[0]}{' changed' if f.before == 'written' else ''})"
              for f in fields if f.after != "absent"]
    removes = [f"remove {f.name}" for f in fields if f.after == "absent"]
    reason = ", ".join(([f"write {', '.join(writes)}"] if writes else []) + removes)
    return [Change(want.address, Action.FILES, Disruption.NONE, tuple(fields), want, have, reason=reason)]


def pack_changes(want: DesiredVm | DesiredContainer, applied: dict[str, str],
                 fingerprints: dict[str, str], have: ActualVm | ActualContainer | None,
                 failing: frozenset[tuple[str, str]] = frozenset()) -> list[Change]:
    """Install what is missing, changed or failing its verify commands (in `requires`
    order), remove what is no longer declared."""
    changes = []
    for pack in want.packs:
        fingerprint = fingerprints.get(pack, "")
        if applied.get(pack) != fingerprint:
            reason = "changed" if pack in applied else ""
            changes.append(Change(want.address, Action.PACK_INSTALL, Disruption.NONE,
                                  desired=want, actual=have, reason=reason, pack=pack))
        elif (want.address, pack) in failing:
            changes.append(Change(want.address, Action.PACK_INSTALL, Disruption.NONE, desired=want,
                                  actual=have, reason="verify failed", pack=pack, drift=True))
    for pack in reversed(list(applied)):
        if pack not in want.packs:
            changes.append(Change(want.address, Action.PACK_REMOVE, Disruption.NONE,
                                  desired=want, actual=have, pack=pack))
    return changes


def _unowned(want: DesiredVm | DesiredContainer, what: str) -> Diagnostic:
    return Diagnostic(
        want.source,
        want.address,
        f"{what} named {want.name!r} exists but carries no somnus ownership mark; "
        "it is left alone (rename the manifest or remove that object yourself)",
    )


def _other_pool(want: DesiredVm | DesiredContainer, pool: str) -> Diagnostic:
    return Diagnostic(
        want.source,
        want.address,
        f"{want.name!r} is owned by pool/{pool}, not pool/{want.pool}; it is left alone "
        "(apply it with the manifests of its own Pool, or rename this one)",
    )


def _differing(*fields: tuple[str, object, object]) -> tuple[FieldChange, ...]:
    """The (label, before, after) fields whose value changes."""
    return tuple(FieldChange(label, before, after) for label, before, after in fields if before != after)


def vm_change(want: DesiredVm, have: ActualVm | None) -> Change | None:
    if have is None:
        return Change(want.address, Action.CREATE, Disruption.NONE, desired=want)
    assert have.mark is not None
    recreate = _differing(("image", have.mark.image, want.image), ("osFamily", have.mark.os_family, want.os_family))
    if recreate:
        return Change(want.address, Action.REPLACE, Disruption.RECREATE, recreate, want, have)

    r = want.resources
    # What a running guest cannot take live: new maxima, another PCI device.
    headroom = _differing(("maxVcpus", have.max_vcpus, r.max_vcpus), ("maxMemory", have.max_memory, r.max_memory),
                          _gpu_field(want, have))
    # A disk only grows (`_declared_vm` refuses less), in place: live on a running guest.
    sizes = _differing(("vcpus", have.vcpus, r.vcpus), ("memory", have.memory, r.memory),
                       ("diskSize", have.mark.disk_size, want.disk_size))
    resized = headroom + sizes

    change: Change | None = None
    if not want.running:
        if have.running:
            change = Change(want.address, Action.STOP, Disruption.RESTART, resized, want, have)
        elif resized:
            change = Change(want.address, Action.UPDATE, Disruption.NONE, resized, want, have)
    elif not have.running:
        change = Change(want.address, Action.START, Disruption.NONE, resized, want, have)
    elif headroom or r.vcpus < have.vcpus:
        # Removing a vCPU needs the guest to eject it over ACPI, which many guests
        # never do; so fewer vCPUs means a restart, as a new maximum does.
        change = Change(want.address, Action.UPDATE, Disruption.RESTART, resized, want, have)
    elif sizes:
        change = Change(want.address, Action.UPDATE, Disruption.LIVE, sizes, want, have)
    if change is None and have.mark.spec_hash != want.spec_hash:
        # Only bookkeeping differs (labels, profile name, retention): refresh the mark.
        change = Change(want.address, Action.UPDATE, Disruption.NONE, (), want, have, reason="mark")
    return change


def _gpu_field(want: DesiredVm, have: ActualVm) -> tuple[str, str, str]:
    """The VM's GPU as applied (the mark's record, the devices its definition holds) and as declared."""
    recorded = have.mark.gpu if have.mark is not None else None
    wanted = gpu.wanted_addresses(want.gpu, want.gpu_address, have.gpus)
    return ("gpu", gpu.shown(recorded, have.gpus), gpu.shown(str(want.gpu) if want.gpu else None, wanted))


def container_change(want: DesiredContainer, have: ActualContainer | None) -> Change | None:
    if have is None:
        return Change(want.address, Action.CREATE, Disruption.NONE, desired=want)
    if have.spec_hash != want.spec_hash:
        secrets = sorted({f"secret/{ref.secret}" for ref in want.secret_env})  # named, never their values
        return Change(
            want.address, Action.REPLACE, Disruption.RECREATE,
            _differing(("gpu", have.gpu or "none", str(want.gpu) if want.gpu else "none")), want, have,
            reason=f"spec or {', '.join(secrets)} changed" if secrets else "spec changed",
        )
    if not have.running:
        return Change(
            want.address, Action.START, Disruption.NONE,
            (FieldChange("state", have.state, "running"),), want, have,
        )
    return None
