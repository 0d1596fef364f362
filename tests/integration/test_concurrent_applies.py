"""Two `somnus apply` processes on one state directory, for real: the second waits for
the first's lock and names its pid; they never act at the same time (the journal's
steps do not overlap), and the second finds nothing left to do.

The first apply's pack step waits for a gate (a file in its container) that the test
opens only once the second apply has said it waits: the second meets the lock held
on any machine, however fast or busy, with no clock to guess."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest

from testkit.output_lines import OutputLines
from tests.integration.conftest import Workspace, container_doc
from tests.integration.test_pack_steps import box_doc, pack_doc, playbook

pytestmark = pytest.mark.integration
GATE = "/tmp/somnus-test-gate"


def test_a_second_apply_waits_for_the_first_and_never_acts_alongside_it(workspace: Workspace) -> None:
    ws = workspace
    books = ws.manifests / "playbooks"
    books.mkdir()
    playbook(books / "gated.yml", [{"name": "wait for the test to open the gate",
                                    "ansible.builtin.shell": f"timeout 300 sh -c 'until test -e {GATE}; "
                                                             "do sleep 0.1; done'"}])
    ws.write("ws.yaml", pack_doc("gated", playbook="playbooks/gated.yml"),
             box_doc(ws.name("tools"), ["gated"]), container_doc(ws.name("box")))
    env = dict(os.environ, SOMNUS_STATE_DIR=str(ws.state_dir))
    argv = [sys.executable, "-m", "somnus_reconciler", "apply", str(ws.manifests), "-y"]
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert first.stdout is not None and first.stderr is not None
    out1, err1 = OutputLines(first.stdout, str), OutputLines(first.stderr, str)
    started = [first]
    try:
        # The first holds the lock (steps run under it) and waits at its gate.
        gated = out1.wait_for(lambda line: line.startswith(f"container/{ws.name('tools')}: pack gated"), 300)
        assert gated is not None, "".join(out1.items + err1.items)
        second = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        started.append(second)
        assert second.stdout is not None and second.stderr is not None
        out2, err2 = OutputLines(second.stdout, str), OutputLines(second.stderr, str)
        try:
            waiting = err2.wait_for(lambda line: f"held by pid {first.pid}" in line, 120)
            assert waiting is not None, "".join(out2.items + err2.items)
        finally:
            ws.docker.containers.get(ws.name("tools")).exec_run(["touch", GATE])  # the first goes on
        codes = (first.wait(timeout=600), second.wait(timeout=600))
    finally:
        for proc in started:  # only on a failure above: the test's own applies, by their pid
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for lines in (out1, err1, out2, err2):
        lines.join(timeout_s=10)
    output = "".join(out1.items + err1.items + out2.items + err2.items)
    assert codes == (0, 0), output
    assert "No changes" in "".join(out2.items), output  # it planned only once the first had converged everything
    with sqlite3.connect(ws.state_dir / "journal.sqlite") as db:
        pids = {pid for (pid,) in db.execute("SELECT DISTINCT pid FROM steps")}
    assert pids == {first.pid}, "only the lock holder ran guarded steps"
