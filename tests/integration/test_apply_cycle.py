"""apply / diff / get against the real libvirtd and dockerd, through the `somnus` CLI."""

from __future__ import annotations

import subprocess
import time

import libvirt
import pytest

from tests.integration.conftest import Workspace, container_doc, vm_doc

pytestmark = pytest.mark.integration
MiB = 2**20


def _wait_memory(ws: Workspace, suffix: str, expected: int, timeout: float = 60) -> int:
    """What tiny-linux's balloon reports reaches `expected` once its driver has loaded."""
    deadline = time.monotonic() + timeout
    while True:
        memory = int(ws.get_json()[f"vm/{ws.name(suffix)}"]["balloon"])
        if memory == expected or time.monotonic() > deadline:
            return memory
        time.sleep(1)


def test_apply_converges_then_second_run_changes_nothing(workspace: Workspace) -> None:
    ws = workspace
    ws.write("ws.yaml", vm_doc(ws.name("vm")), container_doc(ws.name("box")))

    first = ws.somnus("apply", str(ws.manifests), "-y", check_exit=0)
    assert f"+   vm/{ws.name('vm')}" in first.stdout
    assert f"+   container/{ws.name('box')}" in first.stdout

    state = ws.get_json()
    vm, box = state[f"vm/{ws.name('vm')}"], state[f"container/{ws.name('box')}"]
    assert (vm["state"], vm["managed"], vm["vcpus"]) == ("running", True, 1)
    assert set(vm["forwards"]) == {"ssh", "agent"}
    assert all(v.startswith("127.0.0.1:") for v in vm["forwards"].values())
    assert (box["state"], box["managed"]) == ("running", True)
    domain_id = vm["domainId"]

    ws.somnus("diff", str(ws.manifests), check_exit=0)
    again = ws.somnus("apply", str(ws.manifests), "-y", check_exit=0)
    assert "No changes" in again.stdout
    assert ws.get_json()[f"vm/{ws.name('vm')}"]["domainId"] == domain_id

    # The guest really booted, and its serial console is logged in the state directory.
    console = ws.state_dir / "consoles" / f"{ws.name('vm')}.log"
    deadline = time.monotonic() + 60
    while "somnus-guest: ready" not in (console.read_text(errors="replace") if console.exists() else ""):
        assert time.monotonic() < deadline, "guest never printed its ready line"
        time.sleep(1)


