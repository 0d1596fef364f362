"""`somnus triage`: a failure text in, category and score out (table or JSON), exit 0."""

from __future__ import annotations

import json
import re

from click.testing import CliRunner

from somnus_reconciler.cli.commands import cli


def run(*args: str, stdin: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["triage", *args], input=stdin)
    return result.exit_code, result.stdout


def test_json_names_the_category_and_score() -> None:
    code, out = run("-o", "json", "OSError: [Errno 28] No space left on device")
    assert code == 0
    assert re.fullmatch(r'\{"category": "DISK_FULL", "score": 0\.\d{1,3}\}\n', out), out
    assert json.loads(out)["score"] > 0.3


def test_table_reads_stdin() -> None:
    code, out = run("-", stdin="ssh: connect to host 127.0.0.1 port 2222: Connection refused\n")
    assert code == 0 and re.fullmatch(r"NETWORK_FAILURE  0\.\d{3}\n", out), out


def test_empty_input_is_unknown_with_score_0() -> None:
    code, out = run("-o", "json", stdin="")
    assert (code, json.loads(out)) == (0, {"category": "UNKNOWN", "score": 0.0})
