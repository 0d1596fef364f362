"""`somnus image build`: each build's progress as lines (the `ImageBuildHooks` of `passes.base_images`)."""

from __future__ import annotations

from pathlib import Path

from somnus_reconciler.cli import views


class ImageBuildHuman(views.View):
    def building(self, name: str) -> None:
        self.echo(f"building {name}")

    def log(self, line: str) -> None:
        self.echo(f"  {line}")

    def built(self, name: str, directory: Path | None) -> None:
        self.echo(f"{name}: {directory}" if directory is not None else f"{name}: present")
