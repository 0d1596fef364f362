"""A GPU is never dropped on its way out: the domain XML's `<hostdev>` (valid to libvirt's own
schema, `virt-xml-validate`), the container's DeviceRequests and mark, the plan's line for a
change, and the spec hash; objects without a GPU keep the hashes their marks hold."""

from __future__ import annotations

import dataclasses
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from somnus_reconciler.planning import plan
from somnus_reconciler.planning.plan import Action, Disruption, FieldChange
from somnus_reconciler.planning.plan_text import describe_change, disruption_note
from somnus_reconciler.providers import docker_labels, docker_provider, domain_xml
from somnus_reconciler.values.actual import ActualContainer, ActualVm, PortForward, PowerState
from somnus_reconciler.values.desired import DesiredContainer, DesiredVm, VmResources
from somnus_reconciler.values.diagnostics import Source
from somnus_reconciler.values.errors import PermanentError
from somnus_reconciler.values.gpu import GpuDeviceRequest, PassthroughGpu

MiB = 2**20
GPU = PassthroughGpu(pci="0000:01:00.0")


def want_vm(gpu: PassthroughGpu | None = None, address: str | None = None, *, running: bool = True) -> DesiredVm:
    return DesiredVm("art", VmResources(1, 256 * MiB, 2, 512 * MiB), "tiny-linux", 2**30, "debian", running, (), 5,
                     "alice", None, Source(Path("vms.yaml"), 3), gpu=gpu, gpu_source=Source(Path("vms.yaml"), 9),
                     gpu_address=address)


def want_box(gpu: GpuDeviceRequest | None = None) -> DesiredContainer:
    return DesiredContainer("box", "somnus/busybox:latest", ("sleep", "infinity"), 0.5, 64 * MiB, "none", (), (),
                            None, Source(Path("boxes.yaml"), 2), gpu=gpu)


def domain(vm: DesiredVm) -> str:
    boot = domain_xml.BootSource(Path("/var/lib/somnus/vms/art/disk.qcow2"))
    return domain_xml.build(vm, boot, domain_type="qemu", console_log=Path("/var/log/art.log"),
                            forwards=(PortForward("ssh", 40022, 22),))


def defined(vm: DesiredVm, *, running: bool | None = None) -> ActualVm:
    """The domain `build` makes for `vm` as observe reads it, running as `vm` wants unless told."""
    on = vm.running if running is None else running
    return dataclasses.replace(domain_xml.parse(domain(vm)), power=PowerState.RUNNING if on else PowerState.SHUTOFF)


# -- the domain XML --------------------------------------------------------------------------

def test_a_vm_gpu_is_a_managed_pci_hostdev() -> None:
    root = ET.fromstring(domain(want_vm(GPU, "0000:01:00.0")))
    [hostdev] = root.findall("devices/hostdev")
    assert hostdev.attrib == {"mode": "subsystem", "type": "pci", "managed": "yes"}
    assert [(a.tag, a.attrib) for a in hostdev.iter("address")] == [
        ("address", {"domain": "0x0000", "bus": "0x01", "slot": "0x00", "function": "0x0"})]
    assert root.find(f"metadata/{{{domain_xml.SOMNUS_NS}}}vm").get("gpu") == "pci 0000:01:00.0"  # type: ignore[union-attr]


def test_a_vm_without_gpu_has_no_hostdev_nor_gpu_in_its_mark() -> None:
    root = ET.fromstring(domain(want_vm()))
    assert root.findall("devices/hostdev") == []
    assert root.find(f"metadata/{{{domain_xml.SOMNUS_NS}}}vm").get("gpu") is None  # type: ignore[union-attr]


@pytest.mark.parametrize("vm", [want_vm(), want_vm(GPU, "0000:01:00.0"),
                                want_vm(PassthroughGpu(vendor_product="10de:2204"), "0000:0a:1f.7")],
                         ids=["no gpu", "pci", "vendorProduct"])
def test_the_domain_xml_is_valid_to_libvirts_schema(tmp_path: Path, vm: DesiredVm) -> None:
    path = tmp_path / "domain.xml"
    path.write_text(domain(vm))
    checked = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{path} validates" in checked.stderr  # what xmllint says of a valid file


def test_the_hostdev_and_the_mark_read_back() -> None:
    vm = want_vm(PassthroughGpu(vendor_product="10de:2204"), "0000:0a:1f.7")
    actual = defined(vm)
    assert actual.gpus == ("0000:0a:1f.7",)
    assert actual.mark is not None and actual.mark.gpu == "vendorProduct 10de:2204"
    assert plan.vm_change(vm, actual) is None  # in sync: nothing planned again


def test_a_gpu_without_a_device_is_refused_not_dropped() -> None:
    with pytest.raises(PermanentError, match=r"vm/art: its gpu \(any GPU\) has no host device assigned"):
        domain(want_vm(PassthroughGpu()))


def test_libvirts_own_xml_with_guest_addresses_reads_the_host_address() -> None:
    """libvirt adds the device's address in the guest beside <source>; only the source counts."""
    xml = domain(want_vm(GPU, "0000:01:00.0")).replace(
        "</source></hostdev>", "</source><address type='pci' domain='0x0000' bus='0x00' slot='0x02' "
                               "function='0x0'/></hostdev>")
    assert domain_xml.parse(xml).gpus == ("0000:01:00.0",)


