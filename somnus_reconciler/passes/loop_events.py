"""What the reconcile loop tells whoever runs it: typed, frozen events.

`loop.Loop` emits them (`gitops.follow` emits `FetchFailed`); `cli/loop_views.py`
renders them, as one line of text per pass or as one JSON object per event, with
the keys docs/output.md documents. Every pass emits `Planned` when its plan starts
(the latency bench/watch.py measures), a `StepFinished` per finished step, and at
its end a `Reconciled`, or a `PassAborted` when it ended before a report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from somnus_reconciler.passes.converge import PassVerdict

TriggerReason = Literal["start", "change", "resync", "revision"]


@dataclass(frozen=True)
class Trigger:
    """Why a pass runs: the first pass, files written (watch), the resync interval, a revision (gitops)."""

    reason: TriggerReason
    at: float  # time.time() when it was seen: a file written, a revision fetched
    files: tuple[str, ...] = ()
    revision: str | None = None


@dataclass(frozen=True)
class Planned:
    """A pass has its plan and starts it."""

    at: float
    trigger: Trigger
    changes: int


@dataclass(frozen=True)
class StepFinished:
    """A step of the plan ended, done or failed (an engine `StepResult`, flattened)."""

    at: float
    address: str
    action: str  # the Change's action: create, update, pack-install, ...
    pack: str | None
    drift: bool
    ok: bool
    message: str
    duration_s: float  # to the millisecond
    category: str | None  # a failure's triage category
    attempts: int


@dataclass(frozen=True)
class Reconciled:
    """A pass ran its plan to the end (or until asked to stop)."""

    at: float
    trigger: Trigger
    outcome: PassVerdict  # in sync | converged | failed | stopped | error (a daemon's half left out)
    changes: int
    failed: int
    drift_corrected: int
    drift_reported: int
    recovered: tuple[str, ...]  # steps a killed process left open, rolled back first
    duration_s: float  # to the millisecond, from the plan's start
    errors: tuple[str, ...]  # `address: message` of each failed step, then each half left out


@dataclass(frozen=True)
class PassAborted:
    """A pass ended without a report: its manifests were invalid (nothing ran) or a daemon was gone."""

    at: float
    trigger: Trigger
    outcome: PassVerdict  # invalid | error
    errors: tuple[str, ...]  # `FILE:LINE: kind/name: message` diagnostics, or the daemon's error


@dataclass(frozen=True)
class FetchFailed:
    """gitops: `git fetch` failed; the revision in force stays."""

    at: float
    error: str  # git's own words
    revision: str | None  # the revision in force, None before the first good one


@dataclass(frozen=True)
class BackedUp:
    """A backup the VM's schedule made due (or a pack change asked for) was taken, or failed."""

    at: float
    address: str
    ok: bool
    backup: str | None  # the backup's name; None when it failed
    message: str  # level, size and reason; or what went wrong


LoopEvent = Planned | StepFinished | Reconciled | PassAborted | FetchFailed | BackedUp
Emit = Callable[[LoopEvent], None]
