"""`somnus history`: journal events as a log-like table or as JSON (docs/output.md).

A search's hits carry a score: the table gets a SCORE column first, the JSON a
`"score"` key. Both views say how many events a `--rebuild-index` indexed.
"""

from __future__ import annotations

import datetime
import shutil
import sys
from collections.abc import Sequence
from typing import TextIO

from somnus_reconciler.cli import views
from somnus_reconciler.passes.history_query import HistoryItem

HISTORY_COLUMNS = ("TIME", "ADDRESS", "ACTION", "OUTCOME", "MESSAGE")


class HistoryView(views.View):
    def reindexed(self, count: int, *, results_follow: bool) -> None:
        """On stderr when search results follow on stdout, so that stdout holds them alone."""
        line = f"indexed {count} event(s)"
        if results_follow:
            self.echo_err(line)
        else:
            self.echo(line)


class HistoryTable(HistoryView):
    def __init__(self, out: TextIO | None = None, err: TextIO | None = None, *, width: int | None = None) -> None:
        super().__init__(out, err)
        self._width = width

    def events(self, items: Sequence[HistoryItem]) -> None:
        """One line per event, local time, like a log; a search's hits with a SCORE column first.

        The message (with the triage category in brackets) is put on one line and cut to
        what is left of the width (the terminal's, 160 when not a terminal), never below 40.
        """
        out = self._out or sys.stdout
        if not items:
            print("no events", file=out)
            return
        head: tuple[str, ...] = HISTORY_COLUMNS[:-1]
        rows: list[tuple[str, ...]] = [
            (datetime.datetime.fromtimestamp(i.event.at).strftime("%Y-%m-%d %H:%M:%S"),
             i.event.address, i.event.action, i.event.outcome)
            for i in items
        ]
        if items[0].score is not None:
            head = ("SCORE", *head)
            rows = [(f"{i.score or 0:.3f}", *row) for i, row in zip(items, rows)]
        widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
        room = max(40, (self._width or shutil.get_terminal_size((160, 24)).columns) - sum(w + 2 for w in widths))
        messages = [HISTORY_COLUMNS[-1]] + [
            " ".join(((f"[{i.event.category}] " if i.event.category else "") + i.event.message).split())
            for i in items
        ]
        for row, message in zip([head, *rows], messages):
            if len(message) > room:
                message = message[: room - 3] + "..."
            print("  ".join([*(cell.ljust(w) for cell, w in zip(row, widths)), message]).rstrip(), file=out)


class HistoryJson(HistoryView):
    def events(self, items: Sequence[HistoryItem]) -> None:
        self.json({"items": [
            {"id": i.event.id,
             "at": _iso(i.event.at),
             "address": i.event.address, "action": i.event.action, "outcome": i.event.outcome,
             "category": i.event.category, "message": i.event.message,
             **({"startedAt": _iso(i.event.started_at)} if i.event.started_at is not None else {}),
             **({"score": i.score} if i.score is not None else {})}
            for i in items
        ]})


def _iso(at: float) -> str:
    return datetime.datetime.fromtimestamp(at, datetime.UTC).isoformat(timespec="seconds")


def for_output(output: str) -> HistoryTable | HistoryJson:
    """`table` or `json`."""
    return HistoryJson() if output == "json" else HistoryTable()
