"""`somnus gitops REPO`: follow a branch of a git repository, as Flux and Argo CD do.

The repository is cloned once into `<state dir>/gitops/<key>/` and fetched every
`interval_s` (at once on SIGHUP) with the git command line, so any URL git
takes works. A new revision is checked out, validated and applied; every object
a step converges records the revision (journal `applied`). A revision that
fails validation, or whose apply has a step that fails (and rolls back), is
quarantined in the journal (`revisions`): it is not applied again, and the last
good revision is checked out and applied again at once, so it stays in force.
A newer revision is tried as usual. Between revisions, each interval is a
resync of the revision in force (drift, the packs' verify commands). A fetch
that fails is reported (`FetchFailed`) and tried again at the next interval.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from somnus_reconciler.journal import Journal
from somnus_reconciler.passes import prepare
from somnus_reconciler.passes.converge import PassReport, PassVerdict
from somnus_reconciler.passes.loop import Loop, wait
from somnus_reconciler.passes.loop_events import FetchFailed, Trigger
from somnus_reconciler.values.desired import DesiredState
from somnus_reconciler.values.diagnostics import Diagnostic, InvalidInput
from somnus_reconciler.values.errors import PermanentError


class GitError(PermanentError):
    """A git command failed; the message has git's own words."""


@dataclass(frozen=True)
class GitSource:
    url: str
    branch: str
    path: str  # manifests directory inside the repository

    @property
    def key(self) -> str:
        """Names this source in the journal and its clone directory."""
        return f"{self.url}#{self.branch}:{self.path}"


class Checkout:
    """A clone in the state directory, moved from revision to revision."""

    def __init__(self, source: GitSource, state_dir: Path) -> None:
        self.source = source
        self.dir = state_dir / "gitops" / hashlib.sha256(source.key.encode()).hexdigest()[:16]

    def _git(self, *args: str) -> str:
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
        result = subprocess.run(["git", "-C", str(self.dir), *args], capture_output=True, text=True,
                                env=env, timeout=300, check=False)
        if result.returncode != 0:
            raise GitError(f"git {' '.join(args[:2])}: {result.stderr.strip() or result.stdout.strip()}")
        return result.stdout.strip()

    def fetch(self) -> str:
        """Fetch the branch (cloning first if needed); its newest revision."""
        if not (self.dir / ".git").is_dir():
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._git("init", "--quiet")
            self._git("remote", "add", "origin", self.source.url)
        ref = f"refs/remotes/origin/{self.source.branch}"
        self._git("fetch", "--quiet", "--no-tags", "origin", f"+refs/heads/{self.source.branch}:{ref}")
        return self._git("rev-parse", ref)

    def checkout(self, revision: str) -> Path:
        """The manifests directory at `revision` (the work tree is made to match it exactly)."""
        self._git("checkout", "--quiet", "--force", "--detach", revision)
        self._git("clean", "--quiet", "-d", "--force", "-x")
        return self.dir / self.source.path


def follow(source: GitSource, loop: Loop, *, state_dir: Path, interval_s: float,
           fetch_now: threading.Event) -> None:
    """Run until `loop.stop` is set; see the module docstring.

    `state_dir` holds the clone and the journal; the loop must use the same one
    (`Loop.state_dir`), whatever the manifests' Pool says.
    """
    checkout = Checkout(source, state_dir)
    revisions = _Revisions(source, state_dir / "journal.sqlite")
    in_force = revisions.last_good()
    while not loop.stop.is_set():
        fetch_now.clear()
        try:
            head, fetched_at = checkout.fetch(), time.time()
        except GitError as e:
            loop.emit(FetchFailed(time.time(), str(e), in_force))
            head, fetched_at = None, 0.0
        if head is not None and head != in_force and revisions.state(head) != "quarantined":
            report = _apply(checkout, loop, Trigger("revision", fetched_at, revision=head))
            if report.verdict.good:
                revisions.mark(head, "good", "applied")
                in_force = head
            elif report.verdict in (PassVerdict.INVALID, PassVerdict.FAILED):  # the revision's fault
                revisions.mark(head, "quarantined", _quarantine_reason(report))
                if in_force is not None:  # the last good revision stays in force
                    _apply(checkout, loop, Trigger("revision", time.time(), revision=in_force))
        elif in_force is not None:
            _apply(checkout, loop, Trigger("resync", time.time(), revision=in_force), resync=True)
        wait(loop.stop, interval_s, fetch_now)


def _apply(checkout: Checkout, loop: Loop, trigger: Trigger, *, resync: bool = False) -> PassReport:
    revision = trigger.revision or ""

    def load() -> DesiredState:
        try:
            manifests = checkout.checkout(revision)
        except GitError as e:
            raise InvalidInput((Diagnostic(None, None, str(e)),)) from None
        if not manifests.is_dir():
            raise InvalidInput((Diagnostic(None, None, f"revision {revision[:12]} has no directory "
                                                       f"{checkout.source.path!r}"),))
        return prepare.load_desired([manifests], state_dir=loop.state_dir)

    return loop.run_pass(load, trigger, check_packs=resync)


def _quarantine_reason(report: PassReport) -> str:
    """The diagnostics of an invalid revision, or the steps of it that failed."""
    if report.invalid is not None:
        return "; ".join(report.invalid)
    return "; ".join(f"{r.change.address}: {r.message}" for r in report.failed)


class _Revisions:
    """The journal's record of which revisions of this source were good or quarantined."""

    def __init__(self, source: GitSource, journal_path: Path) -> None:
        self._key = source.key
        self._path = journal_path

    def state(self, revision: str) -> str | None:
        with Journal(self._path) as journal:
            return next((r.state for r in journal.revisions(self._key) if r.revision == revision), None)

    def mark(self, revision: str, state: str, reason: str) -> None:
        with Journal(self._path) as journal:
            journal.mark_revision(self._key, revision, state, reason)

    def last_good(self) -> str | None:
        with Journal(self._path) as journal:
            return next((r.revision for r in journal.revisions(self._key) if r.state == "good"), None)
