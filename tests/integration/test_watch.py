"""`somnus watch` against the real libvirtd and dockerd: manifest edits converge, a
syntax error changes nothing and the watcher keeps going, and out-of-band changes
(a VM resized or destroyed with the libvirt API, a container removed, a pack's
verify command failing in the guest) are found at the next resync and corrected,
or only reported under `driftPolicy: warn`. Then `history --search` finds them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import libvirt
import pytest

from tests.integration.conftest import Workspace, container_doc, vm_doc
from tests.integration.event_stream import EventStream
from tests.integration.test_pack_steps import box_doc, pack_doc, playbook

pytestmark = pytest.mark.integration
MiB = 2**20


def container_memory(ws: Workspace, suffix: str) -> int:
    return int(ws.docker.api.inspect_container(ws.name(suffix))["HostConfig"]["Memory"])


def test_watch_converges_edits_reports_a_syntax_error_and_keeps_running(workspace: Workspace) -> None:
    ws = workspace
    path = ws.write("box.yaml", container_doc(ws.name("box")))
    stream = EventStream(["watch", str(ws.manifests), "--interval", "300s"], ws.state_dir)
    try:
        stream.reconciled(trigger="start", outcome="converged")
        assert container_memory(ws, "box") == 64 * MiB

        mark = stream.mark()
        ws.write("box.yaml", container_doc(ws.name("box"), memory="96Mi"))
        planned = stream.wait_for(lambda e: e["event"] == "planned" and e["trigger"] == "change", after=mark)
        assert str(path) in planned["files"]
        stream.reconciled(after=mark, trigger="change", outcome="converged")
        assert container_memory(ws, "box") == 96 * MiB
        box_id = ws.docker.api.inspect_container(ws.name("box"))["Id"]

        mark = stream.mark()
        path.write_text(path.read_text().replace("memory: 96Mi", "memory: 128Mi") + "\nbroken: [\n")
        invalid = stream.reconciled(after=mark, outcome="invalid")
        assert f"{path}:" in invalid["errors"][0]
        assert ws.docker.api.inspect_container(ws.name("box"))["Id"] == box_id  # nothing changed

        mark = stream.mark()
        ws.write("box.yaml", container_doc(ws.name("box"), memory="128Mi"))
        stream.reconciled(after=mark, trigger="change", outcome="converged")
        assert container_memory(ws, "box") == 128 * MiB
    finally:
        assert stream.stop() == 0


def drift_manifests(ws: Workspace, books: Path) -> list[dict[str, Any]]:
    books.mkdir(exist_ok=True)
    playbook(books / "marker.yml", [
        {"name": "write a marker", "ansible.builtin.copy": {"dest": "/opt/marker", "content": "x"}},
    ])
    warned = vm_doc(ws.name("warned"))
    warned["spec"]["driftPolicy"] = "warn"
    return [
        pack_doc("marker", playbook="playbooks/marker.yml", verify=["test -e /opt/marker"]),
        vm_doc(ws.name("vm")), warned,
        container_doc(ws.name("box")), box_doc(ws.name("tools"), ["marker"]),
    ]


def test_resync_finds_out_of_band_changes_and_corrects_or_reports_them(workspace: Workspace) -> None:
    ws = workspace
    ws.write("ws.yaml", *drift_manifests(ws, ws.manifests / "playbooks"))
    ws.somnus("apply", str(ws.manifests), "-y", check_exit=0)

    vm, warned = ws.domain("vm"), ws.domain("warned")
    vm.setVcpusFlags(2, libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    warned.destroy()
    ws.docker.api.remove_container(ws.name("box"), force=True)
    assert subprocess.run(["docker", "exec", ws.name("tools"), "rm", "/opt/marker"]).returncode == 0

    stream = EventStream(["watch", str(ws.manifests), "--interval", "3s"], ws.state_dir)
    try:
        found = stream.reconciled(trigger="start", timeout_s=300)
        assert found["outcome"] == "converged", found
        assert (found["driftCorrected"], found["driftReported"]) == (3, 1), found
        steps = [e for e in stream.events if e["event"] == "step"]
        assert {(e["address"], e["action"], e["drift"], e["ok"]) for e in steps} == {
            (f"vm/{ws.name('vm')}", "update", True, True),
            (f"container/{ws.name('box')}", "create", True, True),
            (f"container/{ws.name('tools')}", "pack install", True, True),
        }
        # The next resync finds nothing to correct; the warned VM stays off, reported once.
        stream.reconciled(trigger="resync", outcome="in sync", driftReported=1)
    finally:
        assert stream.stop() == 0

    assert ws.domain("vm").vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_LIVE) == 1
    assert not ws.domain("warned").isActive()
    assert subprocess.run(["docker", "exec", ws.name("tools"), "test", "-e", "/opt/marker"]).returncode == 0
    history = json.loads(ws.somnus("history", "--outcome", "reported", "-o", "json", check_exit=0).stdout)
    assert [e["address"] for e in history["items"]] == [f"vm/{ws.name('warned')}"]
    corrected = json.loads(ws.somnus("history", "--outcome", "corrected", "-o", "json", check_exit=0).stdout)
    assert len(corrected["items"]) == 3

    search = json.loads(ws.somnus("history", "--search", "someone deleted the container by hand",
                                  "-o", "json", check_exit=0).stdout)
    # The box's creates and its drift event read alike to the model as the other
    # container's create; which of them ranks first is a near tie. One of the box's is in the top three.
    top = {(hit["address"], hit["action"]) for hit in search["items"][:3]}
    assert top & {(f"container/{ws.name('box')}", "drift"), (f"container/{ws.name('box')}", "create")}, search
