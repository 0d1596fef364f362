"""references.resolve: desired values built from declared manifests, and reference problems."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from somnus_reconciler.manifests import loader, references
from somnus_reconciler.values import model
from somnus_reconciler.values.desired import DesiredState, VmResources
from somnus_reconciler.values.diagnostics import InvalidInput, Source

GiB = 2**30
_lines = iter(range(1, 10_000))


def declare(kind: str, name: str, spec: dict[str, Any] | None = None, *,
            labels: dict[str, str] | None = None, file: Path = Path("m.yaml"),
            line: int | None = None) -> loader.Declared:
    document: dict[str, Any] = {
        "apiVersion": "somnus/v1", "kind": kind, "metadata": {"name": name, "labels": labels or {}},
    }
    if spec is not None:
        document["spec"] = spec
    manifest = model.MANIFEST_ADAPTER.validate_python(document, by_alias=True, by_name=False)
    return loader.Declared(manifest, Source(file, line if line is not None else next(_lines)))


def profile(name: str, **spec: Any) -> loader.Declared:
    return declare("ResourceProfile", name, spec)


def pack(name: str, requires: Sequence[str] = (), *, line: int | None = None) -> loader.Declared:
    return declare("CapabilityPack", name, {"requires": list(requires)}, line=line)


def vm(name: str, *, labels: dict[str, str] | None = None, line: int | None = None,
       **spec: Any) -> loader.Declared:
    return declare("VirtualMachine", name, {"image": "debian-12", **spec}, labels=labels, line=line)


def container(name: str, *, labels: dict[str, str] | None = None, line: int | None = None,
              **spec: Any) -> loader.Declared:
    return declare("Container", name, {"image": "somnus/base:bookworm", **spec}, labels=labels, line=line)


def problems_of(declared: list[loader.Declared]) -> list[str]:
    with pytest.raises(InvalidInput) as caught:
        references.resolve(declared)
    return [str(d) for d in caught.value.diagnostics]


CODING = profile("coding", vcpus=4, memory="8Gi", maxVcpus=8, maxMemory="16Gi")


@pytest.mark.parametrize("declared, expected", [
    ([CODING, vm("a", profile="coding")], VmResources(4, 8 * GiB, 8, 16 * GiB)),
    ([profile("p", vcpus=2, memory="3Gi"), vm("a", profile="p")], VmResources(2, 3 * GiB, 2, 3 * GiB)),
    ([vm("a", resources={"vcpus": 2, "memory": "2Gi"})], VmResources(2, 2 * GiB, 2, 2 * GiB)),
    ([vm("a", resources={"vcpus": 2, "memory": "2Gi", "maxVcpus": 6})], VmResources(2, 2 * GiB, 6, 2 * GiB)),
    ([vm("a", resources={"vcpus": 1, "memory": "512Mi", "maxMemory": "1Gi"})],
     VmResources(1, 512 * 2**20, 1, GiB)),
], ids=["profile", "profile-without-headroom", "inline", "inline-max-vcpus", "inline-max-memory"])
def test_vm_resources_come_from_profile_or_inline(declared: list[loader.Declared], expected: VmResources) -> None:
    assert references.resolve(declared).vms["a"].resources == expected


def test_vm_fields_are_carried_over() -> None:
    declared = vm("coder-1", profile="coding", image="ubuntu-24.04", diskSize="20Gi",
                  osFamily="windows", running=False, snapshots={"retain": 7},
                  labels={"owner": "alice", "team": "ml"})
    desired = references.resolve([CODING, declared]).vms["coder-1"]
    assert (desired.name, desired.image, desired.disk_size, desired.os_family) == (
        "coder-1", "ubuntu-24.04", 20 * GiB, "windows")
    assert (desired.running, desired.snapshot_retain, desired.owner, desired.profile) == (
        False, 7, "alice", "coding")
    assert desired.source == declared.source
    assert desired.packs == ()


def test_vm_defaults() -> None:
    desired = references.resolve([vm("a", resources={"vcpus": 1, "memory": "1Gi"})]).vms["a"]
    assert (desired.disk_size, desired.os_family, desired.running) == (10 * GiB, "debian", True)
    assert (desired.snapshot_retain, desired.owner, desired.profile) == (5, None, None)


PACKS = [pack("base"), pack("python", ["base"]), pack("ml", ["python", "base"]), pack("web", ["base"]),
         pack("notes")]


@pytest.mark.parametrize("wanted, order", [
    ([], ()),
    (["base"], ("base",)),
    (["ml"], ("base", "python", "ml")),
    (["web", "ml"], ("base", "web", "python", "ml")),
    (["notes", "ml", "web"], ("notes", "base", "python", "ml", "web")),
    (["ml", "python", "base"], ("base", "python", "ml")),
])
def test_packs_expand_in_install_order(wanted: list[str], order: tuple[str, ...]) -> None:
    desired = references.resolve([*PACKS, vm("a", resources={"vcpus": 1, "memory": "1Gi"}, packs=wanted),
                                  container("box", packs=wanted)])
    assert desired.vms["a"].packs == order
    assert desired.containers["box"].packs == order


def test_container_values() -> None:
    declared = container("box", command=["sleep", "infinity"], resources={"cpus": 1.5, "memory": "512Mi"},
                         network="host", env={"ZED": "1", "ALPHA": "2"}, labels={"owner": "bob"})
    desired = references.resolve([declared]).containers["box"]
    assert desired.command == ("sleep", "infinity")
    assert (desired.cpus, desired.memory, desired.network) == (1.5, 512 * 2**20, "host")
    assert desired.env == (("ALPHA", "2"), ("ZED", "1"))
    assert desired.owner == "bob"
    assert desired.source == declared.source


def test_container_defaults() -> None:
    desired = references.resolve([container("box")]).containers["box"]
    assert (desired.command, desired.cpus, desired.memory, desired.network, desired.env) == (
        None, 1.0, GiB, "none", ())


def test_every_pack_becomes_a_desired_pack() -> None:
    desired = references.resolve(PACKS)
    assert list(desired.packs) == ["base", "python", "ml", "web", "notes"]
    assert desired.packs["ml"].spec.requires == ["python", "base"]
    assert desired.packs["ml"].source == PACKS[2].source


def test_without_a_pool_the_defaults_apply() -> None:
    desired = references.resolve([])
    assert desired == DesiredState({}, {}, {}, model.PoolSpec(), None, None)


def test_the_pool_is_taken_from_its_manifest() -> None:
    pool = declare("Pool", "local", {"maxVms": 3, "reserved": {"vcpus": 2, "memory": "4Gi"}})
    desired = references.resolve([pool])
    assert (desired.pool.max_vms, desired.pool.reserved.memory) == (3, 4 * GiB)
    assert (desired.pool_source, desired.pool_name) == (pool.source, "local")


def test_duplicates_name_both_places() -> None:
    first = vm("a", resources={"vcpus": 1, "memory": "1Gi"}, line=3)
    again = declare("VirtualMachine", "a", {"image": "x", "profile": "p"}, file=Path("b.yaml"), line=9)
    third = declare("VirtualMachine", "a", {"image": "x", "profile": "p"}, file=Path("c.yaml"), line=1)
    assert problems_of([first, again, third]) == [
        "b.yaml:9: vm/a: declared twice: also at m.yaml:3",
        "c.yaml:1: vm/a: declared twice: also at m.yaml:3",
    ]


def test_more_than_one_pool() -> None:
    pools = [declare("Pool", n, {}, file=Path(f"{n}.yaml"), line=1) for n in ("a", "b", "c")]
    assert problems_of(pools) == [
        "b.yaml:1: pool/b: only one Pool may be declared; pool/a is declared at a.yaml:1",
        "c.yaml:1: pool/c: only one Pool may be declared; pool/a is declared at a.yaml:1",
    ]


def test_missing_references_with_hints() -> None:
    declared = [
        CODING, pack("base-tools"),
        vm("a", profile="codin", packs=["base-tool", "gpu"], line=40),
        container("box", packs=["base-tools", "nope"], line=50),
        pack("web", ["base-tols"], line=60),
    ]
    assert problems_of(declared) == [
        "m.yaml:40: vm/a: spec.profile: profile 'codin' is not declared "
        "(no ResourceProfile of that name) (did you mean 'coding'?)",
        "m.yaml:40: vm/a: spec.packs[0]: pack 'base-tool' is not declared "
        "(no CapabilityPack of that name) (did you mean 'base-tools'?)",
        "m.yaml:40: vm/a: spec.packs[1]: pack 'gpu' is not declared (no CapabilityPack of that name)",
        "m.yaml:50: container/box: spec.packs[1]: pack 'nope' is not declared "
        "(no CapabilityPack of that name)",
        "m.yaml:60: pack/web: spec.requires[0]: pack 'base-tols' is not declared "
        "(no CapabilityPack of that name) (did you mean 'base-tools'?)",
    ]


@pytest.mark.parametrize("graph, cycles", [
    ({"a": ["a"]}, ["pack/a -> pack/a"]),
    ({"a": ["b"], "b": ["a"]}, ["pack/a -> pack/b -> pack/a"]),
    ({"x": ["a"], "a": ["b"], "b": ["c"], "c": ["a"]}, ["pack/a -> pack/b -> pack/c -> pack/a"]),
    ({"a": ["b", "c"], "b": ["a"], "c": ["a"]}, ["pack/a -> pack/b -> pack/a", "pack/a -> pack/c -> pack/a"]),
    ({"a": ["b"], "b": [], "c": ["a", "b"]}, []),
])
def test_requires_cycles(graph: dict[str, list[str]], cycles: list[str]) -> None:
    declared = [pack(name, requires) for name, requires in graph.items()]
    if not cycles:
        references.resolve(declared)
        return
    problems = problems_of(declared)
    assert [p.split("requirements form a cycle: ")[1] for p in problems] == cycles


def test_cycle_is_reported_at_the_requirement_that_closes_it(tmp_path: Path) -> None:
    (tmp_path / "packs.yaml").write_text(
        "apiVersion: somnus/v1\nkind: CapabilityPack\nmetadata: {name: a}\n"
        "spec:\n  requires:\n    - c\n    - b\n---\n"
        "apiVersion: somnus/v1\nkind: CapabilityPack\nmetadata: {name: b}\nspec: {requires: [a]}\n"
        "---\napiVersion: somnus/v1\nkind: CapabilityPack\nmetadata: {name: c}\nspec: {}\n"
    )
    assert [str(d).replace(f"{tmp_path}/", "") for d in _invalid(tmp_path)] == [
        "packs.yaml:7: pack/a: spec.requires: requirements form a cycle: pack/a -> pack/b -> pack/a",
    ]


def _invalid(root: Path) -> tuple[object, ...]:
    with pytest.raises(InvalidInput) as caught:
        references.resolve(loader.load([root]))
    return caught.value.diagnostics


@pytest.mark.parametrize("playbook, problem", [
    ("extra/web.yml", None),
    ("./web-top.yml", None),
    ("extra/../web-top.yml", None),
    ("extra/missing.yml", "does not exist"),
    ("extra", "does not exist"),
    ("../outside.yml", "leads outside"),
    ("extra/../../outside.yml", "leads outside"),
    ("extra/link.yml", "leads outside"),
    ("/etc/hostname", "must be a path relative to this manifest's directory"),
])
def test_playbook_stays_beside_the_manifest(tmp_path: Path, playbook: str, problem: str | None) -> None:
    packs = tmp_path / "packs"
    (packs / "extra").mkdir(parents=True)
    (packs / "extra" / "web.yml").write_text("- hosts: all\n")
    (packs / "web-top.yml").write_text("- hosts: all\n")
    (tmp_path / "outside.yml").write_text("- hosts: all\n")
    (packs / "extra" / "link.yml").symlink_to(tmp_path / "outside.yml")
    declared = declare("CapabilityPack", "web", {"playbook": playbook}, file=packs / "web.yaml", line=1)
    if problem is None:
        assert references.resolve([declared]).packs["web"].spec.playbook == playbook
    else:
        [message] = problems_of([declared])
        assert message.startswith(f"{packs}/web.yaml:1: pack/web: spec.playbook: {playbook!r} {problem}")


def test_nothing_is_built_while_references_are_broken() -> None:
    # A VM whose profile is missing cannot get resources: the error is reported, not a KeyError.
    assert len(problems_of([vm("a", profile="gone"), vm("b", profile="gone")])) == 2


def test_container_volumes_are_named_and_mounted_at_absolute_paths() -> None:
    state = references.resolve([container("box", volumes=[{"name": "data", "mountPath": "/data"}])])
    assert state.containers["box"].volumes == (("data", "/data"),)
    plain = references.resolve([container("box")]).containers["box"]
    assert plain.volumes == () and plain.spec_hash == references.resolve([container("box")]).containers["box"].spec_hash


@pytest.mark.parametrize(("volumes", "error"), [
    ([{"name": "data", "mountPath": "data"}], "must be an absolute path"),
    ([{"name": "data", "mountPath": "/"}], "cannot be mounted on /"),
    ([{"name": "data", "mountPath": "/a"}, {"name": "data", "mountPath": "/b"}], "name 'data' is given twice"),
    ([{"name": "/etc", "mountPath": "/a"}], "String should match pattern"),
])
def test_a_volume_is_never_a_host_path_nor_given_twice(volumes: list[dict[str, str]], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        container("box", volumes=volumes)


def test_a_vm_takes_the_pools_backup_policy_unless_it_has_its_own() -> None:
    pool = declare("Pool", "p", {"backup": {"schedule": "24h", "retain": 3}})
    own = vm("a", resources={"vcpus": 1, "memory": "1Gi"}, backup={"schedule": "onPackChange"})
    inherits = vm("b", resources={"vcpus": 1, "memory": "1Gi"})
    state = references.resolve([pool, own, inherits])
    assert state.vms["a"].backup is not None and state.vms["a"].backup.schedule == "onPackChange"
    assert state.vms["b"].backup is not None and (state.vms["b"].backup.schedule, state.vms["b"].backup.retain) == (
        "24h", 3)
