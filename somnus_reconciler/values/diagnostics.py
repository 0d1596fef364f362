"""Problems found in user input, each with its place: `FILE:LINE: kind/name: message`.

Validation collects every problem before reporting (terraform's tfdiags), so
`manifests.loader`, `manifests.references` and `planning.admission` append to a
`Diagnostics` list and raise `InvalidInput` once at the end. The CLI turns `InvalidInput` into exit 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from somnus_reconciler.values.errors import PermanentError


@dataclass(frozen=True, order=True)
class Source:
    """Where a manifest object (or one of its fields) was declared."""

    file: Path
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Diagnostic:
    source: Source | None
    address: str | None  # "vm/coder-1"; None when the problem is not one object's
    message: str

    def __str__(self) -> str:
        place = f"{self.source}: " if self.source else ""
        subject = f"{self.address}: " if self.address else ""
        return f"{place}{subject}{self.message}"


@dataclass
class Diagnostics:
    items: list[Diagnostic] = field(default_factory=list)

    def add(self, source: Source | None, address: str | None, message: str) -> None:
        self.items.append(Diagnostic(source, address, message))

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidInput(tuple(self.items))


class InvalidInput(PermanentError):
    """Input that must change nothing: bad manifests, refused admission, conflicts."""

    def __init__(self, diagnostics: tuple[Diagnostic, ...]) -> None:
        self.diagnostics = diagnostics
        super().__init__("\n".join(str(d) for d in diagnostics))
