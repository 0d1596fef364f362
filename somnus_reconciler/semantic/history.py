"""Semantic search over the journal's events, for `somnus history --search`.

The journal is the record; `HistoryIndex` is derived from it: one embedding per event
(packaged all-MiniLM-L6-v2, the model triage uses, `triage.load_embedding_model`) in a
chromadb collection under the state directory (`history-index/`, mode 0700). It can be
dropped and rebuilt from the journal at any time.

`HistoryIndex.sync` embeds the events added since the newest one it indexed (that id is
kept in the collection's metadata, written after the events themselves) and upserts
them by event id: incremental, idempotent, and safe when two processes sync at once, as
both then write the same vectors under the same ids. The CLI syncs before each search;
the long-running loop of `watch` and `gitops` (`passes.loop.Loop`) calls
`index_new_events` after a pass that changed or found something.

chromadb and torch are imported on first use of an index only, so `somnus history`
without `--search` never loads them. `parse_since` reads `--since`.
"""

from __future__ import annotations

import contextlib
import datetime
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from somnus_reconciler import settings as settings_mod
from somnus_reconciler.journal import Event, Journal, read_outcome
from somnus_reconciler.semantic import triage
from somnus_reconciler.values.errors import PermanentError
from somnus_reconciler.values.outcome import Outcome
from somnus_reconciler.values.quantity import parse_duration

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection
    from chromadb.base_types import LiteralValue, LogicalOperator, Metadata, Where, WhereOperator

    from somnus_reconciler.semantic.triage import Vectors

INDEX_DIR = "history-index"
COLLECTION = "journal-events"
BATCH = 64  # events embedded and upserted together; the high-water mark moves after each batch
CANDIDATES = 20  # nearest events fetched before ranking, at least
CATEGORY_WEIGHT = 0.25  # of triage's score for the query, added to events of its category
_INDEXED_THROUGH = "indexed_through"  # collection metadata: highest event id indexed


class HistoryIndexError(PermanentError):
    """The index could not be opened, written or queried (chromadb's errors, mapped once)."""


class SearchHit(NamedTuple):
    entry: Event
    score: float  # cosine similarity of query and event text, + the category bonus; 3 decimals


def event_text(entry: Event) -> str:
    """What is embedded for an event: who, what, how it ended, why.

    e.g. `vm/coder-1 pack install web-development rolled back network failure: task ...`.
    A long message is cut to its error lines as triage does: the model reads 256 word pieces.
    """
    category = f" {entry.category.lower().replace('_', ' ')}" if entry.category else ""  # words, not a token
    return f"{entry.address} {entry.action} {entry.outcome}{category}: {triage.informative_text(entry.message)}"


