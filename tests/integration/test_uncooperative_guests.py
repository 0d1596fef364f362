"""A guest that cooperates in nothing, under the real libvirtd: spec against status (SPEC section 6).

The VM boots a blank qcow2 disk (no OS: SeaBIOS finds nothing to boot), so it has
no balloon driver, no agent and no SSH, like an OS installer's first boot or a
Windows guest without the virtio drivers. The plan compares what the host set
(the balloon target, the vCPU count); what the guest made of it is the
`MemoryAtTarget` condition. Checked through the CLI: create, live resize up and
down, drift correction, disk growth in place and prune each exit 0 and leave `diff` in sync, while
`get`, `describe`, the apply's output and the journal say the guest never
reached its memory target. The durations are printed (figures, not asserted).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from somnus_reconciler import settings as settings_mod
from tests.integration.conftest import Workspace, vm_doc

pytestmark = pytest.mark.integration

MiB = 2**20
NO_DRIVER = "no balloon driver?"


@pytest.fixture
def blank_disk(workspace: Workspace) -> Iterator[Path]:
    """An empty qcow2 in the images directory (an allowed image root, readable by QEMU)."""
    path = settings_mod.resolve().images_dir / f"{workspace.prefix}-blank.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    path.chmod(0o644)
    yield path
    path.unlink(missing_ok=True)


def _timed_apply(ws: Workspace, *extra: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = ws.somnus("apply", str(ws.manifests), "-y", *extra, check_exit=0)
    elapsed = time.monotonic() - started
    print(f"\napply {' '.join(extra)}: {elapsed:.1f} s")
    return result, elapsed


def _row(ws: Workspace) -> dict[str, Any]:
    return ws.get_json()[f"vm/{ws.name('vm')}"]


def _conditions(row: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["message"]) for c in row["conditions"]}


def _reports(balloon_mib: int, target_mib: int) -> str:
    return f"guest reports {balloon_mib}Mi of {target_mib}Mi requested; {NO_DRIVER}"


def test_a_guest_without_balloon_driver_or_agent_converges_and_reports_what_it_did(
        workspace: Workspace, blank_disk: Path) -> None:
    ws = workspace
    name = ws.name("vm")
    ws.write("ws.yaml", vm_doc(name, image=str(blank_disk), memory="256Mi", max_memory="512Mi"))

    created, _ = _timed_apply(ws)
    assert f"MemoryAtTarget False: {_reports(512, 256)}" in created.stdout
    ws.somnus("diff", str(ws.manifests), check_exit=0)
    row = _row(ws)
    assert (row["state"], row["memory"], row["balloon"], row["agent"]) == ("running", 256 * MiB, 512 * MiB, None)
    conditions = _conditions(row)
    assert conditions["MemoryAtTarget"] == ("False", _reports(512, 256))
    assert conditions["Ready"] == ("True", f"running; image {blank_disk} carries no agent to ask")
    assert "AgentConnected" not in conditions
    assert conditions["LastStepSucceeded"][0] == "True"
    described = ws.somnus("describe", f"vm/{name}", check_exit=0).stdout
    assert f"MemoryAtTarget       False  {_reports(512, 256)}" in described
    assert "balloon:     512Mi" in described
    domain_id = ws.domain("vm").ID()

    # Live, up: one more vCPU (hot-plugged by QEMU) and a higher balloon target.
    ws.write("ws.yaml", vm_doc(name, image=str(blank_disk), vcpus=2, memory="384Mi", max_memory="512Mi"))
    plan = ws.somnus("diff", str(ws.manifests), check_exit=1).stdout
    assert "vcpus 1 -> 2" in plan and "memory 256Mi -> 384Mi" in plan and "(live)" in plan
    _timed_apply(ws)
    ws.somnus("diff", str(ws.manifests), check_exit=0)
    row = _row(ws)
    assert (row["domainId"], row["vcpus"], row["memory"]) == (domain_id, 2, 384 * MiB)
    assert _conditions(row)["MemoryAtTarget"] == ("False", _reports(512, 384))

    # Live, down.
    ws.write("ws.yaml", vm_doc(name, image=str(blank_disk), vcpus=2, memory="192Mi", max_memory="512Mi"))
    assert "memory 384Mi -> 192Mi" in ws.somnus("diff", str(ws.manifests), check_exit=1).stdout
    _timed_apply(ws)
    ws.somnus("diff", str(ws.manifests), check_exit=0)
    assert (_row(ws)["domainId"], _row(ws)["memory"]) == (domain_id, 192 * MiB)

    # Drift: the target set by hand is found and put back.
    ws.domain("vm").setMemoryFlags(320 * 1024, libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    drift = ws.somnus("diff", str(ws.manifests), check_exit=1).stdout
    assert "memory 320Mi -> 192Mi" in drift and "(drift, live)" in drift
    _timed_apply(ws)
    ws.somnus("diff", str(ws.manifests), check_exit=0)
    assert _row(ws)["memory"] == 192 * MiB

    # The disk grows in place, live: QEMU's view of it is larger, the domain the same.
    grown = vm_doc(name, image=str(blank_disk), vcpus=2, memory="192Mi", max_memory="512Mi")
    grown["spec"]["diskSize"] = "2Gi"
    ws.write("ws.yaml", grown)
    assert "diskSize 1Gi -> 2Gi" in ws.somnus("diff", str(ws.manifests), check_exit=1).stdout
    _timed_apply(ws)
    ws.somnus("diff", str(ws.manifests), check_exit=0)
    assert ws.domain("vm").ID() == domain_id and ws.domain("vm").blockInfo("vda")[0] == 2 * 2**30
    ws.write("ws.yaml", vm_doc(name, image=str(blank_disk), vcpus=2, memory="192Mi", max_memory="512Mi"))
    refused = ws.somnus("apply", str(ws.manifests), "-y", check_exit=2)
    assert "spec.diskSize: 1Gi is smaller than the disk's 2Gi; shrinking a disk is not supported" in refused.stderr
    assert ws.domain("vm").blockInfo("vda")[0] == 2 * 2**30
    ws.write("ws.yaml", grown)

    history = json.loads(ws.somnus("history", "--object", f"vm/{name}", "-o", "json", check_exit=0).stdout)
    assert [e["outcome"] for e in history["items"] if e["action"] != "drift"] == ["ok"] * 5
    assert all(NO_DRIVER in e["message"] for e in history["items"] if e["action"] != "drift"), history

    # Prune: the VM is no longer declared.
    ws.write("ws.yaml")
    assert f"vm/{name}" in ws.somnus("diff", str(ws.manifests), "--prune", check_exit=1).stdout
    _timed_apply(ws, "--prune")
    ws.somnus("diff", str(ws.manifests), "--prune", check_exit=0)
    with pytest.raises(libvirt.libvirtError):
        ws.domain("vm")
