"""ansible_processes.end_interrupted_runs with real processes standing in for a
playbook that outlived a killed apply: its whole process group ends, its data
directory goes, and nothing else is touched."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from somnus_reconciler.providers.ansible_processes import end_interrupted_runs

# A leader in a session of its own (as ansible-runner's pty makes it) with a worker
# (a fork: the same command line) and a child whose command line names nothing
# under the work directory (as `docker exec` does).
LEADER = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)',"
          " *sys.argv[1:]]); subprocess.Popen(['sleep', '300']); time.sleep(300)")


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def start(procs: list[subprocess.Popen[bytes]], *argv: str) -> psutil.Process:
    procs.append(subprocess.Popen([sys.executable, "-c", LEADER, *argv], start_new_session=True))
    leader = psutil.Process(procs[-1].pid)
    while len(leader.children()) < 2:
        psutil.wait_procs([leader], timeout=0.02)
    return leader


def test_the_whole_group_of_a_left_over_run_ends_and_its_directory_goes(
        tmp_path: Path, started: list[subprocess.Popen[bytes]]) -> None:
    work_dir = tmp_path / "runs"
    data_dir = work_dir / "pack-marker-abc123"
    data_dir.mkdir(parents=True)
    orphan = start(started, "-i", str(data_dir / "inventory.json"))
    children = orphan.children()
    bystander = start(started, "-i", str(tmp_path / "elsewhere" / "inventory.json"))

    ended = end_interrupted_runs(work_dir)

    assert ended == [f"ended pid {orphan.pid}: a playbook left running by an interrupted pack step"]
    assert not orphan.is_running() or orphan.status() == psutil.STATUS_ZOMBIE
    gone, alive = psutil.wait_procs(children, timeout=5)
    assert not alive, "the worker and the exec-like child end with their leader's group"
    assert not data_dir.exists()
    assert bystander.is_running() and bystander.status() != psutil.STATUS_ZOMBIE


def test_without_a_left_over_directory_nothing_is_looked_for(
        tmp_path: Path, started: list[subprocess.Popen[bytes]]) -> None:
    work_dir = tmp_path / "runs"
    (work_dir / "ssh-cp").mkdir(parents=True)  # shared SSH control sockets are not a run
    running = start(started, "-i", str(work_dir / "pack-gone" / "inventory.json"))

    assert end_interrupted_runs(work_dir) == []
    assert running.is_running() and running.status() != psutil.STATUS_ZOMBIE
    assert end_interrupted_runs(tmp_path / "absent") == []