class HistoryIndex:
    """The chromadb collection of one state directory's journal events."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / INDEX_DIR
        with _chroma_errors(self.path):
            import chromadb
            from chromadb.config import Settings

            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.path.chmod(0o700)  # events name guests and quote their failures
            # No telemetry: nothing on this host may reach the network.
            self._client = chromadb.PersistentClient(path=str(self.path),
                                                     settings=Settings(anonymized_telemetry=False))

    def _collection(self) -> Collection:
        """Fetched anew each time: the high-water mark in its metadata is cached per object."""
        return self._client.get_or_create_collection(
            COLLECTION, embedding_function=None, configuration={"hnsw": {"space": "cosine"}})

    @property
    def indexed_through(self) -> int:
        """The highest event id indexed, 0 when none is."""
        with _chroma_errors(self.path):
            metadata = self._collection().metadata or {}
        return int(metadata.get(_INDEXED_THROUGH, 0))

    def count(self) -> int:
        with _chroma_errors(self.path):
            return int(self._collection().count())

    def sync(self, journal: Journal) -> int:
        """Index the events newer than the newest indexed one; returns how many.

        The model loads only when there is something to embed: a sync with nothing new
        costs a millisecond or so."""
        entries = journal.history(after_id=self.indexed_through)
        with _chroma_errors(self.path):
            for start in range(0, len(entries), BATCH):
                batch = entries[start:start + BATCH]
                texts = [event_text(entry) for entry in batch]
                collection = self._collection()
                collection.upsert(
                    ids=[str(entry.id) for entry in batch], embeddings=_embed(texts), documents=texts,
                    metadatas=[_metadata(entry) for entry in batch],
                )
                # Never move the mark back below what a concurrent sync has already written.
                mark = max(batch[-1].id, int((self._collection().metadata or {}).get(_INDEXED_THROUGH, 0)))
                collection.modify(metadata={_INDEXED_THROUGH: mark})
        return len(entries)

    def rebuild(self, journal: Journal) -> int:
        """Drop the collection and index every event again; returns how many."""
        with _chroma_errors(self.path):
            from chromadb.errors import NotFoundError

            with contextlib.suppress(NotFoundError):
                self._client.delete_collection(COLLECTION)
        return self.sync(journal)

    def search(self, text: str, *, limit: int = 5, address: str | None = None,
               outcome: Outcome | str | None = None, since: float | None = None) -> list[SearchHit]:
        """The `limit` events nearest in meaning to `text`, most similar first,
        optionally only of one object, with one outcome, at or after `since`.

        The score is the cosine similarity of `text` and the event's text, plus
        `CATEGORY_WEIGHT` x triage's score of `text` when `text` reads as a failure of the
        event's category: "the mirror could not be reached" is a NETWORK_FAILURE to
        triage's labelled examples, while its words are nearer an unrelated apt failure.
        """
        filters: list[Where] = []
        if address is not None:
            filters.append({"address": address})
        if outcome is not None:
            filters.append({"outcome": str(outcome)})
        if since is not None:
            at_or_after: dict[WhereOperator | LogicalOperator, LiteralValue] = {"$gte": since}
            filters.append({"at": at_or_after})
        with _chroma_errors(self.path):
            query_triage = triage.default_classifier().classify(text)
            category = None if query_triage.category is triage.Category.UNKNOWN else query_triage.category.value
            collection = self._collection()
            vector = _embed([text])
            candidates = max(limit, CANDIDATES)
            similar = _nearest(collection, vector, candidates, filters)
            if category is not None:  # the category's own nearest, however far their words are
                similar.update(_nearest(collection, vector, candidates, [*filters, {"category": category}]))
        bonus = CATEGORY_WEIGHT * query_triage.score
        ranked = sorted(
            (SearchHit(entry, round(similarity + (bonus if entry.category == category else 0.0), 3))
             for entry, similarity in similar.values()),
            key=lambda hit: (-hit.score, -hit.entry.id))
        return ranked[:limit]


def index_new_events(state_dir: Path) -> int:
    """Bring the state directory's index up to date with its journal; how many were added.

    For the long-running loop, after each reconcile (from a background thread: the model
    loads on the first event to embed). No journal yet: nothing to do, none is made.
    """
    journal_path = settings_mod.resolve(state_dir=str(state_dir)).journal_path
    if not journal_path.exists():
        return 0
    with Journal(journal_path) as journal:
        return HistoryIndex(state_dir).sync(journal)


# -- --since ---------------------------------------------------------------------------

def parse_since(text: str, now: float) -> float:
    """`30m`, `2h`, `7d`, `1w` before `now`, or an ISO 8601 date or date-time (local
    time unless it names a zone, e.g. `2024-05-01T12:00Z`) -> unix time. ValueError otherwise."""
    text = text.strip()
    with contextlib.suppress(ValueError):
        return now - parse_duration(text)
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration (30m, 2h, 7d) nor an ISO date or time "
                         "(2024-05-01, 2024-05-01T12:00)") from None


# -- chromadb and the model --------------------------------------------------------------


def _embed(texts: Sequence[str]) -> Vectors:
    """Unit vectors (numpy, one row per text), so chroma's cosine distance is 1 - dot product."""
    return triage.load_embedding_model().encode(
        [triage.embedding_input(text) for text in texts], batch_size=32, normalize_embeddings=True,
        convert_to_numpy=True, show_progress_bar=False)


def _nearest(collection: Collection, vector: Vectors, count: int,
             filters: list[Where]) -> dict[int, tuple[Event, float]]:
    """event id -> (event, cosine similarity) of the `count` nearest events that pass `filters`."""
    where: Where | None = None
    if len(filters) == 1:
        where = filters[0]
    elif filters:
        where = {"$and": list(filters)}
    found = collection.query(query_embeddings=vector, n_results=count, where=where,
                             include=["metadatas", "distances"])
    metadatas, distances = found["metadatas"], found["distances"]
    assert metadatas is not None and distances is not None  # both are in `include`
    entries = [_entry(metadata) for metadata in metadatas[0]]
    return {entry.id: (entry, 1.0 - float(distance)) for entry, distance in zip(entries, distances[0])}


def _metadata(entry: Event) -> dict[str, str | int | float]:
    return {"id": entry.id, "at": entry.at, "address": entry.address, "action": entry.action,
            "outcome": str(entry.outcome), "category": entry.category or "", "message": entry.message}


def _entry(metadata: Metadata) -> Event:
    return Event(id=int(_number(metadata["id"])), at=_number(metadata["at"]), address=str(metadata["address"]),
                 action=str(metadata["action"]), outcome=read_outcome(str(metadata["outcome"])),
                 message=str(metadata["message"]), category=str(metadata["category"]) or None)


def _number(value: object) -> float:
    """A number `_metadata` stored; chromadb types every metadata value alike."""
    if not isinstance(value, (int, float)):
        raise HistoryIndexError(f"history index: an event's id or time is {value!r}, not a number")
    return value


# chromadb's clients of one process share state that two threads must not build or use
# at once (`somnus serve --watch`: the loop's indexer beside the history page's search).
_CHROMA = threading.RLock()


@contextlib.contextmanager
def _chroma_errors(path: Path) -> Iterator[None]:
    """One thread at a time in chromadb; its exceptions, a missing package or an unusable
    directory become `HistoryIndexError` naming the index; nothing else sees chromadb's errors."""
    try:
        with _CHROMA:
            yield
    except ImportError as e:
        raise HistoryIndexError(f"history index {path}: a package is missing ({e})") from e
    except OSError as e:
        raise HistoryIndexError(f"history index {path}: {e}") from e
    except Exception as e:
        from chromadb.errors import ChromaError

        if isinstance(e, ChromaError):
            raise HistoryIndexError(f"history index {path}: {e}") from e
        raise
