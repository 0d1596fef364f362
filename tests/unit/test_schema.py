"""model.json_schema(), as `somnus schema` prints it for editors, agrees with the shipped manifests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from somnus_reconciler.manifests import loader
from somnus_reconciler.values import model

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_DIRS = [ROOT / "manifests", ROOT / "capability_packs"]


def shipped_documents() -> list[tuple[str, Any]]:
    """Every document of every YAML file under manifests/ and capability_packs/, except
    the Ansible playbooks that packs name (they live beside the packs, and are not manifests)."""
    files = sorted(p for d in SHIPPED_DIRS for pattern in ("*.yaml", "*.yml") for p in d.rglob(pattern))
    by_file = {path: [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
               for path in files}
    playbooks = {
        (path.parent / doc["spec"]["playbook"]).resolve()
        for path, docs in by_file.items() for doc in docs
        if isinstance(doc, dict) and doc.get("kind") == "CapabilityPack"
        and (doc.get("spec") or {}).get("playbook")
    }
    return [
        (f"{path.relative_to(ROOT)}#{index}", doc)
        for path, docs in by_file.items() if path.resolve() not in playbooks
        for index, doc in enumerate(docs)
    ]


SHIPPED = shipped_documents()


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = model.json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_documents_are_shipped() -> None:
    assert len(SHIPPED) >= 1
    kinds = {doc.get("kind") for _, doc in SHIPPED}
    assert {"ResourceProfile", "CapabilityPack"} <= kinds


@pytest.mark.parametrize("document", [doc for _, doc in SHIPPED], ids=[name for name, _ in SHIPPED])
def test_shipped_document_is_valid_against_the_schema(
    validator: jsonschema.Draft202012Validator, document: Any
) -> None:
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]
    assert errors == []


def test_shipped_manifests_load_and_resolve() -> None:
    from somnus_reconciler.manifests import references

    desired = references.resolve(loader.load(SHIPPED_DIRS))
    built_in = {"base-tools", "web-development", "ai-research", "data-analysis", "research-browser"}
    assert built_in <= set(desired.packs)
    assert desired.packs["web-development"].spec.requires == ["base-tools"]


def test_seed_profiles() -> None:
    declared = loader.load([ROOT / "manifests" / "profiles.yaml"])
    profiles = {d.manifest.metadata.name: d.manifest.spec for d in declared
                if isinstance(d.manifest, model.ResourceProfile)}
    assert {name: (p.vcpus, p.memory, p.gpu) for name, p in profiles.items()} == {
        "idle": (1, 4 * 2**30, False),
        "coding": (4, 8 * 2**30, False),
        "research": (2, 6 * 2**30, False),
        "media-creation": (6, 16 * 2**30, True),
    }
    for p in profiles.values():
        assert p.max_vcpus is not None and p.max_vcpus > p.vcpus
        assert p.max_memory is not None and p.max_memory > p.memory


VALID: dict[str, Any] = {
    "apiVersion": "somnus/v1",
    "kind": "VirtualMachine",
    "metadata": {"name": "coder-1", "labels": {"owner": "alice"}},
    "spec": {"profile": "coding", "image": "debian-12", "diskSize": "20Gi", "packs": ["base-tools"]},
}


def changed(path: list[str], value: Any) -> dict[str, Any]:
    document = copy.deepcopy(VALID)
    target = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return document


def test_a_valid_document_passes(validator: jsonschema.Draft202012Validator) -> None:
    validator.validate(VALID)


@pytest.mark.parametrize("document", [
    changed(["spec", "profil"], "coding"),
    changed(["spec", "disk_size"], "20Gi"),
    changed(["metadata", "lables"], {}),
    changed(["extra"], 1),
    changed(["kind"], "Deployment"),
    changed(["apiVersion"], "somnus/v2"),
    changed(["metadata", "name"], "Coder_1"),
    changed(["spec", "diskSize"], "lots"),
    changed(["spec", "osFamily"], "linux"),
], ids=["unknown field", "snake_case field", "unknown metadata field", "unknown top-level field",
        "unknown kind", "wrong apiVersion", "bad name", "bad quantity", "bad osFamily"])
def test_schema_rejects(validator: jsonschema.Draft202012Validator, document: dict[str, Any]) -> None:
    assert not validator.is_valid(document)
