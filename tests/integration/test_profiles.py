"""Switching a running VM between resource profiles, against the real libvirtd.

The profiles are the shipped ones, manifests/profiles.yaml, passed to `somnus` as
they are: the figures it holds are part of what is proven. One VM goes through:

1. created with `profile: coding`: libvirt has coding's vCPUs, memory and maxima;
2. `research`: the maxima change, which a running domain cannot take, so `diff`
   says "(restart required)", apply shows the same line, and the domain comes
   back (a new domain ID) with research's figures;
3. back to `coding`: likewise;
4. the live case. No two shipped profiles share their maxima, so no switch
   between them is live; the test declares its own profile, `coding-lite`: half
   of coding's vCPUs and memory under coding's maxVcpus / maxMemory.
   `coding` -> `coding-lite` removes vCPUs, which the planner restarts for even
   within the maxima (many guests never eject a vCPU over ACPI), and says so;
   `coding-lite` -> `coding` stays within the running domain's headroom: the plan
   says "(live)", the vCPUs are hot-plugged and the balloon target raised, and
   the domain keeps its ID.

The guest is tiny-linux: it boots in seconds under TCG and loads virtio_balloon,
so the guest's balloon is checked to reach each memory target too. QEMU
allocates guest memory lazily, so coding's 16Gi maximum costs the host little;
the test's Pool (`Workspace.write`) overcommits vCPUs 8 times, so coding's 4
vCPUs pass admission on a 2-core host.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import libvirt
import pytest
import yaml

from somnus_reconciler.values.quantity import format_bytes, parse_quantity
from tests.integration.conftest import Workspace

pytestmark = pytest.mark.integration

SHIPPED_PROFILES = Path(__file__).resolve().parents[2] / "manifests" / "profiles.yaml"
BALLOON_TIMEOUT_S = 120.0


def _shipped(name: str) -> dict[str, Any]:
    """The spec of the shipped profile `name`, as manifests/profiles.yaml declares it."""
    for document in yaml.safe_load_all(SHIPPED_PROFILES.read_text()):
        if document["kind"] == "ResourceProfile" and document["metadata"]["name"] == name:
            spec: dict[str, Any] = document["spec"]
            return spec
    raise AssertionError(f"{SHIPPED_PROFILES} ships no profile {name!r}")


def _vm_doc(name: str, profile: str) -> dict[str, Any]:
    return {
        "apiVersion": "somnus/v1", "kind": "VirtualMachine",
        "metadata": {"name": name, "labels": {"owner": "tests"}},
        "spec": {"profile": profile, "image": "tiny-linux", "diskSize": "1Gi", "running": True},
    }


def _coding_lite() -> dict[str, Any]:
    """Half of coding's vCPUs and memory, under coding's own maxima."""
    coding = _shipped("coding")
    spec = {"vcpus": coding["vcpus"] // 2, "memory": format_bytes(parse_quantity(coding["memory"]) // 2),
            "maxVcpus": coding["maxVcpus"], "maxMemory": coding["maxMemory"], "gpu": False}
    return {"apiVersion": "somnus/v1", "kind": "ResourceProfile", "metadata": {"name": "coding-lite"}, "spec": spec}


def _declare(ws: Workspace, profile: str) -> None:
    ws.write("vm.yaml", _vm_doc(ws.name("vm"), profile), _coding_lite())


def _plan_line(ws: Workspace) -> str:
    """`somnus diff`'s line for the VM; diff must say changes are pending (exit 1)."""
    plan = ws.somnus("diff", str(ws.manifests), str(SHIPPED_PROFILES), check_exit=1)
    lines = [line for line in plan.stdout.splitlines() if f"vm/{ws.name('vm')}" in line]
    assert len(lines) == 1, plan.stdout
    return lines[0].rstrip()


def _apply(ws: Workspace, what: str, plan_line: str | None = None) -> None:
    """Apply (showing `plan_line`, the plan `diff` showed), then `diff` is in sync."""
    started = time.monotonic()
    applied = ws.somnus("apply", str(ws.manifests), str(SHIPPED_PROFILES), "-y", check_exit=0)
    print(f"\n{what}: apply took {time.monotonic() - started:.1f} s")
    if plan_line is not None:
        assert plan_line in applied.stdout.splitlines(), applied.stdout
    ws.somnus("diff", str(ws.manifests), str(SHIPPED_PROFILES), check_exit=0)


