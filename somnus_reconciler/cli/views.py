"""Rendering for people and as JSON: what every view shares.

The CLI picks a view once per command (`<subject>_view.for_output(output)`) and
hands it typed values; views decide nothing. One module per subject:
`validate_view`, `plan_view` (diff), `apply_view` (plan, progress, summary),
`status_view` (get, describe), `guest_view` (snapshots, rollback, soft-reboot),
`history_view`, `triage_view`, `image_view`. Here: `View`, where a view writes;
`HumanView` and `JsonView`, which render invalid input; and the JSON writer.
Watch and gitops events have their own views in `loop_views`. The JSON shapes
are stable and documented in docs/output.md.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TextIO

import click

from somnus_reconciler.values.diagnostics import Diagnostic, InvalidInput

# What a JSON view hands to `print_json`: the stable shapes of docs/output.md.
JsonValue = None | bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"]


class View:
    """Where a view writes: stdout and stderr, or the streams a test gives it.

    Lines go through `click.echo` as they always have (flushed each, and without
    ANSI codes when the stream is not a terminal).
    """

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self._out = out
        self._err = err

    def echo(self, line: str = "", *, nl: bool = True) -> None:
        click.echo(line, file=self._out, nl=nl)

    def echo_err(self, line: str) -> None:
        click.echo(line, file=self._err, err=True)

    def json(self, value: object) -> None:
        print_json(value, self._out)

    def error(self, message: str) -> None:
        """Why the command stopped: `error: MESSAGE` on stderr."""
        self.echo_err(f"error: {message}")

    def unreachable(self, messages: Sequence[str]) -> None:
        """A daemon could not be reached: its half was left out of the plan."""
        for message in messages:
            self.error(f"{message}; its objects were left out (retried with backoff)")


class HumanView(View):
    def invalid(self, error: InvalidInput) -> None:
        """Every problem, `FILE:LINE: kind/name: message`, on stderr."""
        for diagnostic in error.diagnostics:
            self.echo_err(str(diagnostic))
        self.echo_err(f"{len(error.diagnostics)} problem(s); nothing was changed.")


class JsonView(View):
    def invalid(self, error: InvalidInput) -> None:
        """`{"errors": [...]}` on stdout."""
        self.json(diagnostics_json(error.diagnostics))


def diagnostics_json(diagnostics: Sequence[Diagnostic]) -> dict[str, JsonValue]:
    return {
        "errors": [
            {
                "file": str(d.source.file) if d.source else None,
                "line": d.source.line if d.source else None,
                "address": d.address,
                "message": d.message,
            }
            for d in diagnostics
        ]
    }


def print_json(value: object, out: TextIO | None = None, *, compact: bool = False) -> None:
    """Indented, or one line (`compact`: JSON lines, flushed, for event streams)."""
    out = out or sys.stdout
    json.dump(value, out, indent=None if compact else 2, default=str)
    out.write("\n")
    if compact:
        out.flush()
