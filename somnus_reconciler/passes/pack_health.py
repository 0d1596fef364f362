"""At a resync: run each applied pack's `verify` commands in its guest; a failure is drift.

`prepare.prepare` calls `failing_packs` when asked to (`check_packs`: a resync of
`watch` or `gitops`, and watch's first pass) and hands the result to `plan.compute`,
which plans those packs again (or, under `driftPolicy: warn`, only reports them). VMs are asked through the in-guest
agent's `/execute` (no SSH, no Ansible), containers through `docker exec`, all
guests at once. A guest that cannot be asked (agent not up, container stopped)
is skipped: not knowing is not drift.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from somnus_reconciler.providers import agent_client
from somnus_reconciler.providers.protocols import ProviderError
from somnus_reconciler.values.actual import ActualContainer, ActualState, ActualVm
from somnus_reconciler.values.desired import DesiredContainer, DesiredState, DesiredVm

if TYPE_CHECKING:
    from somnus_reconciler.providers.backends import Backends

VERIFY_TIMEOUT_S = 30.0


def failing_packs(desired: DesiredState, actual: ActualState, backends: Backends) -> frozenset[tuple[str, str]]:
    """(address, pack) of every applied, unchanged pack whose verify commands fail now."""
    checks: list[tuple[DesiredVm | DesiredContainer, ActualVm | ActualContainer, str, tuple[str, ...]]] = []
    guests: list[tuple[DesiredVm | DesiredContainer, ActualVm | ActualContainer | None]] = [
        *((vm, actual.vms.get(name)) for name, vm in desired.vms.items()),
        *((c, actual.containers.get(name)) for name, c in desired.containers.items()),
    ]
    for want, have in guests:
        if have is None or not have.running:
            continue
        applied = dict(have.mark.packs if isinstance(have, ActualVm) and have.mark else
                       have.packs if isinstance(have, ActualContainer) else ())
        for pack in want.packs:
            spec = desired.packs.get(pack)
            if spec and spec.spec.verify and applied.get(pack) == desired.pack_fingerprints.get(pack):
                checks.append((want, have, pack, tuple(spec.spec.verify)))
    if not checks:
        return frozenset()
    # VMs' agents in parallel; containers one by one, since the Docker client is
    # not safe to share between threads.
    in_vms = [c for c in checks if isinstance(c[1], ActualVm)]
    in_containers = [c for c in checks if isinstance(c[1], ActualContainer)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        verdicts = list(pool.map(lambda check: _fails(backends, *check), in_vms))
    verdicts += [_fails(backends, *check) for check in in_containers]
    return frozenset((want.address, pack) for (want, _, pack, _), failed in zip(in_vms + in_containers, verdicts)
                     if failed)


def _fails(backends: Backends, want: DesiredVm | DesiredContainer, have: ActualVm | ActualContainer,
           pack: str, commands: tuple[str, ...]) -> bool:
    """True when a verify command exits non-zero; False when it passes or cannot be asked."""
    if isinstance(have, ActualVm):
        client = agent_client.for_vm(have, backends.settings.state_dir)
        if client is None:
            return False
        try:
            return any(client.execute(["sh", "-c", command], timeout_s=VERIFY_TIMEOUT_S)["exit_code"] != 0
                       for command in commands)
        except agent_client.AgentError:
            return False
    try:
        return any(backends.containers.run(want.name, ["sh", "-c", command]) != 0 for command in commands)
    except ProviderError:
        return False
