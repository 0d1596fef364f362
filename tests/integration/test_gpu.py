"""GPUs against the real libvirtd, dockerd and this host's sysfs.

This host has no GPU bound to vfio-pci and no NVIDIA device, so nothing here starts a guest
with a GPU: a domain passing through a device is defined (libvirt takes the definition; its
start fails), read back and checked against libvirt's schema; a container's DeviceRequests
are handed to dockerd by a create that is not started, and dockerd's refusal at start leaves
nothing. Through the CLI, `validate`, `diff` and `apply` refuse every `gpu:` the host cannot
give at its FILE:LINE, and create nothing.
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import libvirt
import pytest

from somnus_reconciler import settings as settings_mod
from somnus_reconciler.manifests import loader, references
from somnus_reconciler.planning import gpus, plan
from somnus_reconciler.providers import docker_provider, host_gpus
from somnus_reconciler.providers.docker_provider import DockerProvider
from somnus_reconciler.providers.libvirt_provider import LibvirtProvider
from somnus_reconciler.providers.protocols import ProviderError
from somnus_reconciler.values.desired import DesiredContainer, DesiredVm, VmResources
from somnus_reconciler.values.diagnostics import Source
from somnus_reconciler.values.gpu import GpuDeviceRequest, PassthroughGpu
from somnus_reconciler.values.model import PoolSpec
from tests.integration.conftest import Workspace, container_doc, vm_doc

pytestmark = pytest.mark.integration

MiB = 2**20
ABSENT = "0000:ff:1f.7"  # a PCI address no host here has


def _absent_from_this_host() -> None:
    assert ABSENT not in {d.address for d in host_gpus.pci_devices()}, f"this host has a PCI device {ABSENT}"


def _validates(tmp: Path, xml: str) -> None:
    path = tmp / "domain.xml"
    path.write_text(xml)
    checked = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_vm_gpu_is_defined_as_a_hostdev_read_back_and_valid(workspace: Workspace) -> None:
    _absent_from_this_host()
    provider = LibvirtProvider(settings_mod.resolve(PoolSpec(), state_dir=str(workspace.state_dir)))
    want = DesiredVm(workspace.name("gpu"), VmResources(1, 128 * MiB, 1, 128 * MiB), "tiny-linux", 2**30, "debian",
                     False, (), 5, "tests", None, Source(Path("m.yaml"), 1), gpu=PassthroughGpu(pci=ABSENT),
                     gpu_address=ABSENT)
    try:
        provider.create(want)  # defined, not started (running: false)
        have = provider.observe_one(want.name)
        assert have is not None and have.gpus == (ABSENT,)
        assert have.mark is not None and have.mark.gpu == f"pci {ABSENT}"
        assert plan.vm_change(want, have) is None  # in sync: the GPU is not planned again
        _validates(workspace.root, provider.definition(want.name))  # as libvirt stored it

        other = dataclasses.replace(want, gpu=PassthroughGpu(), gpu_address="0000:fe:00.0")
        change = plan.vm_change(other, have)
        assert change is not None and [str(f) for f in change.fields] == [
            f"gpu pci {ABSENT} -> any GPU at 0000:fe:00.0"]
        provider.redefine(other)
        again = provider.observe_one(want.name)
        assert again is not None and again.gpus == ("0000:fe:00.0",) and plan.vm_change(other, again) is None

        with pytest.raises(ProviderError, match=f"vm/{want.name}: start"):
            provider.start(want.name)  # no such device (and no IOMMU) on this host
        assert not workspace.domain("gpu").isActive()
    finally:
        provider.close()


def test_a_container_gpu_reaches_dockerd_as_device_requests(workspace: Workspace) -> None:
    request = GpuDeviceRequest(2, (("gpu", "compute"),), "nvidia")
    want = DesiredContainer(workspace.name("gpu"), "somnus/busybox:latest", ("sleep", "infinity"), 0.25, 64 * MiB,
                            "none", (), (), "tests", Source(Path("m.yaml"), 1), gpu=request)
    api = workspace.docker.api
    created = api.create_container(  # what DockerProvider.create hands the SDK, without the start
        want.image, command=list(want.command or ()), name=workspace.name("gpu-created"),
        host_config=api.create_host_config(network_mode="none", device_requests=docker_provider.device_requests(want)))
    assert api.inspect_container(created["Id"])["HostConfig"]["DeviceRequests"] == [
        {"Driver": "nvidia", "Count": 2, "DeviceIDs": [], "Capabilities": [["gpu", "compute"]], "Options": {}}]

    provider = DockerProvider()
    try:
        with pytest.raises(ProviderError, match="could not select device driver") as caught:
            provider.create(want)  # dockerd has no nvidia device driver here: its start fails
        assert f"container/{want.name}" in str(caught.value)
        assert provider.observe_one(want.name) is None  # a failed start leaves nothing
    finally:
        provider.close()


def _gpu_lines(text: str) -> list[int]:
    return [number for number, line in enumerate(text.splitlines(), 1) if line.strip().startswith("gpu:")]


def test_the_cli_refuses_what_this_host_cannot_give_and_changes_nothing(workspace: Workspace) -> None:
    _absent_from_this_host()
    ws = workspace
    not_a_gpu = next(d for d in host_gpus.pci_devices() if not d.is_gpu)  # a host bridge, at least
    vms = {"any": True, "absent": {"pci": ABSENT}, "nic": {"pci": not_a_gpu.address}}
    documents = []
    for suffix, gpu in vms.items():
        document = vm_doc(ws.name(suffix))
        document["spec"]["resources"]["gpu"] = gpu
        documents.append(document)
    box = container_doc(ws.name("box"))
    box["spec"]["resources"]["gpu"] = True
    path = ws.write("gpu.yaml", *documents, box, vm_doc(ws.name("plain")))
    lines = _gpu_lines(path.read_text())
    assert len(lines) == 4

    # What planning.gpus says of this host, and two refusals that hold on any host.
    expected = [str(d) for d in gpus.admit(references.resolve(loader.load([path])), host_gpus.observe()).problems]
    assert f"{path}:{lines[1]}: vm/{ws.name('absent')}: spec.resources.gpu (pci {ABSENT}): the host has no PCI " \
           f"device {ABSENT}" in expected
    assert f"{path}:{lines[2]}: vm/{ws.name('nic')}: spec.resources.gpu (pci {not_a_gpu.address}): " \
           f"{not_a_gpu.address} is not a GPU (PCI class 0x{not_a_gpu.pci_class:06x}, not a display controller " \
           "0x03xxxx)" in expected
    if not any(d.is_gpu and d.driver == "vfio-pci" for d in host_gpus.pci_devices()):  # as here: refused too
        assert any(line.startswith(f"{path}:{lines[0]}: vm/{ws.name('any')}: spec.resources.gpu (any GPU): ")
                   for line in expected)
    if not host_gpus.observe().nvidia_devices:
        assert any(line.startswith(f"{path}:{lines[3]}: container/{ws.name('box')}: spec.resources.gpu (count 1, "
                                   "capabilities [[gpu]]): the host has no NVIDIA GPU") for line in expected)

    for command in (["validate"], ["diff"], ["apply", "-y"]):
        result = ws.somnus(*command, str(path), check_exit=2)
        assert [line for line in expected if line not in result.stderr] == [], result.stderr
    assert [d.name() for d in ws.conn.listAllDomains(0) if d.name().startswith(ws.prefix)] == []
    assert [c.name for c in ws.docker.containers.list(all=True) if c.name.startswith(ws.prefix)] == []
    with pytest.raises(libvirt.libvirtError, match="Domain not found"):
        ws.domain("plain")  # the VM without a GPU is not created either: the whole apply is refused
