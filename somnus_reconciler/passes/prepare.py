"""The first half of every pass, for `diff`, `apply`, `watch` and `gitops`: load the
manifests, observe libvirt and Docker, compute the plan, and refuse what must not
run (conflicts, admission, missing base images). Each VM's GPU gets its host device
here, before planning (`planning.gpus`). `passes.converge` hands the plan to the engine.

Everything that makes input invalid is raised as `InvalidInput` before any
change is made.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from somnus_reconciler import settings as settings_mod
from somnus_reconciler.images import vm_images
from somnus_reconciler.manifests import loader, pack_files, references
from somnus_reconciler.passes import reveal
from somnus_reconciler.planning import admission, gpus
from somnus_reconciler.planning import plan as plan_mod
from somnus_reconciler.planning.plan import Action, Plan
from somnus_reconciler.providers import host_gpus
from somnus_reconciler.providers.backends import Backends, applied_hashes, observe_reachable, open_backends
from somnus_reconciler.providers.docker_listing import PendingListing
from somnus_reconciler.values.actual import ActualContainer, ActualState, ActualVm
from somnus_reconciler.values.desired import DesiredState, DesiredVm
from somnus_reconciler.values.diagnostics import Diagnostic, Diagnostics, InvalidInput


def load_desired(paths: Sequence[Path], *, decrypt: bool = True, state_dir: str | None = None) -> DesiredState:
    """Parse, validate and resolve references; raises InvalidInput listing every problem.

    No manifest at all is an error too (as with kubectl), so that an empty
    directory can never turn `apply --prune` into "delete everything". With `decrypt`,
    the Secret values guests use are decrypted with the host's age identity (`reveal`)
    (`validate` does without: it checks structure and references only).
    """
    declared = loader.load(paths)
    if not declared:
        raise InvalidInput((Diagnostic(None, None, f"no manifests found in {', '.join(map(str, paths))}"),))
    desired = references.resolve(declared)
    fingerprints = {name: pack_files.pack_fingerprint(pack) for name, pack in desired.packs.items()}
    desired = dataclasses.replace(desired, pack_fingerprints=fingerprints)
    if not decrypt or not reveal.uses_secrets(desired):
        return desired
    return reveal.reveal_secrets(desired, settings_mod.resolve(desired.pool, state_dir=state_dir))


def load_and_open(paths: Sequence[Path], *, state_dir: str | None,
                  listing: PendingListing | None) -> tuple[DesiredState, Backends]:
    """`load_desired` and `open_backends`, for a one-shot `diff` or `apply`; `listing`, the
    containers' listing a child process reads meanwhile (`providers.docker_listing`), is
    for the first observe, and ended if loading fails."""
    try:
        desired = load_desired(paths, state_dir=state_dir)
    except BaseException:
        if listing is not None:
            listing.cancel()
        raise
    return desired, open_backends(desired, state_dir=state_dir, listing=listing)


def host_capacity(guest_dir: Path | None = None) -> admission.HostCapacity:
    """CPUs and memory; with `guest_dir`, also the file system VM disks go to."""
    disk = None
    if guest_dir is not None:
        # The guest directory is made on first use: measure its nearest existing ancestor.
        measured = next(p for p in (guest_dir, *guest_dir.parents) if p.exists())
        usage = shutil.disk_usage(measured)
        disk = admission.DiskCapacity(guest_dir, usage.total, usage.free)
    # What psutil.virtual_memory().total reads too, without its ~10 ms import on every diff.
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return admission.HostCapacity(cpus=os.cpu_count() or 1, memory=memory,
                                  disk=disk)


def static_check(desired: DesiredState) -> None:
    """Admission without observing: what `validate` can say on its own."""
    guest_dir = settings_mod.resolve(desired.pool).guest_dir
    problems = admission.check(desired, host_capacity(guest_dir)) + list(admit_gpus(desired).problems)
    if problems:
        raise InvalidInput(tuple(problems))


def admit_gpus(desired: DesiredState, actual: ActualState | None = None) -> gpus.GpuAdmission:
    """GPU admission (`planning.gpus`) against this host, and against the devices the
    domains in `actual` pass through; the host is read only when a guest has a GPU."""
    if not gpus.uses_gpus(desired):
        return gpus.GpuAdmission({}, ())
    domains = {name: vm.gpus for name, vm in actual.vms.items() if vm.gpus} if actual is not None else {}
    return gpus.admit(desired, host_gpus.observe(), domains)


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
    gpu_admission = admit_gpus(desired, actual)
    desired = gpu_admission.apply(desired)
    failing: frozenset[tuple[str, str]] = frozenset()
    if check_packs:  # a resync; imported here, since a diff never asks an agent (~50 ms of imports)
        from somnus_reconciler.passes import pack_health

        failing = pack_health.failing_packs(desired, actual, backends)
    plan = plan_mod.compute(desired, actual, prune=prune, applied=applied_hashes(backends.settings),
                            failing_packs=failing)
    plan = dataclasses.replace(plan, unreachable=tuple(unreachable.values()))
    problems = Diagnostics([*plan.conflicts, *gpu_admission.problems])

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
                vm_images.find_vm_image(want.image, backends.settings.images_dir)
            except vm_images.ImageError as e:
                problems.add(want.source, want.address, (
                    f"spec.image: {e}" if vm_images.is_image_path(want.image) else
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