def _expected_fields(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The plan's words for each figure that differs between two profile specs."""
    fields = []
    for key in ("maxVcpus", "maxMemory", "vcpus", "memory"):
        old, new = before[key], after[key]
        if key in ("memory", "maxMemory"):
            old, new = format_bytes(parse_quantity(old)), format_bytes(parse_quantity(new))
        if old != new:
            fields.append(f"{key} {old} -> {new}")
    return fields


def _assert_has_profile(ws: Workspace, spec: dict[str, Any]) -> None:
    """The running domain, as libvirt has it, carries the profile's figures, and the
    guest's balloon reaches the memory target."""
    dom = ws.domain("vm")
    assert dom.isActive()
    live = libvirt.VIR_DOMAIN_AFFECT_LIVE
    assert dom.vcpusFlags(live) == spec["vcpus"]
    assert dom.vcpusFlags(live | libvirt.VIR_DOMAIN_VCPU_MAXIMUM) == spec["maxVcpus"]
    assert sum(1 for vcpu in dom.vcpus()[0] if vcpu[1] == libvirt.VIR_VCPU_RUNNING) == spec["vcpus"]
    assert dom.maxMemory() * 1024 == parse_quantity(spec["maxMemory"])
    vm = ws.get_json()[f"vm/{ws.name('vm')}"]
    assert (vm["state"], vm["vcpus"], vm["maxVcpus"]) == ("running", spec["vcpus"], spec["maxVcpus"])
    assert (vm["memory"], vm["maxMemory"]) == (parse_quantity(spec["memory"]), parse_quantity(spec["maxMemory"]))
    target_kib = parse_quantity(spec["memory"]) // 1024
    deadline = time.monotonic() + BALLOON_TIMEOUT_S
    while (actual := dom.memoryStats().get("actual")) != target_kib and time.monotonic() < deadline:
        time.sleep(1)
    assert actual == target_kib, f"the guest's balloon reports {actual} KiB, the target is {target_kib} KiB"


def _switch(ws: Workspace, profile: str, fields: list[str], disruption: str) -> None:
    """Declare `profile`; `diff` names each field and the disruption, apply shows that line,
    and the domain restarts (a new ID) exactly when the plan says so."""
    domain_id = ws.domain("vm").ID()
    _declare(ws, profile)
    line = _plan_line(ws)
    for field in fields:
        assert field in line, line
    assert line.endswith(f"({disruption})"), line
    _apply(ws, f"switch to {profile} ({disruption})", line)
    if disruption == "live":
        assert ws.domain("vm").ID() == domain_id, f"the plan said live, but the domain restarted: {line}"
    else:
        assert ws.domain("vm").ID() != domain_id, f"the plan said restart, but the domain kept its ID: {line}"


def test_switching_profiles_is_live_within_headroom_and_restarts_beyond_it(workspace: Workspace) -> None:
    ws = workspace
    coding, research, lite = _shipped("coding"), _shipped("research"), _coding_lite()["spec"]
    _declare(ws, "coding")
    created = ws.somnus("diff", str(ws.manifests), str(SHIPPED_PROFILES), check_exit=1)
    memory = format_bytes(parse_quantity(coding["memory"]))
    assert f"create (profile coding, {coding['vcpus']} vcpu, {memory})" in created.stdout
    _apply(ws, "create with coding")
    _assert_has_profile(ws, coding)

    # The shipped profiles differ in their maxima: each switch restarts, as the plan says.
    for before, after, name in ((coding, research, "research"), (research, coding, "coding")):
        _switch(ws, name, _expected_fields(before, after), "restart required")
        _assert_has_profile(ws, after)

    # Fewer vCPUs, even within the maxima, is a restart all the same: the guest would have to eject them.
    _switch(ws, "coding-lite", _expected_fields(coding, lite), "restart required")
    _assert_has_profile(ws, lite)

    # More vCPUs and memory within the running domain's maxima: live, the domain keeps its ID.
    assert _expected_fields(lite, coding) == [f"vcpus {lite['vcpus']} -> {coding['vcpus']}",
                                              f"memory {lite['memory']} -> {coding['memory']}"]
    _switch(ws, "coding", _expected_fields(lite, coding), "live")
    _assert_has_profile(ws, coding)
