"""The package's shape holds: every layer folder says its role, modules stay small,
functions stay short, and `Any` appears only where decoded JSON enters.

Import directions are held by import-linter (pyproject.toml, run by scripts/test.sh);
these are the limits it cannot see.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "somnus_reconciler"
MODULE_LINES = 400
FUNCTION_LINES = 60
# Where `Any` stands for JSON as a library or the agent decoded it, and nowhere else.
ANY_ALLOWED = {"providers/agent_client.py", "providers/docker_labels.py",
               "providers/docker_listing.py", "passes/agent_health.py"}
LAYERS = ("values", "manifests", "planning", "images", "semantic", "providers", "engine", "passes", "web", "cli")

MODULES = sorted(PACKAGE.rglob("*.py"))


def _name(path: Path) -> str:
    return str(path.relative_to(PACKAGE))


@pytest.mark.parametrize("layer", LAYERS)
def test_every_layer_folder_says_its_role_and_what_it_may_import(layer: str) -> None:
    docstring = ast.get_docstring(ast.parse((PACKAGE / layer / "__init__.py").read_text()))
    assert docstring is not None and docstring.startswith(f"{layer}: ")
    assert "May import" in docstring or "imports nothing" in docstring


def test_every_module_has_a_docstring_and_stays_under_the_size_limit() -> None:
    for path in MODULES:
        source = path.read_text()
        assert ast.get_docstring(ast.parse(source)) is not None, f"{_name(path)} has no docstring"
        assert source.count("\n") < MODULE_LINES, f"{_name(path)} has {source.count(chr(10))} lines"


def test_no_function_is_longer_than_the_limit() -> None:
    long = [
        f"{_name(path)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in MODULES
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > FUNCTION_LINES
    ]
    assert long == []


def test_any_is_used_only_where_decoded_json_enters() -> None:
    users = {
        _name(path) for path in MODULES
        if any(isinstance(node, ast.Name) and node.id == "Any" for node in ast.walk(ast.parse(path.read_text())))
    }
    assert users <= ANY_ALLOWED
