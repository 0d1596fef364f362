"""How one try of a step ended, and whether it is tried again: the error's type decides.

The step modules (`resource_step`, `pack_step`) turn each try into an `Attempt`;
the executor retries it under the `RetryPolicy` when `retry_after_s` is set.

An error raised on the host is judged by its type alone (`values.errors`): a
`TemporaryError` (a daemon that went away, a guest whose SSH is not up yet) is
worth another try after at least its `delay`; any other `SomnusError` is
permanent. Only text that comes from a guest (a pack step's failed task, what
the playbook printed) is handed to the triage classifier, and its category
decides for it: NETWORK_FAILURE is temporary, the others are not.
"""

from __future__ import annotations

from dataclasses import dataclass

from somnus_reconciler.semantic.triage import Category, FailureClassifier
from somnus_reconciler.values.errors import SomnusError, TemporaryError
from somnus_reconciler.values.outcome import Outcome


@dataclass(frozen=True)
class RetryPolicy:
    """How often a step that failed temporarily is tried, and how long to wait in between."""

    attempts: int = 3
    first_delay_s: float = 2.0
    factor: float = 4.0

    def delay_s(self, failed_attempt: int) -> float:
        return self.first_delay_s * self.factor ** (failed_attempt - 1)


@dataclass(frozen=True)
class Attempt:
    """How one try of a step ended, as the journal and the hooks are told."""

    outcome: Outcome  # OK, FAILED, or ROLLED_BACK (a pack step put its guest back)
    message: str
    category: Category | None = None  # failures only
    retry_after_s: float | None = None  # worth another try after at least this long; None: not

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK


DONE = Attempt(Outcome.OK, "done")


def failed(error: SomnusError, *, message: str | None = None) -> Attempt:
    """A failure raised on the host (`message`: its text as the journal shows it).

    Its type says whether to retry; the text is not classified. The category
    recorded is NETWORK_FAILURE for a temporary error (the word the engine has
    always used for a daemon that went away) and UNKNOWN for a permanent one.
    """
    text = str(error) if message is None else message
    if isinstance(error, TemporaryError):
        return Attempt(Outcome.FAILED, text, Category.NETWORK_FAILURE, error.delay)
    return Attempt(Outcome.FAILED, text, Category.UNKNOWN)


def failed_in_guest(text: str, classifier: FailureClassifier | None) -> Attempt:
    """A failure reported by a guest (`text`: its failed task and output), classified."""
    category = classifier.classify(text).category if classifier is not None else Category.UNKNOWN
    return Attempt(Outcome.FAILED, text, category, 0.0 if category.temporary else None)
