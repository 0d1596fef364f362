"""What `somnus history` lists: the journal's events, filtered, or the nearest in meaning to a text.

Without `search_text` the journal is read directly (no model, no index). With
it, or with `rebuild_index`, the semantic index (`semantic.history`) is brought
up to date (or made anew) first. A state directory without a journal has no
history, and none is made by reading.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from somnus_reconciler import settings as settings_mod
from somnus_reconciler.journal import Event, Journal
from somnus_reconciler.semantic import history as history_mod

DEFAULT_LIMIT = 50
DEFAULT_SEARCH_LIMIT = 5


@dataclass(frozen=True)
class HistoryQuery:
    address: str | None = None  # vm/NAME or container/NAME
    since: float | None = None  # unix time
    outcome: str | None = None
    limit: int | None = None  # None: DEFAULT_LIMIT, or DEFAULT_SEARCH_LIMIT for a search
    search_text: str | None = None
    rebuild_index: bool = False


@dataclass(frozen=True)
class HistoryItem:
    event: Event
    score: float | None = None  # a search's similarity of the text and the event


def run(query: HistoryQuery, *, state_dir: str | None,
        on_reindexed: Callable[[int], None]) -> tuple[HistoryItem, ...]:
    """The events, oldest first, or a search's hits, most similar first.

    With `rebuild_index`, `on_reindexed` hears how many events were indexed, before
    any search runs. HistoryIndexError when the index cannot be used.
    """
    settings = settings_mod.resolve(state_dir=state_dir)
    if not settings.journal_path.exists():
        if query.rebuild_index:
            on_reindexed(0)
        return ()
    with Journal(settings.journal_path) as journal:
        if query.search_text is None and not query.rebuild_index:
            return tuple(HistoryItem(event) for event in journal.history(
                address=query.address, since=query.since, outcome=query.outcome,
                limit=query.limit or DEFAULT_LIMIT))
        index = history_mod.HistoryIndex(settings.state_dir)
        if query.rebuild_index:
            on_reindexed(index.rebuild(journal))
        else:
            index.sync(journal)
        if query.search_text is None:
            return ()
        hits = index.search(query.search_text, limit=query.limit or DEFAULT_SEARCH_LIMIT, address=query.address,
                            outcome=query.outcome, since=query.since)
        return tuple(HistoryItem(hit.entry, hit.score) for hit in hits)
