"""What the command modules share: the PATHS argument, --state-dir, and how a
command stops on invalid input or an error (the view says why, exit 2)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

import click

from somnus_reconciler.cli import views
from somnus_reconciler.cli.exit_codes import EXIT_INVALID_OR_ERROR
from somnus_reconciler.values.diagnostics import InvalidInput

paths = click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
state_dir = click.option("--state-dir", envvar="SOMNUS_STATE_DIR", default=None,
                         help="Journal and console logs [env SOMNUS_STATE_DIR].")
# Terraform's default; passes.converge.DEFAULT_PARALLELISM is the same (not imported: cheap CLI start).
parallelism = click.option("--parallelism", type=click.IntRange(min=1), default=10, show_default=True,
                           help="Objects converged at the same time (the steps of one object keep their order).")


def fail(message: str) -> NoReturn:
    """`error: MESSAGE` on stderr, exit 2."""
    views.View().error(message)
    sys.exit(EXIT_INVALID_OR_ERROR)


def report_invalid(view: views.HumanView | views.JsonView, error: InvalidInput) -> NoReturn:
    """Every problem, as the command's view renders them; exit 2."""
    view.invalid(error)
    sys.exit(EXIT_INVALID_OR_ERROR)


def short_kind(kind: str) -> str:
    """The short kind of `kind` (`VirtualMachine` -> `vm`); a short one stays as it is."""
    from somnus_reconciler.values.model import SHORT_KIND  # pydantic: only for commands that name a kind

    return SHORT_KIND.get(kind, kind)
