"""Backups and restores of a real debian-12 guest (issue 12), through the CLI, with
virtnbdbackup under the real libvirtd and files checked through the guest's agent.

One VM for the module. In order: a full backup, 10 MiB written, an incremental
(under 10% of the full), both files deleted, a restore of the incremental chain
brings both back; a snapshot reverted beside backup checkpoints, and a backup
killed halfway that leaves nothing; a backup taken while the guest writes restores
to a clean file system; then an osFamily change (a new disk) is refused without
`--replace`, taken with it after a full backup, and `restore` of that backup
brings the old guest's file back. Sizes and durations are printed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import libvirt
import pytest

from somnus_reconciler import settings as settings_mod
from somnus_reconciler.providers import guest_access
from somnus_reconciler.providers.agent_client import AgentClient, AgentError
from tests.integration.conftest import Workspace, remove_objects

pytestmark = pytest.mark.integration

READY_TIMEOUT_S = 300.0
COPYING_BYTES = 2**20  # a backup's data file this large: the copy of the disk is under way


def _vm_doc(ws: Workspace, os_family: str = "debian") -> dict[str, Any]:
    return {"apiVersion": "somnus/v1", "kind": "VirtualMachine", "metadata": {"name": ws.name("vm")},
            "spec": {"resources": {"vcpus": 1, "memory": "1Gi"}, "image": "debian-12", "diskSize": "4Gi",
                     "osFamily": os_family}}


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory, libvirt_conn: libvirt.virConnect,
       docker_client: docker.DockerClient) -> Iterator[Workspace]:
    workspace = Workspace(tmp_path_factory.mktemp("backups"), f"it-{uuid.uuid4().hex[:6]}", libvirt_conn, docker_client)
    workspace.somnus("image", "build", "debian-12", check_exit=0)
    workspace.write("vm.yaml", _vm_doc(workspace))
    workspace.somnus("apply", str(workspace.manifests), "-y", check_exit=0)
    yield workspace
    remove_objects(workspace)
    shutil.rmtree(settings_mod.resolve().backups_dir / workspace.name("vm"), ignore_errors=True)


def _agent(ws: Workspace) -> AgentClient:
    """The VM's agent once it answers (after each boot)."""
    started = time.monotonic()
    while True:
        row = ws.get_json()[f"vm/{ws.name('vm')}"]
        address = row["forwards"].get("agent")
        if address and {c["type"]: c["status"] for c in row["conditions"]}.get("Ready") == "True":
            client = AgentClient(int(address.rsplit(":", 1)[1]),
                                 guest_access.read_agent_token(ws.state_dir, ws.name("vm")),
                                 guest_access.agent_certificate(ws.state_dir, ws.name("vm")))
            try:
                client.status()
                return client
            except AgentError:
                pass
        assert time.monotonic() - started < READY_TIMEOUT_S, f"agent not Ready after {READY_TIMEOUT_S:.0f} s: {row}"
        time.sleep(2)


def _run(client: AgentClient, command: str) -> str:
    result = client.execute(["sh", "-c", command], timeout_s=120)
    assert result["exit_code"] == 0, result
    return str(result["stdout"])


def _backups(ws: Workspace) -> list[dict[str, Any]]:
    out = ws.somnus("backups", f"vm/{ws.name('vm')}", "-o", "json", check_exit=0).stdout
    return list(json.loads(out)["items"])


def _timed(ws: Workspace, *args: str, check_exit: int = 0) -> str:
    started = time.monotonic()
    out = ws.somnus(*args, check_exit=check_exit).stdout
    print(f"\nsomnus {args[0]}: {time.monotonic() - started:.1f} s: {out.strip()}")
    return out


def test_a_full_then_an_incremental_backup_and_a_restore_of_the_chain(ws: Workspace) -> None:
    client = _agent(ws)
    _run(client, "echo before > /root/a && sync")
    _timed(ws, "backup", f"vm/{ws.name('vm')}")
    _run(client, "head -c 10485760 /dev/urandom > /root/b && sha256sum /root/b > /root/b.sum && sync")
    _timed(ws, "backup", f"vm/{ws.name('vm')}")
    full, inc = _backups(ws)
    print(f"full {full['size']} bytes, incremental {inc['size']} bytes")
    assert (full["level"], inc["level"], inc["parent"], inc["chain"]) == ("full", "inc", full["name"], full["name"])
    assert 10 * 2**20 <= inc["size"] < full["size"] / 10

    _run(client, "rm /root/a /root/b && sync")
    _timed(ws, "restore", f"vm/{ws.name('vm')}")
    client = _agent(ws)
    assert _run(client, "cat /root/a") == "before\n"
    _run(client, "sha256sum -c /root/b.sum")
    names = [b["name"] for b in _backups(ws)]
    assert len(names) == 3 and _backups(ws)[-1]["reason"] == "before restore"
    history = json.loads(ws.somnus("history", "--object", f"vm/{ws.name('vm')}", "-o", "json", check_exit=0).stdout)
    assert history["items"][-1]["action"] == "restore"


