"""admission.check: what runs after apply against host capacity and the Pool's limits."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from somnus_reconciler.planning import admission
from somnus_reconciler.values.desired import DesiredContainer, DesiredState, DesiredVm, VmResources
from somnus_reconciler.values.diagnostics import Source
from somnus_reconciler.values.model import PoolSpec, Reserved

GiB = 2**30
MiB = 2**20
BIG_HOST = admission.HostCapacity(cpus=64, memory=512 * GiB)


def vm(name: str, vcpus: int = 1, memory: int = GiB, *, running: bool = True,
       owner: str | None = None) -> DesiredVm:
    return DesiredVm(
        name=name, resources=VmResources(vcpus, memory, vcpus, memory), image="debian-12",
        disk_size=10 * GiB, os_family="debian", running=running, packs=(), snapshot_retain=5,
        owner=owner, profile=None, source=Source(Path("vms.yaml"), 10 + len(name)),
    )


def container(name: str, cpus: float = 1.0, memory: int = GiB, owner: str | None = None) -> DesiredContainer:
    return DesiredContainer(
        name=name, image="somnus/base:bookworm", command=None, cpus=cpus, memory=memory,
        network="none", env=(), packs=(), owner=owner, source=Source(Path("boxes.yaml"), 3),
    )


def state(vms: list[DesiredVm] = [], containers: list[DesiredContainer] = [],  # noqa: B006
          pool: PoolSpec | None = None, *, pool_declared: bool = False) -> DesiredState:
    return DesiredState(
        vms={v.name: v for v in vms},
        containers={c.name: c for c in containers},
        packs={},
        pool=pool or PoolSpec(),
        pool_source=Source(Path("pool.yaml"), 2) if pool_declared else None,
        pool_name="local" if pool_declared else None,
    )


def messages(problems: Sequence[object]) -> list[str]:
    return [str(p) for p in problems]


def test_what_fits_is_admitted() -> None:
    desired = state([vm("a", 4, 8 * GiB), vm("b", 2, 4 * GiB)], [container("box")])
    assert admission.check(desired, admission.HostCapacity(cpus=8, memory=32 * GiB)) == []


def test_memory_refusal_gives_the_numbers() -> None:
    desired = state([vm("a", 1, 10 * GiB), vm("b", 1, 10 * GiB)])
    host = admission.HostCapacity(cpus=64, memory=21 * GiB + 512 * MiB)
    assert messages(admission.check(desired, host)) == [
        "vms.yaml:11: vm/b: running guests need 20Gi of memory but the host offers "
        "21.5Gi - 2Gi reserved = 19.5Gi",
    ]


def test_memory_at_the_limit_fits() -> None:
    desired = state([vm("a", 1, 6 * GiB)], pool=PoolSpec(reserved=Reserved(vcpus=0, memory=2 * GiB)))
    assert admission.check(desired, admission.HostCapacity(cpus=4, memory=8 * GiB)) == []
    assert len(admission.check(desired, admission.HostCapacity(cpus=4, memory=8 * GiB - 1))) == 1


def test_containers_count_for_memory_and_can_tip_the_scale() -> None:
    desired = state([vm("a", 1, 3 * GiB)], [container("box", memory=512 * MiB)])
    assert messages(admission.check(desired, admission.HostCapacity(cpus=8, memory=5 * GiB))) == [
        "boxes.yaml:3: container/box: running guests need 3584Mi of memory but the host offers "
        "5Gi - 2Gi reserved = 3Gi",
    ]


def test_vms_that_are_not_running_cost_nothing() -> None:
    desired = state([vm("a", 32, 100 * GiB, running=False), vm("b", 1, GiB)])
    assert admission.check(desired, admission.HostCapacity(cpus=2, memory=4 * GiB)) == []


@pytest.mark.parametrize("cpus, count, refused",
                         [(0.5, 1, False), (1.0, 1, False), (1.01, 1, True), (0.25, 4, False), (0.25, 5, True)])
def test_container_cpus_count_as_fractions(cpus: float, count: int, refused: bool) -> None:
    # (2 cores - 1 reserved) x 1 = 1 vCPU: four containers of 0.25 fit, five do not.
    boxes = [container(f"box{i}", cpus=cpus) for i in range(count)]
    desired = state(containers=boxes, pool=PoolSpec(cpu_overcommit=1))
    problems = admission.check(desired, admission.HostCapacity(cpus=2, memory=64 * GiB))
    assert bool(problems) is refused


def test_vcpu_refusal_gives_the_numbers() -> None:
    desired = state([vm("a", 4), vm("b", 3)], pool=PoolSpec(cpu_overcommit=2))
    assert messages(admission.check(desired, admission.HostCapacity(cpus=4, memory=64 * GiB))) == [
        "vms.yaml:11: vm/b: running guests need 7 vCPUs but the host allows "
        "(4 cores - 1 reserved) x 2 overcommit = 6",
    ]


@pytest.mark.parametrize("overcommit, vcpus, refused", [
    (1.5, 4, False), (1.5, 5, True), (4.0, 12, False), (4.0, 13, True), (0.5, 2, True),
])
def test_vcpus_against_free_cores_times_overcommit(overcommit: float, vcpus: int, refused: bool) -> None:
    # 4 cores - 1 reserved = 3 free cores.
    desired = state([vm("a", vcpus)], pool=PoolSpec(cpu_overcommit=overcommit))
    problems = admission.check(desired, admission.HostCapacity(cpus=4, memory=64 * GiB))
    assert bool(problems) is refused


def test_too_many_running_vms() -> None:
    desired = state([vm(f"v{i}") for i in range(4)] + [vm("off", running=False)], pool=PoolSpec(max_vms=3))
    assert messages(admission.check(desired, BIG_HOST)) == [
        "vms.yaml:12: vm/v3: 4 VMs would be running but the pool allows at most 3 (maxVms)",
    ]


def test_containers_do_not_count_as_vms() -> None:
    desired = state([vm("a")], [container(f"c{i}") for i in range(5)], PoolSpec(max_vms=1))
    assert admission.check(desired, BIG_HOST) == []


def test_running_vms_per_owner() -> None:
    vms = [vm(f"a{i}", owner="alice") for i in range(3)] + [vm(f"b{i}", owner="bob") for i in range(2)]
    vms += [vm(f"n{i}") for i in range(5)] + [vm("a-off", owner="alice", running=False)]
    desired = state(vms, pool=PoolSpec(max_vms_per_owner=2))
    assert messages(admission.check(desired, BIG_HOST)) == [
        "vms.yaml:12: vm/a2: owner 'alice' would have 3 running VMs but the pool allows at most 2 "
        "per owner (maxVmsPerOwner)",
    ]


def test_leftovers_that_keep_running_are_counted() -> None:
    desired = state([vm("new", 2, 4 * GiB, owner="alice")],
                    pool=PoolSpec(max_vms=1, max_vms_per_owner=1, cpu_overcommit=1))
    leftovers = [("vm/old", 2, 4 * GiB, "alice")]
    host = admission.HostCapacity(cpus=4, memory=8 * GiB)
    assert admission.check(desired, host) == []
    assert messages(admission.check(desired, host, also_running=leftovers)) == [
        "vms.yaml:13: vm/new: running guests need 8Gi of memory but the host offers "
        "8Gi - 2Gi reserved = 6Gi",
        "vms.yaml:13: vm/new: running guests need 4 vCPUs but the host allows "
        "(4 cores - 1 reserved) x 1 overcommit = 3",
        "vms.yaml:13: vm/new: 2 VMs would be running but the pool allows at most 1 (maxVms)",
        "vms.yaml:13: vm/new: owner 'alice' would have 2 running VMs but the pool allows at most 1 "
        "per owner (maxVmsPerOwner)",
    ]


def test_leftover_containers_count_for_capacity_but_not_as_vms() -> None:
    desired = state(pool=PoolSpec(max_vms=0))
    leftovers = [("container/old", 1, GiB, None)]
    assert admission.check(desired, BIG_HOST, also_running=leftovers) == []
    small = admission.HostCapacity(cpus=2, memory=2 * GiB)
    [problem] = admission.check(desired, small, also_running=leftovers)
    assert (problem.source, problem.address) == (None, "container/old")


def test_with_a_pool_the_refusal_is_the_pools() -> None:
    desired = state([vm("a", 1, 4 * GiB), vm("b", 1, 4 * GiB)], pool_declared=True)
    [problem] = admission.check(desired, admission.HostCapacity(cpus=8, memory=8 * GiB))
    assert str(problem) == (
        "pool.yaml:2: pool/local: running guests need 8Gi of memory but the host offers "
        "8Gi - 2Gi reserved = 6Gi; vm/b is the first that does not fit"
    )


def test_reserved_beyond_the_host_leaves_nothing() -> None:
    desired = state([vm("a", 1, GiB)], pool=PoolSpec(reserved=Reserved(vcpus=8, memory=8 * GiB)))
    assert messages(admission.check(desired, admission.HostCapacity(cpus=2, memory=4 * GiB))) == [
        "vms.yaml:11: vm/a: running guests need 1Gi of memory but the host offers 4Gi - 8Gi reserved = 0",
        "vms.yaml:11: vm/a: running guests need 1 vCPUs but the host allows "
        "(2 cores - 8 reserved) x 4 overcommit = 0",
    ]


@pytest.mark.parametrize("amount, text", [
    (8 * GiB, "8Gi"),
    (1536 * MiB, "1536Mi"),
    (21 * GiB + 512 * MiB, "21.5Gi"),
    (25_216_815_104, "~23.48Gi"),
    (0, "0"),
    (1000, "1000"),
    (3 * 2**40, "3Ti"),
])
def test_sizes_are_readable(amount: int, text: str) -> None:
    assert admission._size(amount) == text
