"""journal: step records survive a reopen, old journals gain the phase column, one apply at a time."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from somnus_reconciler.journal import ApplyLock, Journal


def test_open_steps_survive_a_reopen_until_closed(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    step = journal.open_step("vm/a", "pack install x", "somnus-pack-x-1", '{"kind": "vm", "name": "a"}')
    journal.step_phase(step, "snapshot taken")
    journal.close()
    reopened = Journal(tmp_path / "j.sqlite")
    [open_step] = reopened.open_steps()
    assert (open_step.address, open_step.snapshot) == ("vm/a", "somnus-pack-x-1")
    reopened.close_step(open_step.id, "rolled back")
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


def test_container_pack_records_follow_the_container(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    journal.set_container_pack("box", "id1", "a", "fa")
    journal.set_container_pack("box", "id1", "b", "fb")
    journal.set_container_pack("box", "id1", "a", None)
    assert journal.container_packs() == {"box": ("id1", (("b", "fb"),))}
    journal.move_container_packs("box", "id2")
    assert journal.container_packs()["box"][0] == "id2"
    journal.move_container_packs("box", None)
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
        with ApplyLock(tmp_path, on_wait=said.append):
            waited = time.monotonic() - started
        assert said == [f"waiting for the apply lock on {tmp_path} (held by pid {holder.pid})"]
        assert waited > 0.5
    finally:
        holder.wait(timeout=10)