# -- the plan ---------------------------------------------------------------------------------

@pytest.mark.parametrize("before, after, running, expected", [
    (want_vm(), want_vm(GPU, "0000:01:00.0"), True,
     (Action.UPDATE, Disruption.RESTART, "gpu none -> pci 0000:01:00.0", "restart required")),
    (want_vm(GPU, "0000:01:00.0"), want_vm(), True,
     (Action.UPDATE, Disruption.RESTART, "gpu pci 0000:01:00.0 -> none", "restart required")),
    (want_vm(PassthroughGpu(), "0000:01:00.0"), want_vm(PassthroughGpu(), "0000:02:00.0"), True,
     (Action.UPDATE, Disruption.RESTART, "gpu any GPU at 0000:01:00.0 -> any GPU at 0000:02:00.0",
      "restart required")),
    (want_vm(), want_vm(GPU, "0000:01:00.0", running=False), False,
     (Action.UPDATE, Disruption.NONE, "gpu none -> pci 0000:01:00.0", "")),
])
def test_a_gpu_change_is_planned_with_its_disruption(before: DesiredVm, after: DesiredVm, running: bool,
                                                     expected: tuple[Action, Disruption, str, str]) -> None:
    have = defined(before, running=running)
    change = plan.vm_change(after, have)
    assert change is not None
    assert (change.action, change.disruption, describe_change(change), disruption_note(change)) == expected


def test_a_hostdev_removed_by_hand_is_planned_back() -> None:
    want = want_vm(GPU, "0000:01:00.0")
    have = dataclasses.replace(defined(want), gpus=())
    change = plan.vm_change(want, have)
    assert change is not None and (change.disruption, change.fields) == (
        Disruption.RESTART, (FieldChange("gpu", "pci 0000:01:00.0 (no device)", "pci 0000:01:00.0"),))


def test_a_plan_made_without_reading_the_host_keeps_the_device_a_vm_has() -> None:
    """The dashboard plans without admission: `true` is in sync with the device the domain holds."""
    have = defined(want_vm(PassthroughGpu(), "0000:02:00.0"))
    assert plan.vm_change(want_vm(PassthroughGpu()), have) is None


def test_a_container_gpu_change_recreates_it_and_says_so() -> None:
    before, after = want_box(), want_box(GpuDeviceRequest(1, (("gpu",),)))
    have = docker_labels.actual_from_summary({"Names": ["/box"], "Id": "c1", "Image": before.image,
                                              "State": "running", "Labels": docker_labels.mark_labels(before)})
    assert have is not None and have.gpu is None
    change = plan.container_change(after, have)
    assert change is not None and (change.action, describe_change(change)) == (
        Action.REPLACE, "replace: gpu none -> count 1, capabilities [[gpu]], spec changed")
    created = docker_labels.actual_from_summary({"Names": ["/box"], "Id": "c2", "Image": after.image,
                                                 "State": "running", "Labels": docker_labels.mark_labels(after)})
    assert created is not None and created.gpu == "count 1, capabilities [[gpu]]"
    assert plan.container_change(after, created) is None


def test_the_gpu_is_part_of_the_spec_hash_only_when_set() -> None:
    assert want_vm(GPU).spec_hash != want_vm().spec_hash != want_vm(PassthroughGpu()).spec_hash
    assert want_vm(GPU, "0000:01:00.0").spec_hash == want_vm(GPU).spec_hash  # the device is compared apart
    assert want_box(GpuDeviceRequest(1, (("gpu",),))).spec_hash != want_box().spec_hash
    assert want_box(GpuDeviceRequest(2, (("gpu",),))).spec_hash != want_box(GpuDeviceRequest(1, (("gpu",),))).spec_hash
    # Without a GPU the hash is the one computed before GPUs existed (as tests/unit/test_plan.py pins).
    plain = dataclasses.replace(want_vm(), gpu_source=None)
    assert plain.spec_hash == want_vm().spec_hash


# -- the container ------------------------------------------------------------------------------

def test_the_device_request_is_what_the_sdk_gets() -> None:
    request = GpuDeviceRequest(0, (("gpu", "compute"), ("nvidia",)), "nvidia", ("0", "GPU-3f2a"))
    assert docker_provider.device_requests(want_box(request)) == [{
        "Driver": "nvidia", "Count": 0, "DeviceIDs": ["0", "GPU-3f2a"],
        "Capabilities": [["gpu", "compute"], ["nvidia"]], "Options": {}}]
    assert docker_provider.device_requests(want_box()) == []
    assert docker_labels.mark_labels(want_box(request))[docker_labels.LABEL_GPU] == str(request)
    assert docker_labels.LABEL_GPU not in docker_labels.mark_labels(want_box())


def test_an_unmarked_containers_gpu_label_is_not_read() -> None:
    have = docker_labels.actual_from_summary({"Names": ["/box"], "Id": "c1", "State": "running",
                                              "Labels": {docker_labels.LABEL_GPU: "count 1"}})
    assert isinstance(have, ActualContainer) and have.gpu is None and not have.managed