def test_a_snapshot_reverts_beside_backup_checkpoints_and_a_killed_backup_leaves_nothing(ws: Workspace) -> None:
    """QEMU will not load a snapshot beside dirty bitmaps: the revert drops the checkpoints,
    so the next backup is a full one. That full one is killed halfway: it is not listed,
    its files go, and the backup after it is complete."""
    address = f"vm/{ws.name('vm')}"
    _agent(ws)
    ws.somnus("backup", address, check_exit=0)
    ws.domain("vm").snapshotCreateXML("<domainsnapshot><name>somnus-test-revert</name></domainsnapshot>", 0)
    ws.somnus("backup", address, check_exit=0)  # a checkpoint after the snapshot
    ws.somnus("rollback", address, "somnus-test-revert", check_exit=0)
    assert ws.domain("vm").isActive()
    listed = _backups(ws)

    killed = subprocess.Popen([sys.executable, "-m", "somnus_reconciler", "backup", address],
                              env=dict(os.environ, SOMNUS_STATE_DIR=str(ws.state_dir)), start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Killed in the copy of the disk (380 MiB, about 4 s): once virtnbdbackup's data file,
    # `*.data.partial` until it is complete, holds some of it.
    home = settings_mod.resolve().backups_dir / ws.name("vm")
    deadline = time.monotonic() + 120
    while _being_copied(home) < COPYING_BYTES:
        assert killed.poll() is None, "the backup ended before it was seen copying: nothing was killed halfway"
        assert time.monotonic() < deadline, "the backup never started copying"
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert _backups(ws) == listed

    taken = ws.somnus("backup", address, check_exit=0).stdout
    assert "full backup" in taken, taken
    chains = {b["chain"] for b in _backups(ws)}
    assert {p.name for p in (settings_mod.resolve().backups_dir / ws.name("vm")).iterdir()} == chains


def _being_copied(home: Path) -> int:
    """Bytes so far in the data files virtnbdbackup is writing under `home` (`*.data.partial`)."""
    total = 0
    for partial in home.glob("*/*.data.partial"):
        with contextlib.suppress(FileNotFoundError):  # complete, renamed meanwhile
            total += partial.stat().st_size
    return total


def test_a_backup_taken_while_the_guest_writes_restores_to_a_clean_file_system(ws: Workspace) -> None:
    address = f"vm/{ws.name('vm')}"
    client = _agent(ws)
    _run(client, "setsid sh -c 'while :; do date >> /root/writing; head -c 65536 /dev/urandom >> /root/writing; "
                 "done' > /dev/null 2>&1 < /dev/null &")
    # The file is on disk with something in it; the writer goes on through the backup.
    _run(client, "timeout 60 sh -c 'until test -s /root/writing; do sleep 0.1; done' && sync")
    ws.somnus("backup", address, check_exit=0)
    taken = _backups(ws)[-1]
    _timed(ws, "restore", address, taken["name"])
    client = _agent(ws)
    # Booting replayed the journal (x-systemd fsck at mount); the file system is clean and the
    # kernel found no error in it.
    state = _run(client, 'dumpe2fs -h "$(findmnt -no SOURCE /)" 2>/dev/null | grep -i "^filesystem state"')
    assert state.split(":", 1)[1].strip() == "clean", state
    assert _run(client, "dmesg | grep -c 'EXT4-fs error' || true").strip() == "0"
    assert int(_run(client, "stat -c %s /root/writing")) > 0


def test_a_new_disk_needs_consent_and_a_backup_first_and_restore_brings_the_old_guest_back(ws: Workspace) -> None:
    client = _agent(ws)
    _run(client, "echo old-guest > /root/c && sync")
    address = f"vm/{ws.name('vm')}"
    ws.write("vm.yaml", _vm_doc(ws, os_family="windows"))
    plan = ws.somnus("diff", str(ws.manifests), check_exit=1).stdout
    assert "(recreate: disk replaced)" in plan, plan
    refused = ws.somnus("apply", str(ws.manifests), "-y", check_exit=2)
    assert f"{address}: osFamily debian -> windows means a new disk" in refused.stderr
    assert f"--replace {address}" in refused.stderr
    before = len(_backups(ws))

    replaced = _timed(ws, "apply", str(ws.manifests), "-y", "--replace", address)
    backup = _backups(ws)[-1]
    assert len(_backups(ws)) == before + 1 and backup["reason"] == "before replace"
    assert f"backup {backup['name']} taken" in replaced
    client = _agent(ws)
    assert client.execute(["test", "-e", "/root/c"])["exit_code"] == 1  # a new disk

    _timed(ws, "restore", address, backup["name"])
    client = _agent(ws)
    assert _run(client, "cat /root/c") == "old-guest\n"
    assert "osFamily debian -> windows" in ws.somnus("diff", str(ws.manifests), check_exit=1).stdout
