"""How a step ended: one vocabulary for engine, journal, loop events and status.

The values are the words the journal has always stored, so old journals read
the same; `Outcome("rolled back")` parses them back.
"""

from __future__ import annotations

import enum


class Outcome(enum.StrEnum):
    OK = "ok"
    FAILED = "failed"
    ROLLED_BACK = "rolled back"
    RETRYING = "retrying"
    CORRECTED = "corrected"  # drift found and put back
    REPORTED = "reported"  # drift found and only reported (driftPolicy: warn)
    TIMED_OUT = "timed out"  # a soft reboot that was not confirmed in time
    SKIPPED = "skipped"  # a pack step not run because its guest's own change failed
