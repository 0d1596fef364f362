"""cli/loop_commands.py: `watch` and `gitops` are commands of `somnus`, and a bad
--interval is refused (exit 2) before anything runs. Their loops: tests/integration."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from somnus_reconciler.cli.commands import cli


@pytest.mark.parametrize("args", [["watch", "manifests"], ["gitops", "file:///nowhere"]])
@pytest.mark.parametrize("interval, message", [
    ("0s", "error: --interval: must be more than 0\n"),
    ("soon", "error: --interval: 'soon' is not a duration (e.g. 30s, 5m, 2h, 7d)\n"),
])
def test_a_bad_interval_exits_2(args: list[str], interval: str, message: str) -> None:
    result = CliRunner().invoke(cli, [*args, "--interval", interval])
    assert (result.exit_code, result.stderr) == (2, message)


@pytest.mark.parametrize("command, options", [
    ("watch", ["--interval", "--prune", "-o, --output", "--state-dir"]),
    ("gitops", ["--branch", "--path", "--interval", "--prune", "-o, --output", "--state-dir"]),
])
def test_the_loop_commands_keep_their_options(command: str, options: list[str]) -> None:
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    listed = result.stdout[result.stdout.index("Options:"):]
    positions = [listed.index(f"  {option} ") for option in options]
    assert positions == sorted(positions)
