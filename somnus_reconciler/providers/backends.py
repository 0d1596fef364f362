"""The two daemons, opened together, and what they hold now.

`open_backends` opens libvirt and Docker for one pass (or one loop);
`observe_vm` reads one VM for a command on one guest; `observe_reachable` reads both, plus the containers' pack records from the
journal, and leaves out a daemon that stays unreachable after retries, so the
other half can still converge; `applied_hashes` reads what was last applied.
Called by `passes` (prepare, status, apply, rollback and the loop).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from somnus_reconciler import settings as settings_mod
from somnus_reconciler.journal import Journal
from somnus_reconciler.providers.docker_listing import PendingListing
from somnus_reconciler.providers.docker_provider import DockerProvider
from somnus_reconciler.providers.libvirt_provider import LibvirtProvider
from somnus_reconciler.providers.protocols import BackendUnavailable
from somnus_reconciler.settings import Settings
from somnus_reconciler.values.actual import ActualContainer, ActualState, ActualVm
from somnus_reconciler.values.desired import DesiredState

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


def open_backends(desired: DesiredState | None, *, state_dir: str | None = None,
                  listing: PendingListing | None = None) -> Backends:
    """`listing`: the containers' listing a `docker_listing` child is reading, for the first observe."""
    resolved = settings_mod.resolve(desired.pool if desired else None, state_dir=state_dir)
    return Backends(resolved, LibvirtProvider(resolved), DockerProvider(resolved.docker_host, listing=listing))


def observe_vm(name: str, *, state_dir: str | None) -> tuple[ActualVm | None, Settings]:
    """vm/`name` as libvirt has it now (None: no such domain), and the settings it was read
    with; for a command on one guest, which needs no connection afterwards."""
    backends = open_backends(None, state_dir=state_dir)
    try:
        return backends.vms.observe_one(name), backends.settings
    finally:
        backends.close()


def observe_reachable(backends: Backends, *, retry_delays_s: Sequence[float] = UNREACHABLE_RETRY_DELAYS_S,
                      sleep: Callable[[float], None] = time.sleep) -> tuple[ActualState, dict[str, str]]:
    """libvirt and Docker, plus the containers' pack records from the journal (a
    container's labels cannot change, so that part of its mark lives there). A daemon
    that stays unreachable after retries with backoff is left out: (what could be
    observed, kind -> why the other half could not)."""
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

    # The two daemons answer at the same time: libvirt's half waits in a thread (its
    # calls release the GIL) while Docker's is read (and, on first use, imported) here.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="observe-libvirt") as pool:
        vms_future = pool.submit(attempt, "vm", backends.vms.observe)
        containers = attempt("container", lambda: observe_containers(backends))
        vms = vms_future.result()
    return ActualState(vms=vms, containers=containers), unreachable


def observe_containers(backends: Backends) -> dict[str, ActualContainer]:
    """The containers, each with the packs and secret files the journal records as applied
    to it (to that container ID: a recreated container starts with none)."""
    containers = backends.containers.observe()
    journal_path = backends.settings.journal_path
    if journal_path.exists() and containers:
        with Journal(journal_path) as journal:
            packs, files = journal.container_records()  # one read of the table, on every observe
        for name in packs.keys() | files.keys():
            current = containers.get(name)
            if current is None:
                continue
            pack_id, applied_packs = packs.get(name, ("", ()))
            file_id, applied_files = files.get(name, ("", ()))
            containers[name] = dataclasses.replace(
                current, packs=applied_packs if pack_id == current.container_id else (),
                files=applied_files if file_id == current.container_id else ())
    return containers


def applied_hashes(settings: Settings) -> dict[str, str]:
    """address -> spec hash last applied, from the journal (none yet: empty)."""
    if not settings.journal_path.exists():
        return {}
    with Journal(settings.journal_path) as journal:
        return {address: spec_hash for address, (spec_hash, _) in journal.applied().items()}
