"""One reconcile pass, shared by `diff`, `apply` (and the watcher): load the
manifests, observe libvirt and Docker, compute the plan, refuse what must not
run (conflicts, admission, missing base images), then hand the plan to the engine.

Everything that makes input invalid is raised as `InvalidInput` before any
change is made.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import psutil

from somnus_reconciler import admission, images, loader, pack_health, references, settings as settings_mod
from somnus_reconciler import plan as plan_mod
from somnus_reconciler.actual import ActualContainer, ActualState, ActualVm
from somnus_reconciler.desired import DesiredState, DesiredVm
from somnus_reconciler.diagnostics import Diagnostic, Diagnostics, InvalidInput
from somnus_reconciler.journal import Journal
from somnus_reconciler.plan import Action, Plan
from somnus_reconciler.providers import BackendUnavailable, ansible_provider
from somnus_reconciler.providers.docker_provider import DockerProvider
from somnus_reconciler.providers.libvirt_provider import LibvirtProvider
from somnus_reconciler.settings import Settings


_Observed = TypeVar("_Observed", ActualVm, ActualContainer)
# Waits between attempts to reach a daemon that does not answer, before its half is left out.
UNREACHABLE_RETRY_DELAYS_S = (1.0, 3.0)


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


def host_capacity(guest_dir: Path | None = None) -> admission.HostCapacity:
    """CPUs and memory; with `guest_dir`, also the file system VM disks go to."""
    disk = None
    if guest_dir is not None:
        # The guest directory is made on first use: measure its nearest existing ancestor.
        measured = next(p for p in (guest_dir, *guest_dir.parents) if p.exists())
        usage = shutil.disk_usage(measured)
        disk = admission.DiskCapacity(guest_dir, usage.total, usage.free)
    return admission.HostCapacity(cpus=psutil.cpu_count() or 1, memory=psutil.virtual_memory().total,
                                  disk=disk)


def static_check(desired: DesiredState) -> None:
    """Admission without observing: what `validate` can say on its own."""
    guest_dir = settings_mod.resolve(desired.pool).guest_dir
    problems = admission.check(desired, host_capacity(guest_dir))
    if problems:
        raise InvalidInput(tuple(problems))


def open_backends(desired: DesiredState | None, *, state_dir: str | None = None) -> Backends:
    resolved = settings_mod.resolve(desired.pool if desired else None, state_dir=state_dir)
    return Backends(resolved, LibvirtProvider(resolved), DockerProvider(resolved.docker_host))


def observe(backends: Backends) -> ActualState:
    """libvirt and Docker, plus the containers' pack records from the journal
    (a container's labels cannot change, so that part of its mark lives there).
    BackendUnavailable when either daemon cannot be reached."""
    return ActualState(vms=backends.vms.observe(), containers=_observe_containers(backends))


def observe_reachable(backends: Backends, *, retry_delays_s: Sequence[float] = UNREACHABLE_RETRY_DELAYS_S,
                      sleep: Callable[[float], None] = time.sleep) -> tuple[ActualState, dict[str, str]]:
    """Like `observe`, but a daemon that stays unreachable after retries with backoff
    is left out: (what could be observed, kind -> why the other half could not)."""
    unreachable: dict[str, str] = {}

    def attempt(kind: str, read: Callable[[], dict[str, _Observed]]) -> dict[str, _Observed]:
        for delay in retry_delays_s:
            try:
                return read()
            except BackendUnavailable:
                sleep(delay)
        try:
            return read()
        except BackendUnavailable as e:
            unreachable[kind] = str(e)
            return {}

    vms = attempt("vm", backends.vms.observe)
    containers = attempt("container", lambda: _observe_containers(backends))
    return ActualState(vms=vms, containers=containers), unreachable


def _observe_containers(backends: Backends) -> dict[str, ActualContainer]:
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
    return containers


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
    actual, unreachable = observe_reachable(backends)
    # A daemon that cannot be reached: its half is neither planned nor pruned; the rest goes on.
    desired = dataclasses.replace(
        desired,
        vms={} if "vm" in unreachable else desired.vms,
        containers={} if "container" in unreachable else desired.containers,
    )
    failing = pack_health.failing_packs(desired, actual, backends) if check_packs else frozenset()
    plan = plan_mod.compute(desired, actual, prune=prune, applied=applied_hashes(backends.settings),
                            failing_packs=failing)
    plan = dataclasses.replace(plan, unreachable=tuple(unreachable.values()))
    problems = Diagnostics(list(plan.conflicts))

    created = [change.desired for change in plan.changes
               if change.action in (Action.CREATE, Action.REPLACE) and change.desired is not None]
    kept_running = [_still_running(actual, address) for address in plan.leftovers]
    for diagnostic in admission.check(
        desired, host_capacity(backends.settings.guest_dir),
        also_running=[k for k in kept_running if k is not None],
        new_disks={want.name for want in created if isinstance(want, DesiredVm)},
    ):
        problems.items.append(diagnostic)

    for want in created:
        if isinstance(want, DesiredVm):
            try:
                images.find_vm_image(want.image, backends.settings.images_dir)
            except images.ImageError as e:
                problems.add(want.source, want.address, (
                    f"spec.image: {e}" if images.is_image_path(want.image) else
                    f"base image {want.image!r} is not built; run: somnus image build {want.image}"
                ))
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
