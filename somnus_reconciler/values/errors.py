"""One error hierarchy for the whole package: the type says whether to retry.

Every exception the package raises is a `SomnusError`. A `TemporaryError` may
succeed when tried again after its `delay` (a daemon restarting, a guest still
booting); every other `SomnusError` is permanent: trying the same thing again
gives the same answer, so the engine rolls back and reports instead of retrying.
`PermanentError` names that kind for errors with no more specific home. Only
text that comes from a guest (playbook output, agent errors) is classified by
`semantic.triage`; the engine asks the classifier nothing about these types.

As in kopf (PermanentError / TemporaryError(delay=...)) and controller-runtime
(retry unless TerminalError).
"""

from __future__ import annotations

DEFAULT_RETRY_DELAY_S = 2.0


class SomnusError(Exception):
    """Base of every exception the package raises."""


class PermanentError(SomnusError):
    """Trying again will not help: bad input, a missing ingredient, a refusal."""


class TemporaryError(SomnusError):
    """Trying again after `delay` seconds may succeed."""

    def __init__(self, *args: object, delay: float = DEFAULT_RETRY_DELAY_S) -> None:
        super().__init__(*args)
        self.delay = delay