def test_out_of_band_changes_are_detected_and_restored(workspace: Workspace) -> None:
    ws = workspace
    ws.write("ws.yaml", vm_doc(ws.name("vm")), container_doc(ws.name("box")))
    ws.somnus("apply", str(ws.manifests), "-y", check_exit=0)
    assert _wait_memory(ws, "vm", 256 * MiB) == 256 * MiB

    dom = ws.domain("vm")
    dom.setVcpusFlags(2, libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    subprocess.run(["docker", "stop", "-t", "1", ws.name("box")], check=True, capture_output=True)

    drift = ws.somnus("diff", str(ws.manifests), check_exit=1)
    assert "vcpus 2 -> 1" in drift.stdout and "(drift, restart required)" in drift.stdout
    assert f"container/{ws.name('box')}" in drift.stdout and "start" in drift.stdout

    ws.somnus("apply", str(ws.manifests), "-y", check_exit=0)
    ws.somnus("diff", str(ws.manifests), check_exit=0)
    state = ws.get_json()
    assert state[f"vm/{ws.name('vm')}"]["vcpus"] == 1
    assert state[f"container/{ws.name('box')}"]["state"] == "running"

    dom.setMemoryFlags(192 * 1024, libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    assert _wait_memory(ws, "vm", 192 * MiB) == 192 * MiB
    drift = ws.somnus("diff", str(ws.manifests), check_exit=1)
    assert "memory 192Mi -> 256Mi" in drift.stdout and "(drift, live)" in drift.stdout
    ws.somnus("apply", str(ws.manifests), "-y", check_exit=0)
    ws.somnus("diff", str(ws.manifests), check_exit=0)


def test_resize_within_headroom_is_live_and_beyond_it_restarts(workspace: Workspace) -> None:
    ws = workspace
    ws.write("ws.yaml", vm_doc(ws.name("vm")))
    ws.somnus("apply", str(ws.manifests), "-y", check_exit=0)
    assert _wait_memory(ws, "vm", 256 * MiB) == 256 * MiB
    domain_id = ws.domain("vm").ID()

    ws.write("ws.yaml", vm_doc(ws.name("vm"), vcpus=2, memory="384Mi"))
    plan = ws.somnus("diff", str(ws.manifests), check_exit=1)
    line = next(l for l in plan.stdout.splitlines() if ws.name("vm") in l)
    assert "vcpus 1 -> 2" in line and "memory 256Mi -> 384Mi" in line and "(live)" in line
    ws.somnus("apply", str(ws.manifests), "-y", check_exit=0)
    dom = ws.domain("vm")
    assert dom.ID() == domain_id, "a live resize must not restart the guest"
    assert ws.get_json()[f"vm/{ws.name('vm')}"]["vcpus"] == 2
    ws.somnus("diff", str(ws.manifests), check_exit=0)

    ws.write("ws.yaml", vm_doc(ws.name("vm"), vcpus=4, memory="384Mi", max_vcpus=4))
    plan = ws.somnus("diff", str(ws.manifests), check_exit=1)
    assert "(restart required)" in plan.stdout
    ws.somnus("apply", str(ws.manifests), "-y", check_exit=0)
    vm = ws.get_json()[f"vm/{ws.name('vm')}"]
    assert vm["domainId"] != domain_id
    assert (vm["vcpus"], vm["maxVcpus"], vm["state"]) == (4, 4, "running")


def test_stopped_vm_costs_disk_only_and_starts_on_demand(workspace: Workspace) -> None:
    ws = workspace
    ws.write("ws.yaml", vm_doc(ws.name("vm"), running=False))
    ws.somnus("apply", str(ws.manifests), "-y", check_exit=0)
    assert not ws.domain("vm").isActive()
    ws.write("ws.yaml", vm_doc(ws.name("vm"), running=True))
    assert "start" in ws.somnus("diff", str(ws.manifests), check_exit=1).stdout
    ws.somnus("apply", str(ws.manifests), "-y", check_exit=0)
    assert ws.domain("vm").isActive()
    ws.write("ws.yaml", vm_doc(ws.name("vm"), running=False))
    ws.somnus("apply", str(ws.manifests), "-y", check_exit=0)
    assert not ws.domain("vm").isActive()


def test_prune_removes_only_owned_objects(workspace: Workspace) -> None:
    ws = workspace
    ws.write("ws.yaml", vm_doc(ws.name("vm"), running=False), container_doc(ws.name("box")))
    ws.somnus("apply", str(ws.manifests), "-y", check_exit=0)
    bystander = ws.docker.containers.create(
        "somnus/busybox:latest", ["sleep", "infinity"], name=ws.name("bystander"), network_mode="none"
    )

    ws.write("ws.yaml", container_doc(ws.name("box")))
    kept = ws.somnus("diff", str(ws.manifests), check_exit=0)
    assert f"vm/{ws.name('vm')}" in kept.stdout and "--prune" in kept.stdout
    ws.somnus("apply", str(ws.manifests), "-y", check_exit=0)
    assert ws.domain("vm") is not None

    pruned = ws.somnus("apply", str(ws.manifests), "--prune", "-y", check_exit=0)
    assert f"-   vm/{ws.name('vm')}" in pruned.stdout
    with pytest.raises(libvirt.libvirtError):
        ws.domain("vm")
    names = {c.name for c in ws.docker.containers.list(all=True)}
    assert ws.name("box") in names and bystander.name in names


def test_unowned_objects_with_declared_names_are_refused_and_left_alone(workspace: Workspace) -> None:
    ws = workspace
    xml = (
        "<domain type='qemu'><name>{}</name><memory unit='MiB'>64</memory>"
        "<os><type arch='x86_64' machine='pc'>hvm</type></os></domain>"
    )  # a test double of somebody else's domain; the product builds XML with ElementTree
    ws.conn.defineXML(xml.format(ws.name("theirs")))
    ws.docker.containers.create("somnus/busybox:latest", ["sleep", "1"], name=ws.name("their-box"),
                                network_mode="none")
    ws.write("ws.yaml", vm_doc(ws.name("theirs")), container_doc(ws.name("their-box")),
             container_doc(ws.name("mine")))

    for command in (["diff"], ["apply", "-y"], ["apply", "--prune", "-y"]):
        result = ws.somnus(*command, str(ws.manifests), check_exit=2)
        assert f"vm/{ws.name('theirs')}" in result.stderr and "ownership mark" in result.stderr
        assert f"container/{ws.name('their-box')}" in result.stderr
    assert not ws.domain("theirs").isActive()
    assert "io.somnus.managed" not in ws.docker.containers.get(ws.name("their-box")).labels
    assert ws.name("mine") not in {c.name for c in ws.docker.containers.list(all=True)}


def test_invalid_manifest_changes_nothing(workspace: Workspace) -> None:
    ws = workspace
    bad = vm_doc(ws.name("vm"))
    bad["spec"]["diskSize"] = "lots"
    path = ws.write("bad.yaml", bad, container_doc(ws.name("box")))
    result = ws.somnus("apply", str(ws.manifests), "-y", check_exit=2)
    assert f"{path}:" in result.stderr and "diskSize" in result.stderr
    assert ws.name("vm") not in {d.name() for d in ws.conn.listAllDomains(0)}
    assert ws.name("box") not in {c.name for c in ws.docker.containers.list(all=True)}
