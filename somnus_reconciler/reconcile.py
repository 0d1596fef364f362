"""One reconcile pass, shared by `diff`, `apply` (and the watcher): load the
manifests, observe libvirt and Docker, compute the plan, refuse what must not
run (conflicts, admission, missing base images), then hand the plan to the engine.

Everything that makes input invalid is raised as `InvalidInput` before any
change is made.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from somnus_reconciler import admission, images, loader, pack_health, references, settings as settings_mod
from somnus_reconciler import plan as plan_mod
from somnus_reconciler.actual import ActualContainer, ActualState, ActualVm
from somnus_reconciler.desired import DesiredState, DesiredVm
from somnus_reconciler.diagnostics import Diagnostic, Diagnostics, InvalidInput
from somnus_reconciler.journal import Journal
from somnus_reconciler.plan import Action, Plan
from somnus_reconciler.providers import ansible_provider
from somnus_reconciler.providers.docker_provider import DockerProvider
from somnus_reconciler.providers.libvirt_provider import LibvirtProvider
from somnus_reconciler.settings import Settings


@dataclass
class Backends:
    settings: Settings
    vms: LibvirtProvider
    containers: DockerProvider

    def close(self) -> None:
        self.vms.close()
        self.containers.close()


def load_desired(paths: Sequence[Path]) -> DesiredState:
    """Parse, validate and resolve references; raises InvalidInput listing every problem.

    No manifest at all is an error too (as with kubectl), so that an empty
    directory can never turn `apply --prune` into "delete everything".
    """
    declared = loader.load(paths)
    if not declared:
        raise InvalidInput((Diagnostic(None, None, f"no manifests found in {', '.join(map(str, paths))}"),))
    desired = references.resolve(declared)
    fingerprints = {name: ansible_provider.pack_fingerprint(pack) for name, pack in desired.packs.items()}
    return dataclasses.replace(desired, pack_fingerprints=fingerprints)


def host_capacity() -> admission.HostCapacity:
    return admission.HostCapacity(cpus=psutil.cpu_count() or 1, memory=psutil.virtual_memory().total)


def static_check(desired: DesiredState) -> None:
    """Admission without observing: what `validate` can say on its own."""
    problems = admission.check(desired, host_capacity())
    if problems:
        raise InvalidInput(tuple(problems))


def open_backends(desired: DesiredState | None, *, state_dir: str | None = None) -> Backends:
    resolved = settings_mod.resolve(desired.pool if desired else None, state_dir=state_dir)
    return Backends(resolved, LibvirtProvider(resolved), DockerProvider(resolved.docker_host))


def observe(backends: Backends) -> ActualState:
    """libvirt and Docker, plus the containers' pack records from the journal
    (a container's labels cannot change, so that part of its mark lives there)."""
    containers = backends.containers.observe()
    journal_path = backends.settings.journal_path
    if journal_path.exists() and containers:
        journal = Journal(journal_path)
        records = journal.container_packs()
        journal.close()
        for name, (container_id, packs) in records.items():
            current = containers.get(name)
            if current is not None and current.container_id == container_id:
                containers[name] = dataclasses.replace(current, packs=packs)
    return ActualState(vms=backends.vms.observe(), containers=containers)


def applied_hashes(settings: Settings) -> dict[str, str]:
    """address -> spec hash last applied, from the journal (none yet: empty)."""
    if not settings.journal_path.exists():
        return {}
    journal = Journal(settings.journal_path)
    try:
        return {address: spec_hash for address, (spec_hash, _) in journal.applied().items()}
    finally:
        journal.close()


def prepare(desired: DesiredState, backends: Backends, *, prune: bool, check_packs: bool = False) -> Plan:
    """Observe and plan; raise InvalidInput when the plan must not run.

    With `check_packs` (a resync), the applied packs' verify commands are run in
    their guests first, and those that fail are planned again as drift.
    """
    actual = observe(backends)
    failing = pack_health.failing_packs(desired, actual, backends) if check_packs else frozenset()
    plan = plan_mod.compute(desired, actual, prune=prune, applied=applied_hashes(backends.settings),
                            failing_packs=failing)
    problems = Diagnostics(list(plan.conflicts))

    kept_running = [_still_running(actual, address) for address in plan.leftovers]
    for diagnostic in admission.check(
        desired, host_capacity(), also_running=[k for k in kept_running if k is not None]
    ):
        problems.items.append(diagnostic)

    for change in plan.changes:
        want = change.desired
        if change.action not in (Action.CREATE, Action.REPLACE) or want is None:
            continue
        if isinstance(want, DesiredVm):
            if not images.is_vm_image_available(want.image, backends.settings.images_dir):
                problems.add(want.source, want.address,
                             f"base image {want.image!r} is not built; run: somnus image build {want.image}")
        elif not backends.containers.image_present(want.image):
            problems.add(want.source, want.address,
                         f"image {want.image!r} is not present locally; run: somnus image build {want.image}")
    problems.raise_if_any()
    return plan


def _still_running(actual: ActualState, address: str) -> tuple[str, int, int, str | None] | None:
    kind, name = address.split("/", 1)
    obj: ActualVm | ActualContainer | None = (actual.vms if kind == "vm" else actual.containers).get(name)
    if isinstance(obj, ActualVm) and obj.running:
        return (address, obj.vcpus, obj.memory, obj.mark.owner if obj.mark else None)
    # A leftover container is not counted: the one listing call that observe makes
    # carries no resource limits, and an inspect per container would slow every diff.
    return None
