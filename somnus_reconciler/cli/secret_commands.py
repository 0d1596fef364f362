"""`somnus secret keygen|encrypt|edit|rotate`: registered on the `somnus` group by `commands`.

Each parses, calls `passes.secret_commands` and prints one line; no value is ever printed.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path

import click

from somnus_reconciler.cli import arguments


@click.group()
def secret() -> None:
    """Secrets as code: age-encrypted values in manifests, the identity on this host."""


@secret.command()
@arguments.state_dir
def keygen(state_dir: str | None) -> None:
    """Make this host's age identity; print its public key (a Secret's recipient)."""
    from somnus_reconciler.passes import secret_commands
    from somnus_reconciler.providers.age_secrets import SecretError

    try:
        path, public = secret_commands.keygen(state_dir)
    except SecretError as e:
        arguments.fail(str(e))
    click.echo(public)
    click.echo(f"# identity written to {path} (0600); keep it out of any repository", err=True)


@secret.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
def encrypt(files: Sequence[Path]) -> None:
    """Encrypt the clear values of the Secrets in FILES, in place (idempotent)."""
    from somnus_reconciler.passes import secret_commands
    from somnus_reconciler.providers.age_secrets import SecretError

    for path in files:
        try:
            count = secret_commands.encrypt_file(path)
        except SecretError as e:
            arguments.fail(str(e))
        click.echo(f"{path}: {count} value(s) encrypted")


@secret.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@arguments.state_dir
def edit(file: Path, state_dir: str | None) -> None:
    """Edit the Secrets of FILE in clear in $EDITOR (a private temporary file), then encrypt them again."""
    from somnus_reconciler.passes import secret_commands
    from somnus_reconciler.providers.age_secrets import SecretError

    editor = shlex.split(os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi")
    try:
        count = secret_commands.edit_file(file, editor, state_dir)
    except SecretError as e:
        arguments.fail(str(e))
    except subprocess.CalledProcessError as e:
        arguments.fail(f"{file}: the editor exited {e.returncode}; nothing was changed")
    except OSError as e:
        arguments.fail(f"{file}: the editor {editor[0]!r} did not run: {e.strerror or e}")
    click.echo(f"{file}: {count} value(s) changed")


@secret.command()
@arguments.paths
@arguments.state_dir
def rotate(paths: Sequence[Path], state_dir: str | None) -> None:
    """A new host identity; the Secrets under PATHS that name the old one are encrypted to it."""
    from somnus_reconciler.passes import secret_commands
    from somnus_reconciler.providers.age_secrets import SecretError

    try:
        public, changed = secret_commands.rotate(paths, state_dir)
    except SecretError as e:
        arguments.fail(str(e))
    click.echo(public)
    click.echo(f"# {len(changed)} file(s) re-encrypted: {', '.join(map(str, changed)) or 'none'}", err=True)
