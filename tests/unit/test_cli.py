"""The CLI's contract where no daemon is needed: exit codes and messages of validate and schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
from click.testing import CliRunner

from somnus_reconciler.cli.commands import cli

VALID = """\
apiVersion: somnus/v1
kind: VirtualMachine
metadata: {name: coder-1}
spec: {resources: {vcpus: 1, memory: 1Gi}, image: tiny-linux}
"""


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_validate_accepts_valid_manifests(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(VALID)
    code, out, _ = run("validate", str(tmp_path))
    assert (code, out.strip()) == (0, "valid: 1 vm, 0 container, 0 pack")


def test_validate_reports_every_problem_with_file_and_line_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(VALID.replace("image: tiny-linux", "image: tiny-linux, profil: x")
                   + "---\napiVersion: somnus/v1\nkind: Container\nmetadata: {name: Box}\nspec: {image: x}\n")
    code, _, err = run("validate", str(bad))
    assert code == 2
    assert f"{bad}:4: vm/coder-1: spec: unknown field 'profil' (did you mean 'profile'?)" in err
    assert f"{bad}:8: container/Box: name 'Box' is not a DNS-1123 label" in err
    assert "2 problem(s); nothing was changed." in err


def test_validate_json_lists_errors(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(VALID.replace("1Gi", "lots"))
    code, out, _ = run("validate", "-o", "json", str(tmp_path))
    errors = json.loads(out)["errors"]
    assert code == 2 and [(e["line"], e["address"]) for e in errors] == [(4, "vm/coder-1")]


def test_no_manifests_is_invalid_so_prune_can_never_empty_a_host(tmp_path: Path) -> None:
    code, _, err = run("validate", str(tmp_path))
    assert code == 2 and "no manifests found" in err


def test_admission_refusal_in_validate_gives_the_numbers(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(VALID.replace("memory: 1Gi", "memory: 4096Gi"))
    code, _, err = run("validate", str(tmp_path))
    assert code == 2 and "4Ti of memory" in err and "reserved" in err


def test_schema_is_json_schema_that_accepts_the_valid_manifest() -> None:
    code, out, _ = run("schema")
    schema = json.loads(out)
    assert code == 0
    jsonschema.Draft202012Validator.check_schema(schema)
    import yaml

    jsonschema.validate(yaml.safe_load(VALID), schema)


def test_unknown_command_exits_2() -> None:
    assert run("frobnicate")[0] == 2
