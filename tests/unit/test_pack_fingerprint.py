"""pack_fingerprint: what an installed pack's mark records, so a change re-installs it."""

from __future__ import annotations

from pathlib import Path

import pytest

from somnus_reconciler.manifests import pack_files
from somnus_reconciler.values.desired import DesiredPack
from somnus_reconciler.values.diagnostics import Source
from somnus_reconciler.values.model import CapabilityPackSpec


def make_pack(manifest: Path, **spec: object) -> DesiredPack:
    fields: dict[str, object] = {"packages": {"apt": ["jq"]}, "verify": ["jq --version"]}
    fields.update(spec)
    return DesiredPack(name="tools", spec=CapabilityPackSpec.model_validate(fields),
                       source=Source(manifest, 3))


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "packs" / "tools.yaml"
    path.parent.mkdir()
    path.write_text("# the manifest itself is not hashed; only what the run reads\n")
    (path.parent / "extra").mkdir()
    (path.parent / "extra" / "tools.yml").write_text("- hosts: all\n  tasks: []\n")
    return path


def test_fingerprint_is_stable(manifest: Path) -> None:
    first = pack_files.pack_fingerprint(make_pack(manifest, playbook="extra/tools.yml"))
    second = pack_files.pack_fingerprint(make_pack(manifest, playbook="extra/tools.yml"))
    assert first == second
    assert len(first) == 16 and int(first, 16) >= 0


def test_fingerprint_ignores_where_and_in_which_order_the_spec_was_written(manifest: Path) -> None:
    a = make_pack(manifest, description="x", verify=["a", "b"])
    b = DesiredPack(name="tools", spec=a.spec.model_copy(), source=Source(manifest, 40))
    assert pack_files.pack_fingerprint(a) == pack_files.pack_fingerprint(b)


@pytest.mark.parametrize("change", [
    {"packages": {"apt": ["jq", "curl"]}},
    {"packages": {"apt": ["jq"], "brew": ["jq"]}},
    {"verify": ["jq --version", "true"]},
    {"verify": []},
    {"description": "now described"},
    {"requires": ["base-tools"]},
    {"playbook": "extra/tools.yml"},
])
def test_fingerprint_changes_with_the_spec(manifest: Path, change: dict[str, object]) -> None:
    assert (pack_files.pack_fingerprint(make_pack(manifest))
            != pack_files.pack_fingerprint(make_pack(manifest, **change)))


def test_fingerprint_changes_with_the_packs_playbook_content(manifest: Path) -> None:
    pack = make_pack(manifest, playbook="extra/tools.yml")
    before = pack_files.pack_fingerprint(pack)
    (manifest.parent / "extra" / "tools.yml").write_text("- hosts: all\n  tasks:\n    - ansible.builtin.ping:\n")
    assert pack_files.pack_fingerprint(pack) != before


def test_playbook_is_resolved_relative_to_the_manifest_file(manifest: Path, tmp_path: Path) -> None:
    pack = make_pack(manifest, playbook="extra/tools.yml")
    assert pack_files.pack_playbook_path(pack) == (manifest.parent / "extra" / "tools.yml").resolve()
    # The same spec declared elsewhere reads another file: another fingerprint.
    other = tmp_path / "elsewhere" / "tools.yaml"
    (other.parent / "extra").mkdir(parents=True)
    (other.parent / "extra" / "tools.yml").write_text("- hosts: all\n  tasks: [{ansible.builtin.ping: {}}]\n")
    moved = DesiredPack(name="tools", spec=pack.spec, source=Source(other, 3))
    assert pack_files.pack_fingerprint(moved) != pack_files.pack_fingerprint(pack)


def test_fingerprint_covers_the_generic_pack_playbook(manifest: Path, monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    pack = make_pack(manifest)
    before = pack_files.pack_fingerprint(pack)
    copy = tmp_path / "playbooks"
    copy.mkdir()
    for path in pack_files.PLAYBOOKS_DIR.rglob("*.yml"):
        target = copy / path.relative_to(pack_files.PLAYBOOKS_DIR)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    monkeypatch.setattr(pack_files, "PLAYBOOKS_DIR", copy)
    assert pack_files.pack_fingerprint(pack) == before
    (copy / "pack.yml").write_text((copy / "pack.yml").read_text() + "\n# edited\n")
    assert pack_files.pack_fingerprint(pack) != before


def test_a_missing_playbook_still_fingerprints(manifest: Path) -> None:
    pack = make_pack(manifest, playbook="extra/absent.yml")
    assert pack_files.pack_fingerprint(pack) != pack_files.pack_fingerprint(make_pack(manifest))
