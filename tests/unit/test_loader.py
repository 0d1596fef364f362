"""loader.load: every kind of invalid input, placed at FILE:LINE.

Reference problems (duplicates, missing profiles and packs, cycles, playbooks,
two Pools) are found by references.resolve; they are checked here through the
same path `somnus validate` takes, so the whole message users see is asserted.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from somnus_reconciler.manifests import loader, references
from somnus_reconciler.values import model
from somnus_reconciler.values.diagnostics import InvalidInput, Source

VM = """\
apiVersion: somnus/v1
kind: VirtualMachine
metadata:
  name: coder-1
spec:
  profile: coding
  image: debian-12
"""

PROFILE = """\
apiVersion: somnus/v1
kind: ResourceProfile
metadata:
  name: coding
spec: {vcpus: 4, memory: 8Gi}
"""


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def relative(root: Path, problem: object) -> str:
    return str(problem).replace(f"{root}/", "")


def load_problems(root: Path, files: dict[str, str]) -> list[str]:
    write(root, files)
    with pytest.raises(InvalidInput) as caught:
        loader.load([root])
    return [relative(root, d) for d in caught.value.diagnostics]


def validate_problems(root: Path, files: dict[str, str]) -> list[str]:
    """Load and resolve references, as `somnus validate` does."""
    write(root, files)
    with pytest.raises(InvalidInput) as caught:
        references.resolve(loader.load([root]))
    return [relative(root, d) for d in caught.value.diagnostics]


# One document, one problem: the text of the document and the exact line that must come out.
SINGLE_PROBLEMS = {
    "bad quantity": (
        """\
        apiVersion: somnus/v1
        kind: VirtualMachine
        metadata:
          name: coder-1
        spec:
          profile: coding
          diskSize: lots
          image: debian-12
        """,
        "a.yaml:7: vm/coder-1: spec.diskSize: 'lots' is not a quantity "
        "(use Kubernetes notation such as 512Mi or 8Gi)",
    ),
    "not a mapping": (
        "- apiVersion: somnus/v1\n- kind: Pool\n",
        "a.yaml:1: a manifest must be a mapping with apiVersion, kind, metadata and spec, not a list",
    ),
    "a bare scalar": (
        "# just words\nhello world\n",
        "a.yaml:2: a manifest must be a mapping with apiVersion, kind, metadata and spec, "
        "not str 'hello world'",
    ),
    "missing kind": (
        "apiVersion: somnus/v1\nmetadata: {name: x}\nspec: {}\n",
        "a.yaml:1: missing kind (one of ResourceProfile, CapabilityPack, VirtualMachine, "
        "Container, Secret, Pool)",
    ),
    "unknown kind with hint": (
        "apiVersion: somnus/v1\nkind: VirtualMachin\nmetadata: {name: x}\n",
        "a.yaml:2: unknown kind 'VirtualMachin' (did you mean 'VirtualMachine'?); expected one of "
        "ResourceProfile, CapabilityPack, VirtualMachine, Container, Secret, Pool",
    ),
    "unknown kind without hint": (
        "apiVersion: somnus/v1\nkind: Deployment\nmetadata: {name: x}\n",
        "a.yaml:2: unknown kind 'Deployment'; expected one of "
        "ResourceProfile, CapabilityPack, VirtualMachine, Container, Secret, Pool",
    ),
    "kind that is not a string": (
        "apiVersion: somnus/v1\nkind: [Pool]\n",
        "a.yaml:2: unknown kind ['Pool']; expected one of "
        "ResourceProfile, CapabilityPack, VirtualMachine, Container, Secret, Pool",
    ),
    "duplicate top-level key": (
        "kind: Pool\nmetadata: {name: a}\nkind: Pool\napiVersion: somnus/v1\n",
        "a.yaml:3: pool/a: duplicate key 'kind' (only the last would count)",
    ),
    "wrong apiVersion": (
        VM.replace("somnus/v1", "somnus/v2"),
        "a.yaml:1: vm/coder-1: apiVersion 'somnus/v2' is not supported (use somnus/v1)",
    ),
    "missing apiVersion": (
        VM.replace("apiVersion: somnus/v1\n", "# no version\n"),
        "a.yaml:2: vm/coder-1: missing required field 'apiVersion'",
    ),
    "bad name": (
        VM.replace("coder-1", "Coder_1"),
        "a.yaml:4: vm/Coder_1: name 'Coder_1' is not a DNS-1123 label "
        "(lowercase letters, digits and '-', at most 63 characters)",
    ),
    "name too long": (
        VM.replace("coder-1", "a" * 64),
        f"a.yaml:4: vm/{'a' * 64}: name '{'a' * 64}' is not a DNS-1123 label "
        "(lowercase letters, digits and '-', at most 63 characters)",
    ),
    "name ending in a dash": (
        VM.replace("coder-1", "coder-"),
        "a.yaml:4: vm/coder-: name 'coder-' is not a DNS-1123 label "
        "(lowercase letters, digits and '-', at most 63 characters)",
    ),
    "bad pack name in a list": (
        VM + "  packs: [base-tools, Web]\n",
        "a.yaml:8: vm/coder-1: spec.packs[1]: name 'Web' is not a DNS-1123 label "
        "(lowercase letters, digits and '-', at most 63 characters)",
    ),
    "unknown field with hint": (
        VM.replace("  profile: coding", "  profil: coding"),
        "a.yaml:6: vm/coder-1: spec: unknown field 'profil' (did you mean 'profile'?)",
    ),
    "snake_case for a camelCase field": (
        VM + "  disk_size: 20Gi\n",
        "a.yaml:8: vm/coder-1: spec: unknown field 'disk_size' (did you mean 'diskSize'?)",
    ),
    "unknown field without a close name": (
        VM + "  colour: red\n",
        "a.yaml:8: vm/coder-1: spec: unknown field 'colour'",
    ),
    "unknown field in metadata": (
        VM.replace("  name: coder-1\n", "  name: coder-1\n  lables: {owner: alice}\n"),
        "a.yaml:5: vm/coder-1: metadata: unknown field 'lables' (did you mean 'labels'?)",
    ),
    "unknown field in a nested model": (
        VM + "  snapshots: {retian: 3}\n",
        "a.yaml:8: vm/coder-1: spec.snapshots: unknown field 'retian' (did you mean 'retain'?)",
    ),
    "unknown field in pack packages": (
        """\
        apiVersion: somnus/v1
        kind: CapabilityPack
        metadata: {name: tools}
        spec:
          packages:
            apt: [git]
            yum: [git]
        """,
        "a.yaml:7: pack/tools: spec.packages: unknown field 'yum'",
    ),
    "maxMemory below memory": (
        """\
        apiVersion: somnus/v1
        kind: ResourceProfile
        metadata: {name: coding}
        spec:
          vcpus: 4
          memory: 8Gi
          maxMemory: 4Gi
        """,
        "a.yaml:7: profile/coding: spec: maxMemory (4Gi) is below memory (8Gi)",
    ),
    "maxVcpus below vcpus": (
        "apiVersion: somnus/v1\nkind: ResourceProfile\nmetadata: {name: p}\n"
        "spec:\n  maxVcpus: 2\n  vcpus: 4\n  memory: 1Gi\n",
        "a.yaml:5: profile/p: spec: maxVcpus (2) is below vcpus (4)",
    ),
    "profile and resources both": (
        VM + "  resources: {vcpus: 2, memory: 2Gi}\n",
        "a.yaml:5: vm/coder-1: spec: give exactly one of profile or resources",
    ),
    "neither profile nor resources": (
        VM.replace("  profile: coding\n", ""),
        "a.yaml:5: vm/coder-1: spec: give exactly one of profile or resources",
    ),
    "missing required field": (
        VM.replace("  image: debian-12\n", ""),
        "a.yaml:5: vm/coder-1: spec: missing required field 'image'",
    ),
    "missing metadata": (
        "apiVersion: somnus/v1\nkind: Container\nspec: {image: x}\n",
        "a.yaml:1: container/?: missing required field 'metadata'",
    ),
    "bad osFamily": (
        VM + "  osFamily: linux\n",
        "a.yaml:8: vm/coder-1: spec.osFamily: 'linux' is not one of 'debian', 'windows' or 'macos'",
    ),
    "empty image": (
        VM.replace("image: debian-12", "image: ''"),
        "a.yaml:7: vm/coder-1: spec.image: must not be empty",
    ),
    "number in env": (
        "apiVersion: somnus/v1\nkind: Container\nmetadata: {name: box}\n"
        "spec:\n  image: x\n  env:\n    PORT: 8080\n",
        "a.yaml:7: container/box: spec.env.PORT: expected a string, got 8080 (quote it in YAML)",
    ),
    "spec left empty": (
        "apiVersion: somnus/v1\nkind: Container\nmetadata: {name: box}\nspec:\n",
        "a.yaml:4: container/box: spec: expected a mapping, got nothing",
    ),
    "packs not a list": (
        VM + "  packs: base-tools\n",
        "a.yaml:8: vm/coder-1: spec.packs: expected a list, got str 'base-tools'",
    ),
    "container cpus zero": (
        "apiVersion: somnus/v1\nkind: Container\nmetadata: {name: box}\n"
        "spec:\n  image: x\n  resources:\n    cpus: 0\n",
        "a.yaml:7: container/box: spec.resources.cpus: should be greater than 0 (got 0)",
    ),
    "retention out of range": (
        VM + "  snapshots:\n    retain: 0\n",
        "a.yaml:9: vm/coder-1: spec.snapshots.retain: should be greater than or equal to 1 (got 0)",
    ),
    "duplicate key": (
        VM + "  image: debian-13\n",
        "a.yaml:8: vm/coder-1: spec: duplicate key 'image' (only the last would count)",
    ),
    "pool with a bad domain type": (
        "apiVersion: somnus/v1\nkind: Pool\nmetadata: {name: local}\nspec: {domainType: xen}\n",
        "a.yaml:4: pool/local: spec.domainType: 'xen' is not one of 'kvm' or 'qemu'",
    ),
}


@pytest.mark.parametrize("text, expected", SINGLE_PROBLEMS.values(), ids=SINGLE_PROBLEMS.keys())
def test_each_invalid_document_is_reported_at_its_line(tmp_path: Path, text: str, expected: str) -> None:
    assert load_problems(tmp_path, {"a.yaml": text}) == [expected]


def test_vcpus_that_are_not_a_number(tmp_path: Path) -> None:
    [problem] = load_problems(tmp_path, {"a.yaml": PROFILE.replace("vcpus: 4", "vcpus: four")})
    assert problem.startswith("a.yaml:5: profile/coding: spec.vcpus: should be a valid integer")
    assert problem.endswith("(got 'four')")


@pytest.mark.parametrize("text, line", [
    ("apiVersion: somnus/v1\nkind: [Pool\nmetadata: {}\n", 3),
    ("apiVersion: somnus/v1\n  kind: Pool\n", 2),
    ("key: 'unterminated\n", 2),
    ("a: !python/object:os.system ls\n", 1),
])
def test_yaml_syntax_errors_give_the_parsers_line(tmp_path: Path, text: str, line: int) -> None:
    [problem] = load_problems(tmp_path, {"a.yaml": text})
    assert problem.startswith(f"a.yaml:{line}: invalid YAML: ")


def test_yaml_syntax_error_keeps_the_parsers_message(tmp_path: Path) -> None:
    [problem] = load_problems(tmp_path, {"a.yaml": "apiVersion: somnus/v1\n  kind: Pool\n"})
    assert problem == "a.yaml:2: invalid YAML: mapping values are not allowed here"


def test_documents_before_a_syntax_error_are_still_checked(tmp_path: Path) -> None:
    text = VM.replace("coder-1", "Coder") + "---\nkind: {\n"
    problems = load_problems(tmp_path, {"a.yaml": text})
    assert [p.split(":")[1] for p in problems] == ["4", "10"]
    assert "invalid YAML" in problems[1]


def test_unknown_field_and_missing_field_in_inline_resources(tmp_path: Path) -> None:
    text = VM.replace("  profile: coding\n", "  resources:\n    vcpus: 2\n    memroy: 2Gi\n")
    assert load_problems(tmp_path, {"a.yaml": text}) == [
        "a.yaml:6: vm/coder-1: spec.resources: missing required field 'memory'",
        "a.yaml:8: vm/coder-1: spec.resources: unknown field 'memroy' (did you mean 'memory'?)",
    ]


def test_every_problem_of_every_file_is_reported_together(tmp_path: Path) -> None:
    files = {
        "a.yaml": VM.replace("  profile: coding", "  profil: coding") + "---\n"
        + PROFILE.replace("8Gi", "eight"),
        "b/c.yml": "- not\n- a manifest\n",
        "b/d.yaml": "kind: [\n",
    }
    write(tmp_path, files)
    with pytest.raises(InvalidInput) as caught:
        loader.load([tmp_path, tmp_path / "missing.yaml"])
    assert [relative(tmp_path, d) for d in caught.value.diagnostics] == [
        "missing.yaml: no such file or directory",
        "a.yaml:6: vm/coder-1: spec: unknown field 'profil' (did you mean 'profile'?)",
        "a.yaml:13: profile/coding: spec.memory: 'eight' is not a quantity "
        "(use Kubernetes notation such as 512Mi or 8Gi)",
        "b/c.yml:1: a manifest must be a mapping with apiVersion, kind, metadata and spec, not a list",
        "b/d.yaml:2: invalid YAML: expected the node content, but found '<stream end>' "
        "(while parsing a flow node)",
    ]


def test_several_problems_in_one_document_come_in_line_order(tmp_path: Path) -> None:
    text = """\
    apiVersion: somnus/v1
    kind: VirtualMachine
    metadata:
      name: coder-1
      labels: {owner: 7}
    spec:
      profile: coding
      image: debian-12
      osFamily: beos
      diskSize: 1 TB
      runing: true
    """
    assert [p.split(": ", 2)[-1] for p in load_problems(tmp_path, {"a.yaml": text})] == [
        "metadata.labels.owner: expected a string, got 7 (quote it in YAML)",
        "spec.osFamily: 'beos' is not one of 'debian', 'windows' or 'macos'",
        "spec.diskSize: '1 TB' is not a quantity (use Kubernetes notation such as 512Mi or 8Gi)",
        "spec: unknown field 'runing' (did you mean 'running'?)",
    ]


def test_multi_document_file_gives_each_document_its_own_line(tmp_path: Path) -> None:
    text = "# profiles and a VM\n" + PROFILE + "---\n---\n# the VM\n" + VM + "...\n---\n"
    write(tmp_path, {"a.yaml": text})
    declared = loader.load([tmp_path / "a.yaml"])
    assert [(d.address, d.source.line) for d in declared] == [("profile/coding", 2), ("vm/coder-1", 10)]
    assert declared[1].source == Source(tmp_path / "a.yaml", 10)
    assert isinstance(declared[1].manifest, model.VirtualMachine)
    assert declared[1].manifest.spec.image == "debian-12"


def test_field_lines_point_into_the_document(tmp_path: Path) -> None:
    write(tmp_path, {"a.yaml": "---\n" + VM + "  packs:\n    - base-tools\n    - web\n"})
    [vm] = loader.load([tmp_path])
    assert vm.source.line == 2
    assert vm.source_of("spec.profile").line == 7
    assert vm.source_of("spec.packs[1]").line == 11
    assert vm.source_of("no.such.field") == vm.source


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n---\n", "--- \n...\n"])
def test_empty_documents_are_skipped(tmp_path: Path, text: str) -> None:
    write(tmp_path, {"a.yaml": text, "b.yaml": VM})
    assert [d.address for d in loader.load([tmp_path])] == ["vm/coder-1"]


def test_valid_manifests_of_every_kind_load(tmp_path: Path) -> None:
    write(tmp_path, {"all.yaml": "\n---\n".join([
        PROFILE,
        VM,
        "apiVersion: somnus/v1\nkind: CapabilityPack\nmetadata: {name: tools}\nspec: {}\n",
        "apiVersion: somnus/v1\nkind: Container\nmetadata: {name: box}\nspec: {image: x}\n",
        "apiVersion: somnus/v1\nkind: Pool\nmetadata: {name: local}\n",
    ])})
    assert [d.address for d in loader.load([tmp_path])] == [
        "profile/coding", "vm/coder-1", "pack/tools", "container/box", "pool/local",
    ]


def test_directories_are_searched_recursively_in_sorted_order(tmp_path: Path) -> None:
    # Each file declares a pack named after it: the packs loaded are the files read.
    write(tmp_path, {path: pack(name, []) for path, name in {
        "b.yaml": "b", "a.yml": "a", "z/deep/c.yaml": "c", "z/b.yaml": "zb",
        "notes.txt": "notes", "z/readme.md": "readme", ".github/workflows/ci.yml": "ci",
        "z/.hidden.yaml": "hidden",
    }.items()})
    assert [d.address for d in loader.load([tmp_path])] == ["pack/a", "pack/b", "pack/zb", "pack/c"]


def test_files_are_taken_as_given_and_only_once(tmp_path: Path) -> None:
    write(tmp_path, {"x.txt": pack("x", []), "d/a.yaml": pack("a", [])})
    declared = loader.load([tmp_path / "x.txt", tmp_path / "d", tmp_path / "d/a.yaml"])
    assert [(d.address, d.source.file) for d in declared] == [
        ("pack/x", tmp_path / "x.txt"), ("pack/a", tmp_path / "d/a.yaml"),
    ]


def test_missing_paths_are_all_reported(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as caught:
        loader.load([tmp_path / "gone", tmp_path, tmp_path / "also-gone.yaml"])
    assert [relative(tmp_path, d) for d in caught.value.diagnostics] == [
        "gone: no such file or directory", "also-gone.yaml: no such file or directory",
    ]


def test_a_packs_playbook_is_not_read_as_a_manifest(tmp_path: Path) -> None:
    write(tmp_path, {
        "packs/browser.yaml": "apiVersion: somnus/v1\nkind: CapabilityPack\n"
        "metadata: {name: browser}\nspec: {playbook: playbooks/browser.yml}\n",
        "packs/playbooks/browser.yml": "- hosts: all\n  tasks: []\n",
        "packs/playbooks/stray.yml": "- hosts: all\n",
    })
    assert load_problems(tmp_path, {}) == [
        "packs/playbooks/stray.yml:1: a manifest must be a mapping with apiVersion, kind, "
        "metadata and spec, not a list",
    ]


# --- problems across documents, found when references are resolved ---

def test_duplicate_kind_and_name_across_two_files(tmp_path: Path) -> None:
    assert validate_problems(tmp_path, {
        "a.yaml": PROFILE + "---\n" + VM, "b.yaml": "# again\n" + VM,
    }) == ["b.yaml:2: vm/coder-1: declared twice: also at a.yaml:7"]


def test_same_name_in_different_kinds_is_fine(tmp_path: Path) -> None:
    write(tmp_path, {"a.yaml": PROFILE.replace("name: coding", "name: coder-1") + "---\n"
                     + VM.replace("profile: coding", "profile: coder-1")})
    desired = references.resolve(loader.load([tmp_path]))
    assert list(desired.vms) == ["coder-1"]


def test_missing_profile_reference(tmp_path: Path) -> None:
    text = PROFILE + "---\n" + VM.replace("profile: coding", "profile: codng")
    assert validate_problems(tmp_path, {"a.yaml": text}) == [
        "a.yaml:12: vm/coder-1: spec.profile: profile 'codng' is not declared "
        "(no ResourceProfile of that name) (did you mean 'coding'?)",
    ]


def test_missing_pack_references(tmp_path: Path) -> None:
    text = PROFILE + "---\n" + VM + "  packs: [base-tools, gpu]\n"
    text += "---\napiVersion: somnus/v1\nkind: Container\nmetadata: {name: box}\n"
    text += "spec:\n  image: x\n  packs:\n    - base-tool\n"
    assert validate_problems(tmp_path, {"a.yaml": text}) == [
        "a.yaml:14: vm/coder-1: spec.packs[0]: pack 'base-tools' is not declared (no CapabilityPack of that name)",
        "a.yaml:14: vm/coder-1: spec.packs[1]: pack 'gpu' is not declared (no CapabilityPack of that name)",
        "a.yaml:22: container/box: spec.packs[0]: pack 'base-tool' is not declared (no CapabilityPack of that name)",
    ]


def pack(name: str, requires: list[str], playbook: str | None = None) -> str:
    text = f"apiVersion: somnus/v1\nkind: CapabilityPack\nmetadata: {{name: {name}}}\nspec:\n"
    text += f"  requires: [{', '.join(requires)}]\n"
    return text + (f"  playbook: {playbook}\n" if playbook else "")


def test_requires_cycle_names_the_cycle(tmp_path: Path) -> None:
    text = "\n---\n".join([pack("a", ["b"]), pack("b", ["c"]), pack("c", ["a"]), pack("d", ["a"])])
    assert validate_problems(tmp_path, {"packs.yaml": text}) == [
        "packs.yaml:5: pack/a: spec.requires: requirements form a cycle: pack/a -> pack/b -> pack/c -> pack/a",
    ]


def test_missing_requirement(tmp_path: Path) -> None:
    assert validate_problems(tmp_path, {"packs.yaml": pack("web", ["base-tools"])}) == [
        "packs.yaml:5: pack/web: spec.requires[0]: pack 'base-tools' is not declared "
        "(no CapabilityPack of that name)",
    ]


def test_playbook_escaping_the_manifest_directory(tmp_path: Path) -> None:
    write(tmp_path, {"outside.yml": "- hosts: all\n"})
    problems = validate_problems(tmp_path, {"packs/web.yaml": pack("web", [], "../outside.yml")})
    assert problems == [
        "packs/web.yaml:6: pack/web: spec.playbook: '../outside.yml' leads outside packs, "
        "the directory of this manifest",
    ]


def test_two_pools(tmp_path: Path) -> None:
    pool = "apiVersion: somnus/v1\nkind: Pool\nmetadata: {name: %s}\n"
    assert validate_problems(tmp_path, {"a.yaml": pool % "one", "b/c.yaml": pool % "two"}) == [
        "b/c.yaml:1: pool/two: only one Pool may be declared; pool/one is declared at a.yaml:1",
    ]


def test_reference_problems_are_reported_together(tmp_path: Path) -> None:
    files = {
        "a.yaml": VM.replace("profile: coding", "profile: gone"),
        "b.yaml": VM,
        "c.yaml": "\n---\n".join([pack("x", ["y"]), pack("y", ["x"]), pack("z", [], "nope.yml")]),
    }
    problems = validate_problems(tmp_path, files)
    assert [p.split(": ")[0] for p in problems] == [
        "b.yaml:1", "a.yaml:6", "c.yaml:20", "c.yaml:5",
    ]
    assert "declared twice" in problems[0]
    assert "profile 'gone' is not declared" in problems[1]
    assert "spec.playbook: 'nope.yml' does not exist" in problems[2]
    assert problems[3].endswith("pack/x -> pack/y -> pack/x")


def test_a_backup_dir_in_a_system_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "programs").symlink_to("/usr/lib")
    vm = PROFILE + "---\n" + VM + "  backup:\n    retain: 3\n    dir: /etc/backups\n"
    pool = f"apiVersion: somnus/v1\nkind: Pool\nmetadata: {{name: p}}\nspec:\n  backup: {{dir: {tmp_path}/programs}}\n"
    assert validate_problems(tmp_path, {"a.yaml": vm, "pool.yaml": pool}) == [
        "pool.yaml:5: pool/p: spec.backup.dir: 'programs' (it resolves to /usr/lib) "
        "is a system directory; name one that holds backups only",
        "a.yaml:16: vm/coder-1: spec.backup.dir: '/etc/backups' is a system directory; "
        "name one that holds backups only",
    ]
    write(tmp_path, {"a.yaml": vm.replace("/etc/backups", f"{tmp_path}/backups"), "pool.yaml": ""})
    desired = references.resolve(loader.load([tmp_path]))
    assert desired.vms["coder-1"].backup is not None and desired.vms["coder-1"].backup.dir == f"{tmp_path}/backups"
