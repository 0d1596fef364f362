"""journal: step records survive a reopen, old journals gain the phase column, outcomes read back
as `Outcome`, the journal closes as a context manager, one apply at a time."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from somnus_reconciler.journal import ApplyLock, Journal
from somnus_reconciler.values.outcome import Outcome


def test_open_steps_survive_a_reopen_until_closed(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    step = journal.open_step("vm/a", "pack install x", "somnus-pack-x-1", '{"kind": "vm", "name": "a"}')
    journal.step_phase(step, "snapshot taken")
    journal.close()
    reopened = Journal(tmp_path / "j.sqlite")
    [open_step] = reopened.open_steps()
    assert (open_step.address, open_step.snapshot) == ("vm/a", "somnus-pack-x-1")
    reopened.close_step(open_step.id, Outcome.ROLLED_BACK)
    assert reopened.open_steps() == []


def test_a_journal_from_before_step_phases_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE steps (id INTEGER PRIMARY KEY AUTOINCREMENT, started_at REAL NOT NULL, "
               "address TEXT NOT NULL, step TEXT NOT NULL, snapshot TEXT, state TEXT NOT NULL, "
               "pid INTEGER NOT NULL, detail TEXT NOT NULL DEFAULT '')")
    db.commit()
    db.close()
    journal = Journal(path)
    journal.step_phase(journal.open_step("vm/a", "s", None), "acted")
    assert len(journal.open_steps()) == 1


def test_outcomes_are_stored_as_their_words_and_read_back_as_outcomes(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    with Journal(path) as journal:
        journal.record("vm/a", "pack install x", Outcome.ROLLED_BACK, "reverted")
        journal.record("vm/a", "soft-reboot", Outcome.TIMED_OUT, "1 process(es) not back")
        step = journal.open_step("vm/a", "pack install x", None)
        journal.close_step(step, Outcome.OK)
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT outcome FROM events ORDER BY id").fetchall() == [("rolled back",), ("timed out",)]
        assert db.execute("SELECT state FROM steps").fetchall() == [("done",)]  # the table's word for ok
    with Journal(path) as journal:
        outcomes = [event.outcome for event in journal.history()]
        [timed_out] = journal.history(outcome=Outcome.TIMED_OUT)
    assert outcomes == [Outcome.ROLLED_BACK, Outcome.TIMED_OUT]
    assert all(type(outcome) is Outcome for outcome in outcomes)
    assert timed_out.action == "soft-reboot"


def test_an_unknown_outcome_word_reads_as_written(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    Journal(path).close()
    with contextlib.closing(sqlite3.connect(path)) as db, db:  # e.g. written by a newer somnus
        db.execute("INSERT INTO events (at, address, action, outcome, message) VALUES (1, 'vm/a', 'x', 'deferred', '')")
    with Journal(path) as journal:
        [event] = journal.history(outcome="deferred")
        assert event.outcome == "deferred" and not isinstance(event.outcome, Outcome)


def test_the_journal_closes_at_the_end_of_its_with_block(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite") as journal:
        assert journal.recent() == []
    with pytest.raises(sqlite3.ProgrammingError):
        journal.recent()


def test_container_pack_records_follow_the_container(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    journal.set_container_pack("box", "id1", "a", "fa")
    journal.set_container_pack("box", "id1", "b", "fb")
    journal.set_container_pack("box", "id1", "a", None)
    assert journal.container_packs() == {"box": ("id1", (("b", "fb"),))}
    journal.move_container_packs("box", "id1", "id2")
    assert journal.container_packs() == {"box": ("id2", (("b", "fb"),))}
    journal.move_container_packs("box", "id2", None)
    assert journal.container_packs() == {}


def test_records_of_a_container_that_is_gone_do_not_reach_a_new_one_of_its_name(tmp_path: Path) -> None:
    """Issue 12, item 0: box (id1) has pack a; it is removed by hand; its successor id2 is
    snapshotted for a pack step that is killed; the rollback restores id2 as id3."""
    journal = Journal(tmp_path / "j.sqlite")
    journal.set_container_pack("box", "id1", "a", "fa")
    journal.move_container_packs("box", "id2", "id3")
    assert journal.container_packs() == {}
    journal.set_container_pack("box", "id1", "a", "fa")
    journal.set_container_pack("box", "id3", "b", "fb")  # a new container's first record
    assert journal.container_packs() == {"box": ("id3", (("b", "fb"),))}
    journal.move_container_packs("box", None, "id4")  # nothing was there to replace
    assert journal.container_packs() == {}


HOLD = """
import sys, time
from pathlib import Path
from somnus_reconciler.journal import ApplyLock
with ApplyLock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_second_apply_waits_and_names_the_holder(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path), "1.5"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        said: list[str] = []
        started = time.monotonic()
        with ApplyLock(tmp_path, on_wait=said.append) as lock:
            waited = time.monotonic() - started
        assert said == [f"waiting for the apply lock on {tmp_path} (held by pid {holder.pid})"]
        assert lock.waited
        assert waited > 0.5
    finally:
        holder.wait(timeout=10)


def test_the_lock_says_when_its_last_holder_let_go_and_if_it_was_killed_holding_it(tmp_path: Path) -> None:
    with ApplyLock(tmp_path) as first:
        assert (first.previous_release, first.waited) == (0.0, False)  # never held before
    before = time.time()
    with ApplyLock(tmp_path):
        pass
    after = time.time()
    with ApplyLock(tmp_path) as lock:
        assert lock.previous_release is not None and before <= lock.previous_release <= after
    (tmp_path / "apply.lock").write_text("4242")  # a holder's pid, left by its SIGKILL
    with ApplyLock(tmp_path) as lock:
        assert lock.previous_release is None
