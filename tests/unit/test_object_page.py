"""The object page's declared spec: the one YAML document at the object's FILE:LINE."""

from __future__ import annotations

from pathlib import Path

from somnus_reconciler.web.object_page import declaration

FILE = """\
kind: Pool
metadata: {name: p}
---
kind: VirtualMachine
metadata:
  name: dev
---
kind: Container
metadata: {name: box}
"""


def test_the_document_at_the_line_and_no_other(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(FILE)
    assert declaration(f"{path}:4") == "kind: VirtualMachine\nmetadata:\n  name: dev"
    assert declaration(f"{path}:1") == "kind: Pool\nmetadata: {name: p}"
    assert declaration(f"{path}:8") == "kind: Container\nmetadata: {name: box}"


def test_a_file_that_is_gone_gives_nothing(tmp_path: Path) -> None:
    assert declaration(f"{tmp_path / 'gone.yaml'}:3") == ""
