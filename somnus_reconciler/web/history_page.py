"""The history page: the journal's events, filtered as `somnus history` filters them, or
the nearest in meaning to a text (`history --search`), through `passes.history_query`."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from somnus_reconciler.passes import history_query
from somnus_reconciler.semantic.history import HistoryIndexError, parse_since
from somnus_reconciler.settings import Settings

FIELDS = ("object", "outcome", "since", "q")


@dataclass(frozen=True)
class HistoryAnswer:
    items: tuple[history_query.HistoryItem, ...]
    searched: bool
    problem: str = ""  # a bad --since, or an index that cannot be used


def answer(asked: Mapping[str, str], settings: Settings) -> HistoryAnswer:
    """The events the page's form asks for: object, outcome, since (2h, a date), q (meaning)."""
    since = None
    if asked.get("since"):
        try:
            since = parse_since(asked["since"], time.time())
        except ValueError as e:
            return HistoryAnswer((), False, f"since: {e}")
    query = history_query.HistoryQuery(address=asked.get("object") or None, since=since,
                                       outcome=asked.get("outcome") or None, search_text=asked.get("q") or None)
    try:
        items = history_query.run(query, state_dir=str(settings.state_dir), on_reindexed=lambda count: None)
    except HistoryIndexError as e:
        return HistoryAnswer((), query.search_text is not None, str(e))
    return HistoryAnswer(items if query.search_text else tuple(reversed(items)), query.search_text is not None)
