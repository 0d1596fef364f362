"""`somnus watch` takes the backups a VM's `backup.schedule` makes due (issue 12), under the
real libvirtd with a tiny-linux VM whose `backup.dir` is a directory of the test's own:
the first at once (the VM has none); the next one a minute later is SIGKILLed, with its
virtnbdbackup, in the middle; a new watch lists no half backup, takes the next one at
once, and leaves no partial file behind. `describe` shows the last and the next."""

from __future__ import annotations

import json
import os
import signal
import time

import psutil
import pytest

from somnus_reconciler import settings as settings_mod
from tests.integration.conftest import Workspace, vm_doc
from tests.integration.event_stream import EventStream

pytestmark = pytest.mark.integration


def _virtnbdbackup_of(watch_pid: int, vm: str, *, timeout_s: float) -> psutil.Process:
    """The virtnbdbackup the watch runs for `vm`, once it has started."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            for child in psutil.Process(watch_pid).children(recursive=True):
                if "virtnbdbackup" in " ".join(child.cmdline()) and vm in child.cmdline():
                    return child
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.05)
    raise AssertionError(f"no virtnbdbackup of {vm} within {timeout_s:.0f} s")


def test_a_watch_loop_takes_a_backup_each_minute_and_a_killed_one_leaves_nothing(workspace: Workspace) -> None:
    ws, name = workspace, workspace.name("vm")
    doc = vm_doc(name)
    backup_dir = ws.manifests.parent / "backups"
    doc["spec"]["backup"] = {"schedule": "1m", "retain": 5, "dir": str(backup_dir)}
    ws.write("ws.yaml", doc)

    stream = EventStream(["watch", str(ws.manifests), "--interval", "1h"], ws.state_dir)
    try:
        first = stream.wait_for(lambda e: e["event"] == "backup", timeout_s=180)
        assert first["ok"], first
        # The next one is due a minute later (the scheduler polls every 5 s): kill it halfway.
        copying = _virtnbdbackup_of(stream.proc.pid, name, timeout_s=120)
        assert 59.0 <= time.time() - first["at"] < 120.0, first
        for pid in (stream.proc.pid, copying.pid):  # as a service manager kills the whole group
            os.kill(pid, signal.SIGKILL)
    finally:
        stream.stop()
    listed = json.loads(ws.somnus("backups", f"vm/{name}", "-o", "json", check_exit=0).stdout)["items"]
    assert [i["name"] for i in listed] == [first["backup"]]

    stream = EventStream(["watch", str(ws.manifests), "--interval", "1h"], ws.state_dir)
    try:
        again = stream.wait_for(lambda e: e["event"] == "backup", timeout_s=120)
    finally:
        assert stream.stop() == 0
    assert again["ok"], again
    items = json.loads(ws.somnus("backups", f"vm/{name}", "-o", "json", check_exit=0).stdout)["items"]
    assert [(i["name"], i["reason"]) for i in items] == [(first["backup"], "schedule"), (again["backup"], "schedule")]
    home = backup_dir / name
    assert (settings_mod.resolve().backups_dir / name).resolve() == home.resolve()
    assert {p.name for p in home.iterdir()} == {i["chain"] for i in items}  # no chain without a record
    assert not list(home.rglob("*.partial"))
    backup = ws.get_json()[f"vm/{name}"]["backup"]
    assert (backup["last"], backup["schedule"], backup["retain"]) == (again["backup"], "1m", 5)
    assert backup["nextDue"] == items[-1]["at"] + 60
    assert f"in {backup_dir}" in ws.somnus("describe", f"vm/{name}", check_exit=0).stdout
