"""Recent error-looking lines from watched logs, for ``GET /stats/intelligent``.

Only the tail of each file is read, and the answer is bounded; classification
into failure categories happens on the host, so ``category`` is null here.
"""

from __future__ import annotations

import pathlib
import re
from typing import Any

# Case-insensitive words, and apt's "E: " prefix (dpkg says "error processing").
ERROR_PATTERN = re.compile(r"(?i)\b(error|errors|fatal|failed|failure|traceback|denied)\b|^E: ")
TAIL_BYTES = 256 * 1024
MAX_LINES_PER_FILE = 100
_COUNT_CHUNK = 1024 * 1024


def _scan_file(path: pathlib.Path) -> list[dict[str, Any]]:
    with path.open("rb") as f:
        size = f.seek(0, 2)
        start = max(0, size - TAIL_BYTES)
        # Count newlines before the tail so reported line numbers are absolute.
        f.seek(0)
        line_no = 0
        remaining = start
        while remaining > 0:
            chunk = f.read(min(_COUNT_CHUNK, remaining))
            if not chunk:
                break
            line_no += chunk.count(b"\n")
            remaining -= len(chunk)
        f.seek(start)
        tail = f.read(size - start)
    lines = tail.split(b"\n")
    if start > 0 and lines:
        # The first piece is the end of a line cut by the tail window.
        line_no += 1
        lines = lines[1:]
    hits: list[dict[str, Any]] = []
    for offset, raw in enumerate(lines, start=line_no + 1):
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        if ERROR_PATTERN.search(text):
            hits.append({"file": str(path), "line": offset, "text": text[:2000], "category": None})
    return hits[-MAX_LINES_PER_FILE:]


def recent_errors(paths: tuple[pathlib.Path, ...]) -> dict[str, Any]:
    """The ``GET /stats/intelligent`` answer; unreadable files are listed, not fatal."""
    errors: list[dict[str, Any]] = []
    unreadable: list[dict[str, str]] = []
    for path in paths:
        try:
            errors.extend(_scan_file(path))
        except OSError as e:
            unreadable.append({"file": str(path), "error": e.strerror or str(e)})
    return {"errors": errors, "unreadable": unreadable}
