"""`somnus watch` takes the backups a VM's `backup.schedule` makes due (issue 12), under the
real libvirtd with a tiny-linux VM: the first at once (the VM has none), the next one a
minute later, as an incremental on the same chain; `describe` shows the last and the next."""

from __future__ import annotations

import json

import pytest

from tests.integration.conftest import Workspace, vm_doc
from tests.integration.event_stream import EventStream

pytestmark = pytest.mark.integration


def test_a_watch_loop_takes_a_backup_each_minute(workspace: Workspace) -> None:
    ws = workspace
    doc = vm_doc(ws.name("vm"))
    doc["spec"]["backup"] = {"schedule": "1m", "retain": 5}
    ws.write("ws.yaml", doc)
    stream = EventStream(["watch", str(ws.manifests), "--interval", "1h"], ws.state_dir)
    try:
        first = stream.wait_for(lambda e: e["event"] == "backup", timeout_s=180)
        second = stream.wait_for(lambda e: e["event"] == "backup" and e["at"] > first["at"], timeout_s=180)
    finally:
        assert stream.stop() == 0
    assert first["ok"] and second["ok"], (first, second)
    # Due a minute after the first: not before, and well before a second minute (the scheduler polls every 5 s).
    assert 59.0 <= second["at"] - first["at"] < 120.0, (first, second)
    items = json.loads(ws.somnus("backups", f"vm/{ws.name('vm')}", "-o", "json", check_exit=0).stdout)["items"]
    assert [(i["name"], i["level"], i["reason"]) for i in items] == [
        (first["backup"], "full", "schedule"), (second["backup"], "inc", "schedule")]
    backup = ws.get_json()[f"vm/{ws.name('vm')}"]["backup"]
    assert (backup["last"], backup["schedule"], backup["retain"]) == (second["backup"], "1m", 5)
    assert backup["nextDue"] == items[-1]["at"] + 60
