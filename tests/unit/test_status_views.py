"""`get` (table, JSON, YAML) and `describe` views: exact output from typed status values.

The JSON is the shape docs/output.md documents and tests/integration read
(camelCase keys, conditions with "True"/"False", the agent's stats as it sends them).
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import json

import yaml

from somnus_reconciler.cli import describe_view, status_view
from somnus_reconciler.journal import Event
from somnus_reconciler.passes.agent_health import (
    AgentHealth,
    AgentProcess,
    AgentReport,
    AgentStats,
    DiskUsage,
    ErrorLine,
    LoadAverage,
    MemoryUsage,
)
from somnus_reconciler.passes.status import AppliedPack, ContainerStatus, Description, Forward, VmStatus
from somnus_reconciler.values.actual import PowerState
from somnus_reconciler.values.conditions import Condition

MiB = 2**20
STATS = AgentStats(1.0, MemoryUsage(1020526592, 175992832, 844533760),
                   DiskUsage("/", 8318783488, 396918784, 7547977728), LoadAverage(0.1, 0.2, 0.1), 70.2, "psutil")
AGENT = AgentHealth("127.0.0.1:52031", True, AgentReport(True, "0.1.0", (AgentProcess("notebook", 412, True),), STATS))
VM = VmStatus(
    name="quickstart-vm", managed=True, state=PowerState.RUNNING, domain_id=5, vcpus=1, max_vcpus=2,
    memory=256 * MiB, max_memory=512 * MiB, balloon=256 * MiB, image="debian-12", owner="quickstart",
    forwards=(Forward("ssh", "127.0.0.1:53451"), Forward("agent", "127.0.0.1:52031")),
    console_log="/root/.local/state/somnus/consoles/quickstart-vm.log", agent=AGENT,
    conditions=(
        Condition("Running", True, "running"),
        Condition("Managed", True, ""),
        Condition("MemoryAtTarget", True, "guest reports 256Mi of 256Mi requested"),
        Condition("AgentConnected", True, "127.0.0.1:52031 version 0.1.0"),
        Condition("Ready", True, "1 process(es) running"),
        Condition("LastStepSucceeded", False, "pack install web-development: failed", "NETWORK_FAILURE"),
    ),
    revision="0123456789abcdef",
)
BOX = ContainerStatus("quickstart-box", True, "running", "somnus/busybox:latest", "0123456789ab",
                      (Condition("Running", True, "running"), Condition("Managed", True, "")))
THEIRS = VmStatus("theirs", False, PowerState.SHUTOFF, None, 2, 2, 0, 1024 * MiB, None, None, None, (), None, None,
                  (Condition("Running", False, "shutoff"), Condition("Managed", False, "no somnus ownership mark")))

VM_JSON = {
    "kind": "vm", "name": "quickstart-vm", "managed": True, "state": "running",
    "domainId": 5, "vcpus": 1, "maxVcpus": 2, "memory": 268435456, "maxMemory": 536870912,
    "balloon": 268435456, "image": "debian-12", "owner": "quickstart",
    "forwards": {"ssh": "127.0.0.1:53451", "agent": "127.0.0.1:52031"},
    "consoleLog": "/root/.local/state/somnus/consoles/quickstart-vm.log",
    "agent": {"address": "127.0.0.1:52031", "connected": True, "ok": True, "version": "0.1.0",
              "processes": [{"name": "notebook", "pid": 412, "running": True}],
              "stats": {"cpu_percent": 1.0, "memory": {"total": 1020526592, "used": 175992832, "available": 844533760},
                        "disk": {"path": "/", "total": 8318783488, "used": 396918784, "free": 7547977728},
                        "load": {"1m": 0.1, "5m": 0.2, "15m": 0.1}, "uptime_s": 70.2, "source": "psutil"}},
    "conditions": [{"type": "Running", "status": "True", "message": "running"},
                   {"type": "Managed", "status": "True", "message": ""},
                   {"type": "MemoryAtTarget", "status": "True", "message": "guest reports 256Mi of 256Mi requested"},
                   {"type": "AgentConnected", "status": "True", "message": "127.0.0.1:52031 version 0.1.0"},
                   {"type": "Ready", "status": "True", "message": "1 process(es) running"},
                   {"type": "LastStepSucceeded", "status": "False", "message": "pack install web-development: failed",
                    "reason": "NETWORK_FAILURE"}],
    "revision": "0123456789abcdef",
}
BOX_JSON = {"kind": "container", "name": "quickstart-box", "managed": True, "state": "running",
            "image": "somnus/busybox:latest", "id": "0123456789ab",
            "conditions": [{"type": "Running", "status": "True", "message": "running"},
                           {"type": "Managed", "status": "True", "message": ""}]}


def test_get_table_is_aligned_columns_with_ready_and_detail() -> None:
    out = io.StringIO()
    status_view.StatusTable(out).objects([VM, BOX, THEIRS])
    assert out.getvalue() == (
        "KIND       NAME            STATE    READY  VCPUS  MEMORY  MANAGED  DETAIL\n"
        "vm         quickstart-vm   running  true   1      256Mi   yes      ssh=127.0.0.1:53451 agent=127.0.0.1:52031\n"
        "container  quickstart-box  running  true                  yes      image=somnus/busybox:latest\n"
        "vm         theirs          shutoff  false  2              no\n"
    )


def test_get_json_keeps_the_documented_keys_and_their_order() -> None:
    out = io.StringIO()
    status_view.StatusJson(out).objects([VM, BOX])
    assert json.loads(out.getvalue()) == {"items": [VM_JSON, BOX_JSON]}
    assert list(json.loads(out.getvalue())["items"][0]) == list(VM_JSON)  # the order docs/output.md shows
    assert out.getvalue().startswith('{\n  "items": [\n    {\n      "kind": "vm",\n')


def test_get_yaml_has_the_json_shape() -> None:
    out = io.StringIO()
    status_view.StatusYaml(out).objects([BOX])
    assert out.getvalue() == yaml.safe_dump({"items": [BOX_JSON]}, sort_keys=False)
    assert out.getvalue().startswith("items:\n- kind: container\n  name: quickstart-box\n")


def test_an_agent_that_does_not_answer_or_has_no_token_has_a_message_and_no_report() -> None:
    assert status_view.agent_json(AgentHealth("127.0.0.1:1", False, message="timed out")) == {
        "address": "127.0.0.1:1", "connected": False, "message": "timed out"}
    assert status_view.agent_json(AgentHealth(None, False, message="no agent forward or token for this VM")) == {
        "address": None, "connected": False, "message": "no agent forward or token for this VM"}


def test_a_stopped_unowned_vm_has_no_agent_and_no_revision_in_json() -> None:
    shape = status_view.status_json(THEIRS)
    assert shape["agent"] is None and shape["image"] is None and shape["forwards"] == {}
    assert "revision" not in shape


def test_describe_a_vm_with_its_agent_errors_and_events() -> None:
    report = AgentReport(True, "0.1.0", (AgentProcess("notebook", 412, True), AgentProcess("crasher", None, False)),
                         STATS, (ErrorLine("/var/log/notebook.log", 1, "E: Unable to locate package x",
                                           "DEPENDENCY_MISSING"),
                                 ErrorLine("/var/log/notebook.log", 2, "fatal: " + "x" * 200)))
    vm = dataclasses.replace(VM, agent=AgentHealth("127.0.0.1:52031", True, report))
    at = datetime.datetime(2024, 5, 1, 10, 15, 7).timestamp()
    events = (Event(1, at, "vm/quickstart-vm", "create", "ok", "created"),
              Event(2, at + 60, "vm/quickstart-vm", "pack install web-development", "rolled back", "no route",
                    "NETWORK_FAILURE"))
    out = io.StringIO()
    describe_view.DescribeHuman(out).describe(Description(vm, events))
    assert out.getvalue() == (
        "kind:        vm\n"
        "name:        quickstart-vm\n"
        "state:       running\n"
        "managed:     True\n"
        "vcpus:       1\n"
        "maxVcpus:    2\n"
        "memory:      256Mi\n"
        "maxMemory:   512Mi\n"
        "balloon:     256Mi\n"
        "image:       debian-12\n"
        "domainId:    5\n"
        "forwards:    ssh=127.0.0.1:53451 agent=127.0.0.1:52031\n"
        "consoleLog:  /root/.local/state/somnus/consoles/quickstart-vm.log\n"
        "conditions:\n"
        "  Running              True   running\n"
        "  Managed              True\n"
        "  MemoryAtTarget       True   guest reports 256Mi of 256Mi requested\n"
        "  AgentConnected       True   127.0.0.1:52031 version 0.1.0\n"
        "  Ready                True   1 process(es) running\n"
        "  LastStepSucceeded    False  [NETWORK_FAILURE] pack install web-development: failed\n"
        "agent:       127.0.0.1:52031 version 0.1.0\n"
        "  process   notebook             pid 412 running\n"
        "  process   crasher              pid None NOT running\n"
        "  cpu       1.0%\n"
        "  memory    167.8Mi used of 973.2Mi\n"
        "  disk      378.5Mi used of 7.7Gi on /\n"
        "  load      0.10 0.20 0.10\n"
        "  uptime    70s\n"
        "  error     [DEPENDENCY_MISSING] /var/log/notebook.log:1: E: Unable to locate package x\n"
        f"  error     [unclassified] /var/log/notebook.log:2: fatal: {'x' * 153}\n"
        "events:\n"
        "  2024-05-01 10:15:07  create   ok      created\n"
        "  2024-05-01 10:16:07  pack install web-development rolled back [NETWORK_FAILURE] no route\n"
    )


def test_describe_a_container_and_an_unowned_stopped_vm() -> None:
    out = io.StringIO()
    view = describe_view.DescribeHuman(out)
    view.describe(Description(BOX, ()))
    view.describe(Description(THEIRS, ()))
    assert out.getvalue() == (
        "kind:        container\n"
        "name:        quickstart-box\n"
        "state:       running\n"
        "managed:     True\n"
        "image:       somnus/busybox:latest\n"
        "conditions:\n"
        "  Running              True   running\n"
        "  Managed              True\n"
        "events:\n"
        "kind:        vm\n"
        "name:        theirs\n"
        "state:       shutoff\n"
        "managed:     False\n"
        "vcpus:       2\n"
        "maxVcpus:    2\n"
        "memory:      0\n"
        "maxMemory:   1Gi\n"
        "conditions:\n"
        "  Running              False  shutoff\n"
        "  Managed              False  no somnus ownership mark\n"
        "events:\n"
    )


def test_describe_lists_the_applied_packs_verified_by_their_last_install_step() -> None:
    at = datetime.datetime(2026, 12, 1, 2, 31, 32).timestamp()
    installed = Event(3, at, "container/quickstart-box", "pack install web-development", "ok", "done")
    rolled_back = Event(4, at + 60, "container/quickstart-box", "pack install data-analysis", "rolled back",
                        "task 'Apt: install packages' failed")
    packs = (AppliedPack("base-tools", "0123456789abcdef", None),
             AppliedPack("web-development", "fedcba9876543210", installed),
             AppliedPack("data-analysis", "a" * 64, rolled_back))
    out = io.StringIO()
    describe_view.DescribeHuman(out).describe(Description(BOX, (), packs))
    assert out.getvalue().endswith(
        "  Managed              True\n"
        "packs:\n"
        "  base-tools           applied; no install step in the journal  fingerprint 0123456789ab\n"
        "  web-development      verified 2026-12-01 02:31:32  fingerprint fedcba987654\n"
        "  data-analysis        last install rolled back 2026-12-01 02:32:32  fingerprint aaaaaaaaaaaa\n"
        "events:\n"
    )


def test_describe_an_agent_that_does_not_answer_or_has_no_token() -> None:
    assert describe_view.agent_lines(AgentHealth("127.0.0.1:52031", False, message="timed out")) == [
        "agent:       127.0.0.1:52031 (not connected)"]
    assert describe_view.agent_lines(AgentHealth(None, False, message="no token")) == ["agent:       - (not connected)"]


def test_a_vm_with_a_backup_policy_shows_its_last_backup_the_next_one_due_and_the_retention() -> None:
    from somnus_reconciler.engine.backups import BackupRecord
    from somnus_reconciler.passes.backup_schedule import BackupStatus
    from somnus_reconciler.values.model import BackupPolicy

    at = datetime.datetime(2026, 11, 30, 3, 0, 0).timestamp()
    last = BackupRecord("20261130T030000000Z", "quickstart-vm", at, "inc", "20261129T030000000Z",
                        "20261129T030000000Z", "virtnbdbackup.1", "h", True, 12 * MiB, "0" * 64, "schedule")
    policy = BackupPolicy.model_validate({"schedule": "24h", "retain": 7, "maxAge": "30d"}, by_alias=True)
    vm = dataclasses.replace(VM, backup=BackupStatus(last, at + 86400, policy))
    assert status_view.vm_json(vm)["backup"] == {
        "last": "20261130T030000000Z", "lastAt": at, "lastLevel": "inc", "nextDue": at + 86400,
        "schedule": "24h", "retain": 7, "maxAge": "30d", "dir": None}
    out = io.StringIO()
    describe_view.DescribeHuman(out).describe(Description(vm, ()))
    assert ("backup:      last 20261130T030000000Z (inc, 2026-11-30 03:00:00), next 2026-12-01 03:00:00, "
            "schedule 24h, retain 7, maxAge 30d\n") in out.getvalue()
    assert "backup" not in status_view.vm_json(VM)
