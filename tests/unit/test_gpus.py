"""`gpu:` from manifest to admission: the forms it takes, the host read from a sysfs tree of
the test's own (tmp_path), and every refusal at the manifest's FILE:LINE."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from somnus_reconciler.manifests import loader, references
from somnus_reconciler.planning import gpus
from somnus_reconciler.providers import host_gpus
from somnus_reconciler.values import model
from somnus_reconciler.values.desired import DesiredState
from somnus_reconciler.values.diagnostics import InvalidInput
from somnus_reconciler.values.gpu import GpuDeviceRequest, HostGpus, PassthroughGpu, PciDevice

VGA, AUDIO, NIC = 0x030000, 0x040300, 0x020000
NVIDIA, VFIO = "nvidia", "vfio-pci"


@pytest.fixture(autouse=True)
def _no_manifest_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOMNUS_NO_MANIFEST_CACHE", "1")


def fake_sysfs(root: Path, devices: dict[str, tuple[int, str, str | None]]) -> Path:
    """`root` laid out as /sys is: bus/pci/devices/ADDRESS/{class,vendor,device,driver ->}."""
    for address, (pci_class, ids, driver) in devices.items():
        entry = root / "bus" / "pci" / "devices" / address
        entry.mkdir(parents=True)
        vendor, product = ids.split(":")
        (entry / "class").write_text(f"0x{pci_class:06x}\n")
        (entry / "vendor").write_text(f"0x{vendor}\n")
        (entry / "device").write_text(f"0x{product}\n")
        if driver is not None:
            (root / "bus" / "pci" / "drivers" / driver).mkdir(parents=True, exist_ok=True)
            (entry / "driver").symlink_to(f"../../../bus/pci/drivers/{driver}")
    return root


def host(tmp_path: Path, devices: dict[str, tuple[int, str, str | None]], *, nvidia: int = 0,
         hook: bool = False) -> HostGpus:
    """The host as providers.host_gpus reads it from trees under `tmp_path`."""
    dev, bin_dir = tmp_path / "dev", tmp_path / "bin"
    dev.mkdir(parents=True)
    bin_dir.mkdir()
    for index in range(nvidia):
        (dev / f"nvidia{index}").touch()
    (dev / "nvidiactl").touch()  # not a GPU
    if hook:
        (bin_dir / "nvidia-container-runtime-hook").touch(mode=0o755)
    return host_gpus.observe(fake_sysfs(tmp_path / "sys", devices), dev, str(bin_dir))


def load(tmp_path: Path, text: str) -> DesiredState:
    path = tmp_path / "m.yaml"
    path.write_text(text)
    return references.resolve(loader.load([path]), images_dir=tmp_path)


def vm(name: str, gpu: str, *, running: bool = True) -> str:
    """A VirtualMachine document; its `gpu:` is on its 9th line."""
    return (f"apiVersion: somnus/v1\nkind: VirtualMachine\nmetadata: {{name: {name}}}\nspec:\n"
            f"  image: tiny-linux\n  running: {str(running).lower()}\n  resources:\n    vcpus: 1\n"
            f"    gpu: {gpu}\n    memory: 1Gi\n")


def container(name: str, gpu: str) -> str:
    """A Container document; its `gpu:` is on its 8th line."""
    return (f"apiVersion: somnus/v1\nkind: Container\nmetadata: {{name: {name}}}\nspec:\n"
            f"  image: somnus/busybox:latest\n  resources:\n    cpus: 0.5\n    gpu: {gpu}\n")


def joined(*documents: str) -> str:
    return "---\n".join(documents)


def refusals(admitted: gpus.GpuAdmission) -> list[str]:
    return [str(d) for d in admitted.problems]


# -- the forms ----------------------------------------------------------------------------

@pytest.mark.parametrize("written, declared", [
    ("true", PassthroughGpu()),
    ("false", None),
    ('{pci: "0000:01:00.0"}', PassthroughGpu(pci="0000:01:00.0")),
    ('{pci: "0A:00.1"}', PassthroughGpu(pci="0000:0a:00.1")),
    ('{vendorProduct: "10DE:2204"}', PassthroughGpu(vendor_product="10de:2204")),
])
def test_a_vm_gpu_is_passthrough(tmp_path: Path, written: str, declared: PassthroughGpu | None) -> None:
    want = load(tmp_path, vm("art", written)).vms["art"]
    assert want.gpu == declared and want.gpu_address is None


@pytest.mark.parametrize("written, declared", [
    ("true", GpuDeviceRequest(1, (("gpu",),))),
    ("{count: 2, capabilities: [[gpu, compute]], driver: nvidia}", GpuDeviceRequest(2, (("gpu", "compute"),), "nvidia")),
    ("{count: all}", GpuDeviceRequest(-1, (("gpu",),))),
    ("{deviceIds: [0, GPU-3f2a]}", GpuDeviceRequest(0, (("gpu",),), "", ("0", "GPU-3f2a"))),
])
def test_a_container_gpu_is_a_device_request(tmp_path: Path, written: str, declared: GpuDeviceRequest) -> None:
    assert load(tmp_path, container("box", written)).containers["box"].gpu == declared


def test_the_request_reads_as_written() -> None:
    assert [str(PassthroughGpu()), str(PassthroughGpu(pci="0000:01:00.0")), str(PassthroughGpu(None, "10de:2204"))] \
        == ["any GPU", "pci 0000:01:00.0", "vendorProduct 10de:2204"]
    assert str(GpuDeviceRequest(-1, (("gpu",), ("nvidia", "compute")), "nvidia")) == \
        "count all, capabilities [[gpu], [nvidia, compute]], driver nvidia"
    assert str(GpuDeviceRequest(0, (("gpu",),), "", ("0", "1"))) == "deviceIds 0,1, capabilities [[gpu]]"


@pytest.mark.parametrize("kind, gpu, problem", [
    ("vm", '{pcii: "01:00.0"}', ": unknown field 'pcii' (did you mean 'pci'?)"),
    ("vm", '{pci: "01:00.0", vendorProduct: "10de:2204"}', ": give exactly one of pci or vendorProduct"),
    ("vm", "{}", ": give exactly one of pci or vendorProduct"),
    ("vm", '"0000:01:00.0"', ": expected true, false or a mapping, got '0000:01:00.0'"),
    ("vm", "{pci: zz}", ".pci: 'zz' is not a PCI address (domain:bus:slot.function in hex, as `lspci -D` shows "
                        "it: 0000:01:00.0)"),
    ("vm", "{vendorProduct: nvidia}", ".vendorProduct: 'nvidia' is not vendor:product (four hex digits each, as "
                                      "`lspci -nn` shows them: 10de:2204)"),
    ("vm", "{count: 1}", ": unknown field 'count'"),
    ("container", "{count: 1, deviceIds: [0]}", ": count and deviceIds exclude each other (Docker refuses both)"),
    ("container", "{count: 0}", ".count: should be greater than 0 (got 0)"),
    ("container", "{capabilities: []}", ".capabilities: list should have at least 1 item after validation, "
                                        "not 0 (got [])"),
    ("container", "{pci: '01:00.0'}", ": unknown field 'pci'"),
])
def test_a_malformed_gpu_is_refused_at_its_line(tmp_path: Path, kind: str, gpu: str, problem: str) -> None:
    """A VM document's `gpu:` is on its 9th line, a container's on its 8th."""
    with pytest.raises(InvalidInput) as caught:
        load(tmp_path, vm("a", gpu) if kind == "vm" else container("a", gpu))
    where = f"{tmp_path}/m.yaml:{9 if kind == 'vm' else 8}: {kind}/a: spec.resources.gpu"
    assert [str(d) for d in caught.value.diagnostics] == [where + problem]


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = model.json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("document, valid", [
    (vm("a", "true"), True), (vm("a", '{pci: "0000:01:00.0"}'), True), (vm("a", "{vendorProduct: 10de:2204}"), True),
    (vm("a", "{pci: null, vendorProduct: 10de:2204}"), True),
    (vm("a", '{pci: "01:00.0", vendorProduct: "10de:2204"}'), False), (vm("a", "{}"), False),
    (vm("a", "{pci: zz}"), False), (vm("a", "{count: 1}"), False),
    (container("b", "true"), True), (container("b", "{count: all, capabilities: [[gpu, utility]]}"), True),
    (container("b", "{deviceIds: [0, GPU-1]}"), True), (container("b", "{count: 1, deviceIds: ['0']}"), False),
    (container("b", "{count: 0}"), False), (container("b", "{capabilities: [[]]}"), False),
])
def test_the_json_schema_takes_what_the_loader_takes(validator: jsonschema.Draft202012Validator, tmp_path: Path,
                                                     document: str, valid: bool) -> None:
    assert validator.is_valid(yaml.safe_load(document)) is valid
    try:
        load(tmp_path, document)
    except InvalidInput:
        assert not valid
    else:
        assert valid


# -- the host ---------------------------------------------------------------------------------

def test_the_host_is_read_from_sysfs_and_dev(tmp_path: Path) -> None:
    read = host(tmp_path, {"0000:01:00.0": (VGA, "10de:2204", VFIO), "0000:01:00.1": (AUDIO, "10de:1aef", None),
                           "0000:00:03.0": (NIC, "1af4:1041", "virtio-pci")}, nvidia=2, hook=True)
    assert read.pci == (PciDevice("0000:00:03.0", "1af4:1041", NIC, "virtio-pci"),
                        PciDevice("0000:01:00.0", "10de:2204", VGA, VFIO),
                        PciDevice("0000:01:00.1", "10de:1aef", AUDIO, None))
    assert [d.is_gpu for d in read.pci] == [False, True, False]
    assert read.nvidia_devices == (0, 1) and read.nvidia_hook == str(tmp_path / "bin" / "nvidia-container-runtime-hook")


def test_a_host_without_pci_or_nvidia_reads_as_empty(tmp_path: Path) -> None:
    assert host_gpus.observe(tmp_path / "no-sys", tmp_path / "no-dev", str(tmp_path)) == HostGpus()


# -- VMs: the device each gets, or why none ------------------------------------------------------

GPU_HOST = {"0000:01:00.0": (VGA, "10de:2204", VFIO), "0000:02:00.0": (VGA, "10de:2204", VFIO),
            "0000:03:00.0": (VGA, "1002:73bf", NVIDIA), "0000:00:03.0": (NIC, "1af4:1041", "virtio-pci")}


def test_gpus_are_assigned_named_ones_first(tmp_path: Path) -> None:
    desired = load(tmp_path, joined(vm("a-any", "true"), vm("b-named", '{pci: "0000:01:00.0"}'),
                                    vm("c-ids", "{vendorProduct: 10de:2204}"), vm("d-none", "false")))
    admitted = gpus.admit(desired, host(tmp_path, GPU_HOST))
    # b names 01:00.0; c takes the other 10de:2204; `true` finds none free.
    assert admitted.addresses == {"b-named": "0000:01:00.0", "c-ids": "0000:02:00.0"}
    assert refusals(admitted) == [
        f"{tmp_path}/m.yaml:9: vm/a-any: spec.resources.gpu (any GPU): 0000:01:00.0 is already given to "
        f"vm/b-named ({tmp_path}/m.yaml:20); 0000:02:00.0 is already given to vm/c-ids ({tmp_path}/m.yaml:31)"]
    assert admitted.apply(desired).vms["c-ids"].gpu_address == "0000:02:00.0"


def test_a_vm_keeps_the_device_its_domain_has(tmp_path: Path) -> None:
    desired = load(tmp_path, vm("art", "true"))
    admitted = gpus.admit(desired, host(tmp_path, GPU_HOST), {"art": ("0000:02:00.0",)})
    assert admitted.addresses == {"art": "0000:02:00.0"} and admitted.problems == ()


@pytest.mark.parametrize("gpu, problem", [
    ('{pci: "0000:09:00.0"}', "(pci 0000:09:00.0): the host has no PCI device 0000:09:00.0"),
    ('{vendorProduct: "8086:56a0"}', "(vendorProduct 8086:56a0): the host has no PCI device 8086:56a0"),
    ('{pci: "0000:00:03.0"}', "(pci 0000:00:03.0): 0000:00:03.0 is not a GPU (PCI class 0x020000, "
                              "not a display controller 0x03xxxx)"),
    ('{pci: "0000:03:00.0"}', "(pci 0000:03:00.0): no GPU 0000:03:00.0 is bound to vfio-pci "
                              "(0000:03:00.0 (1002:73bf, nvidia)); passthrough needs it bound first "
                              "(e.g. driverctl set-override 0000:03:00.0 vfio-pci)"),
    ('{pci: "0000:01:00.0"}', "(pci 0000:01:00.0): 0000:01:00.0 is already given to libvirt domain 'legacy'"),
])
def test_a_device_the_host_cannot_give_is_refused(tmp_path: Path, gpu: str, problem: str) -> None:
    admitted = gpus.admit(load(tmp_path, vm("art", gpu)), host(tmp_path, GPU_HOST), {"legacy": ("0000:01:00.0",)})
    assert admitted.addresses == {}
    assert refusals(admitted) == [f"{tmp_path}/m.yaml:9: vm/art: spec.resources.gpu {problem}"]


def test_gpu_true_on_a_host_without_a_vfio_gpu_is_refused(tmp_path: Path) -> None:
    desired = load(tmp_path, vm("art", "true"))
    no_gpu = gpus.admit(desired, host(tmp_path / "a", {"0000:00:03.0": (NIC, "1af4:1041", "virtio-pci")}))
    host_driver = gpus.admit(desired, host(tmp_path / "b", {"0000:03:00.0": (VGA, "1002:73bf", NVIDIA)}))
    where = f"{tmp_path}/m.yaml:9: vm/art: spec.resources.gpu (any GPU)"
    assert refusals(no_gpu) == [f"{where}: the host has no GPU (no PCI display controller, class 0x03xxxx)"]
    assert refusals(host_driver) == [
        f"{where}: no GPU of this host is bound to vfio-pci (0000:03:00.0 (1002:73bf, nvidia)); passthrough "
        "needs it bound first (e.g. driverctl set-override 0000:03:00.0 vfio-pci)"]


def test_two_vms_naming_one_device_are_refused_at_the_second(tmp_path: Path) -> None:
    desired = load(tmp_path, joined(vm("a", '{pci: "0000:01:00.0"}'), vm("b", '{pci: "0000:01:00.0"}', running=False)))
    admitted = gpus.admit(desired, host(tmp_path, GPU_HOST))
    assert admitted.addresses == {"a": "0000:01:00.0"}
    assert refusals(admitted) == [f"{tmp_path}/m.yaml:20: vm/b: spec.resources.gpu (pci 0000:01:00.0): "
                                  f"0000:01:00.0 is already given to vm/a ({tmp_path}/m.yaml:9)"]


def test_a_profile_gpu_is_refused_at_the_vm_naming_the_profile(tmp_path: Path) -> None:
    text = ("apiVersion: somnus/v1\nkind: ResourceProfile\nmetadata: {name: media-creation}\n"
            "spec: {vcpus: 6, memory: 16Gi, gpu: true}\n---\n"
            "apiVersion: somnus/v1\nkind: VirtualMachine\nmetadata: {name: art}\nspec:\n"
            "  image: tiny-linux\n  profile: media-creation\n")
    admitted = gpus.admit(load(tmp_path, text), host(tmp_path, {}))
    assert refusals(admitted) == [
        f"{tmp_path}/m.yaml:11: vm/art: spec.profile: profile/media-creation's gpu (any GPU): "
        "the host has no GPU (no PCI display controller, class 0x03xxxx)"]


# -- containers -------------------------------------------------------------------------------

@pytest.mark.parametrize("gpu, nvidia, hook, problem", [
    ("true", 0, False, "(count 1, capabilities [[gpu]]): the host has no NVIDIA GPU (no /dev/nvidia0); "
                       "nvidia-container-runtime-hook is not on the PATH, and dockerd has no nvidia device driver "
                       "without it (install nvidia-container-toolkit)"),
    ("true", 1, False, "(count 1, capabilities [[gpu]]): nvidia-container-runtime-hook is not on the PATH, and "
                       "dockerd has no nvidia device driver without it (install nvidia-container-toolkit)"),
    ("{count: 3}", 2, True, "(count 3, capabilities [[gpu]]): it asks for 3 GPUs but the host has 2"),
    ("{deviceIds: [1, 4]}", 2, True, "(deviceIds 1,4, capabilities [[gpu]]): the host has no GPU 4 (it has 0, 1)"),
    ("{driver: amd}", 1, True, "(count 1, capabilities [[gpu]], driver amd): dockerd has no GPU device driver "
                               "'amd' (nvidia is the one it has)"),
    ("{capabilities: [[tpu]]}", 1, True, "(count 1, capabilities [[tpu]]): the nvidia device driver offers none "
                                         "of these capability sets (it offers compat32, compute, display, gpu, "
                                         "graphics, nvidia, utility, video)"),
])
def test_a_device_request_the_host_cannot_serve_is_refused(tmp_path: Path, gpu: str, nvidia: int, hook: bool,
                                                           problem: str) -> None:
    admitted = gpus.admit(load(tmp_path, container("box", gpu)), host(tmp_path, {}, nvidia=nvidia, hook=hook))
    assert refusals(admitted) == [f"{tmp_path}/m.yaml:8: container/box: spec.resources.gpu {problem}"]


@pytest.mark.parametrize("gpu", ["true", "{count: all, capabilities: [[gpu, utility], [nvidia]]}",
                                 "{deviceIds: [0, 1, GPU-3f2a]}", "{driver: nvidia, count: 2}"])
def test_a_device_request_the_host_can_serve_is_admitted(tmp_path: Path, gpu: str) -> None:
    admitted = gpus.admit(load(tmp_path, container("box", gpu)), host(tmp_path, {}, nvidia=2, hook=True))
    assert admitted.problems == () and admitted.addresses == {}


def test_the_host_is_read_only_when_a_guest_has_a_gpu(tmp_path: Path) -> None:
    assert not gpus.uses_gpus(load(tmp_path, joined(vm("a", "false"), container("b", "false"))))
    assert gpus.uses_gpus(load(tmp_path, container("b", "true")))
