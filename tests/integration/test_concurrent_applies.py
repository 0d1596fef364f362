"""Two `somnus apply` processes on one state directory, for real: the second waits for
the first's lock and names its pid; they never act at the same time (the journal's
steps do not overlap), and the second finds nothing left to do."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time

import pytest

from tests.integration.conftest import Workspace, container_doc
from tests.integration.test_pack_steps import box_doc, pack_doc, playbook

pytestmark = pytest.mark.integration


def test_a_second_apply_waits_for_the_first_and_never_acts_alongside_it(workspace: Workspace) -> None:
    ws = workspace
    books = ws.manifests / "playbooks"
    books.mkdir()
    playbook(books / "slow.yml", [{"name": "take a while", "ansible.builtin.command": "sleep 4"}])
    ws.write("ws.yaml", pack_doc("slow", playbook="playbooks/slow.yml"),
             box_doc(ws.name("tools"), ["slow"]), container_doc(ws.name("box")))
    env = dict(os.environ, SOMNUS_STATE_DIR=str(ws.state_dir))
    argv = [sys.executable, "-m", "somnus_reconciler", "apply", str(ws.manifests), "-y"]
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lock = ws.state_dir / "apply.lock"
    deadline = time.monotonic() + 60
    while not (lock.exists() and lock.read_text().strip() == str(first.pid)):  # the first holds it
        assert time.monotonic() < deadline and first.poll() is None, "the first apply never took the lock"
        time.sleep(0.05)
    second = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    out1, err1 = first.communicate(timeout=600)
    out2, err2 = second.communicate(timeout=600)
    assert (first.returncode, second.returncode) == (0, 0), out1 + err1 + out2 + err2
    assert f"held by pid {first.pid}" in err2, err2
    assert "No changes" in out2  # it planned only once the first had converged everything
    with sqlite3.connect(ws.state_dir / "journal.sqlite") as db:
        pids = {pid for (pid,) in db.execute("SELECT DISTINCT pid FROM steps")}
    assert pids == {first.pid}, "only the lock holder ran guarded steps"
