"""The CLI's contract where no daemon is needed: exit codes and messages of validate and schema,
of arguments refused before any daemon is asked, and the exit code each outcome maps to."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from somnus_reconciler.cli import commands
from somnus_reconciler.cli.commands import cli
from somnus_reconciler.cli.exit_codes import EXIT_CHANGES_PENDING, EXIT_INVALID_OR_ERROR, EXIT_OK, EXIT_STEP_FAILED
from somnus_reconciler.engine.executor import StepResult
from somnus_reconciler.passes.converge import PassReport
from somnus_reconciler.planning.plan import Action, Change, Disruption, Plan

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


def test_validate_json_counts_the_objects(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(VALID)
    assert run("validate", "-o", "json", str(tmp_path)) == (0, '{\n  "errors": [],\n  "objects": 1\n}\n', "")


def test_diff_and_apply_of_invalid_manifests_exit_2_before_any_daemon_is_asked(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(VALID.replace("1Gi", "lots"))
    code, out, _ = run("diff", "-o", "json", str(tmp_path))
    assert code == 2 and [e["address"] for e in json.loads(out)["errors"]] == ["vm/coder-1"]
    code, out, err = run("apply", "-y", str(tmp_path))
    assert (code, out) == (2, "") and err.endswith("1 problem(s); nothing was changed.\n")


@pytest.mark.parametrize(("args", "message"), [
    (["get", "pack"], "unknown kind 'pack': use vm or container"),
    (["describe", "coder-1"], "give KIND/NAME, e.g. vm/coder-1"),
    (["soft-reboot", "container/box"], "give vm/NAME: only VMs run the agent"),
    (["ssh", "container/box"], "give vm/NAME: containers are reached with somnus exec"),
    (["exec", "vm/box", "--", "uname", "-r"], "give container/NAME: VMs are reached with somnus ssh"),
    (["console", "container/box"], "give vm/NAME: containers have no serial console; use somnus exec"),
    (["snapshots", "pack/x"], "pack/x: snapshots exist for vm/NAME and container/NAME only"),
    (["rollback", "container/box"],
     "a container is made anew from its snapshot with its declared spec: give -f MANIFESTS"),
    (["image", "build", "nope"],
     "unknown image(s) nope; known: tiny-linux, debian-12, somnus/busybox:latest, somnus/base:bookworm"),
])
def test_bad_arguments_exit_2_with_one_error_line(args: list[str], message: str) -> None:
    assert run(*args) == (2, "", f"error: {message}\n")


def test_rolling_back_a_container_not_declared_exits_2(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(VALID)
    assert run("rollback", "container/box", "-f", str(tmp_path)) == (
        2, "", f"error: container/box is not declared in {tmp_path}\n")


IN_SYNC = Plan((), (), ())
PENDING = Plan((Change("vm/a", Action.START, Disruption.NONE),), (), ())
UNREACHABLE = Plan((), (), (), unreachable=("dockerd: refused",))
FAILED = StepResult(PENDING.changes[0], False, "boom", 1.0)


@pytest.mark.parametrize(("report", "dry_run", "code"), [
    (PassReport(IN_SYNC, declined=True), False, EXIT_OK),
    (PassReport(PENDING, declined=True), True, EXIT_CHANGES_PENDING),
    (PassReport(PENDING, results=(FAILED,)), False, EXIT_STEP_FAILED),
    (PassReport(PENDING, stopped=True), False, EXIT_STEP_FAILED),
    (PassReport(UNREACHABLE, declined=True), False, EXIT_INVALID_OR_ERROR),
])
def test_apply_exit_codes_follow_spec_section_4(report: PassReport, dry_run: bool, code: int) -> None:
    assert commands._apply_exit_code(report, dry_run) == code


def test_diff_exit_codes_follow_spec_section_4() -> None:
    assert [commands._diff_exit_code(p) for p in (IN_SYNC, PENDING, UNREACHABLE)] == [
        EXIT_OK, EXIT_CHANGES_PENDING, EXIT_INVALID_OR_ERROR]
