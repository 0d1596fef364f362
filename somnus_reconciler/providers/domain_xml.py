"""Domain XML for libvirt: built with ElementTree from desired values, parsed back
into `ActualVm`. Used by libvirt_provider only.

The ownership mark (SPEC section 3) is a `<somnus:vm>` element inside the
domain's `<metadata>`, in the tool's own namespace. It records the spec hash,
the values that cannot be changed in place (image, disk size, OS family), the
owner, the loopback port forwards and the packs applied, and the GPU as declared.

A VM's GPU is a `<hostdev>` of the PCI device `planning.gpus` chose for it
(`DesiredVm.gpu_address`), managed by libvirt; a GPU without a device is refused here,
never left out.

Networking is QEMU user-mode (slirp) added through `<qemu:commandline>`, with
forwards bound to 127.0.0.1 only: a guest is never put on a bridge.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from somnus_reconciler.values.actual import ActualVm, PortForward, PowerState, VmMark
from somnus_reconciler.values.desired import DesiredVm
from somnus_reconciler.values.errors import PermanentError

SOMNUS_NS = "https://somnus-reconciler.dev/xmlns/domain/v1"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
ET.register_namespace("somnus", SOMNUS_NS)
ET.register_namespace("qemu", QEMU_NS)

# Guest ports every VM forwards to 127.0.0.1: SSH, and the in-guest agent.
GUEST_PORTS: dict[str, int] = {"ssh": 22, "agent": 7465}
_NIC_PCI_SLOT = "0x9"  # explicit, so it never clashes with the balloon's slot


@dataclass(frozen=True)
class BootSource:
    """What the domain boots: its own overlay disk and, optionally, a kernel."""

    disk: Path
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str = ""
    seed: Path | None = None  # read-only disk labelled SOMNUS-SEED: the guest's SSH key


def _kib(amount: int) -> str:
    return str(amount // 1024)


Records = tuple[tuple[str, str], ...]  # (pack, fingerprint) or (secret file's path, keyed digest)


def mark_element(vm: DesiredVm, forwards: tuple[PortForward, ...], packs: Records = (), files: Records = (), *,
                 namespace: str = SOMNUS_NS) -> ET.Element:
    ns = f"{{{namespace}}}" if namespace else ""
    mark = ET.Element(f"{ns}vm", {
        "spec-hash": vm.spec_hash,
        "image": vm.image,
        "disk-size": str(vm.disk_size),
        "os-family": vm.os_family,
        "pool": vm.pool,
    })
    if vm.owner is not None:
        mark.set("owner", vm.owner)
    if vm.backup is not None:  # for `get` and `describe`, which read no manifests
        mark.set("backup", vm.backup.model_dump_json(by_alias=True, exclude_none=True))
    if vm.gpu is not None:
        mark.set("gpu", str(vm.gpu))
    for fwd in forwards:
        ET.SubElement(mark, f"{ns}forward", {
            "name": fwd.name, "host-port": str(fwd.host_port), "guest-port": str(fwd.guest_port),
        })
    _add_records(mark, ns, packs, files)
    return mark


def _add_records(mark: ET.Element, ns: str, packs: Records, files: Records) -> None:
    for pack, fingerprint in packs:
        ET.SubElement(mark, f"{ns}pack", {"name": pack, "fingerprint": fingerprint})
    for path, digest in files:
        ET.SubElement(mark, f"{ns}file", {"path": path, "digest": digest})


def mark_with_records(domain: str, *, packs: Records | None = None, files: Records | None = None) -> str | None:
    """The mark of `domain` (its XML) with its pack or secret file records replaced (None:
    kept), for `setMetadata`; None when the domain carries no mark."""
    mark = ET.fromstring(domain).find(f"metadata/{{{SOMNUS_NS}}}vm")
    if mark is None:
        return None
    kept = parse_mark(mark)
    assert kept is not None
    plain = ET.Element("vm", dict(mark.attrib))
    for child in mark:
        if child.tag == f"{{{SOMNUS_NS}}}forward":
            ET.SubElement(plain, "forward", dict(child.attrib))
    _add_records(plain, "", kept.packs if packs is None else packs, kept.files if files is None else files)
    return ET.tostring(plain, encoding="unicode")


def mark_xml(vm: DesiredVm, forwards: tuple[PortForward, ...], packs: Records = (), files: Records = ()) -> str:
    """The mark alone, as `virDomainSetMetadata` takes it: without a namespace,
    which libvirt adds itself from the key and URI it is given."""
    return ET.tostring(mark_element(vm, forwards, packs, files, namespace=""), encoding="unicode")


def build(vm: DesiredVm, boot: BootSource, *, domain_type: str, console_log: Path,
          forwards: tuple[PortForward, ...], packs: Records = (), files: Records = (),
          uuid: str | None = None) -> str:
    """The whole domain; `uuid` keeps an existing domain's identity when redefining it."""
    r = vm.resources
    domain = ET.Element("domain", {"type": domain_type})
    ET.SubElement(domain, "name").text = vm.name
    if uuid is not None:
        ET.SubElement(domain, "uuid").text = uuid
    ET.SubElement(domain, "metadata").append(mark_element(vm, forwards, packs, files))
    ET.SubElement(domain, "memory", {"unit": "KiB"}).text = _kib(r.max_memory)
    ET.SubElement(domain, "currentMemory", {"unit": "KiB"}).text = _kib(r.memory)
    ET.SubElement(domain, "vcpu", {"placement": "static", "current": str(r.vcpus)}).text = str(r.max_vcpus)

    os_el = ET.SubElement(domain, "os")
    ET.SubElement(os_el, "type", {"arch": "x86_64", "machine": "pc"}).text = "hvm"
    if boot.kernel is not None:
        ET.SubElement(os_el, "kernel").text = str(boot.kernel)
        if boot.initrd is not None:
            ET.SubElement(os_el, "initrd").text = str(boot.initrd)
        ET.SubElement(os_el, "cmdline").text = boot.cmdline
    else:
        ET.SubElement(os_el, "boot", {"dev": "hd"})
    features = ET.SubElement(domain, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(features, "apic")
    for event, what in (("on_poweroff", "destroy"), ("on_reboot", "restart"), ("on_crash", "destroy")):
        ET.SubElement(domain, event).text = what

    devices = ET.SubElement(domain, "devices")
    disk = ET.SubElement(devices, "disk", {"type": "file", "device": "disk"})
    ET.SubElement(disk, "driver", {"name": "qemu", "type": "qcow2"})
    ET.SubElement(disk, "source", {"file": str(boot.disk)})
    ET.SubElement(disk, "target", {"dev": "vda", "bus": "virtio"})
    if boot.seed is not None:
        seed = ET.SubElement(devices, "disk", {"type": "file", "device": "disk", "snapshot": "no"})
        ET.SubElement(seed, "driver", {"name": "qemu", "type": "raw"})
        ET.SubElement(seed, "source", {"file": str(boot.seed)})
        ET.SubElement(seed, "target", {"dev": "vdb", "bus": "virtio"})
        ET.SubElement(seed, "readonly")
    serial = ET.SubElement(devices, "serial", {"type": "pty"})
    ET.SubElement(serial, "log", {"file": str(console_log), "append": "on"})
    ET.SubElement(serial, "target", {"port": "0"})
    console = ET.SubElement(devices, "console", {"type": "pty"})
    ET.SubElement(console, "target", {"type": "serial", "port": "0"})
    ET.SubElement(devices, "memballoon", {"model": "virtio"})
    if vm.gpu is not None:
        devices.append(hostdev_element(vm))

    hostfwd = ",".join(
        f"hostfwd=tcp:127.0.0.1:{fwd.host_port}-:{fwd.guest_port}" for fwd in forwards
    )
    netdev = "user,id=somnus0" + (f",{hostfwd}" if hostfwd else "")
    commandline = ET.SubElement(domain, f"{{{QEMU_NS}}}commandline")
    for arg in ("-netdev", netdev, "-device",
                f"virtio-net-pci,netdev=somnus0,bus=pci.0,addr={_NIC_PCI_SLOT}"):
        ET.SubElement(commandline, f"{{{QEMU_NS}}}arg", {"value": arg})
    return ET.tostring(domain, encoding="unicode")


def hostdev_element(vm: DesiredVm) -> ET.Element:
    """PCI passthrough of the device `vm` was given: `<hostdev mode='subsystem' type='pci'
    managed='yes'>`, libvirt detaching it from the host at start and giving it back at stop."""
    address = vm.gpu_address
    if address is None:
        raise PermanentError(f"{vm.address}: its gpu ({vm.gpu}) has no host device assigned "
                             "(passes.prepare assigns one, or refuses the manifest)")
    pci_domain, bus, slot_function = address.split(":")
    slot, function = slot_function.split(".")
    hostdev = ET.Element("hostdev", {"mode": "subsystem", "type": "pci", "managed": "yes"})
    ET.SubElement(ET.SubElement(hostdev, "source"), "address", {
        "domain": f"0x{pci_domain}", "bus": f"0x{bus}", "slot": f"0x{slot}", "function": f"0x{function}"})
    return hostdev


def _passed_through(root: ET.Element) -> tuple[str, ...]:
    """PCI addresses (0000:01:00.0) of the domain's PCI hostdevs."""
    found = []
    for address in root.iterfind("devices/hostdev[@type='pci']/source/address"):
        parts = [int(address.get(name, "0"), 16) for name in ("domain", "bus", "slot", "function")]
        found.append("{:04x}:{:02x}:{:02x}.{:x}".format(*parts))
    return tuple(found)


def snapshot_xml(name: str, description: str) -> str:
    """An internal snapshot of disk and (when running) memory: `virDomainSnapshotCreateXML`."""
    snapshot = ET.Element("domainsnapshot")
    ET.SubElement(snapshot, "name").text = name
    ET.SubElement(snapshot, "description").text = description
    return ET.tostring(snapshot, encoding="unicode")


def parse_snapshot(xml: str) -> tuple[str, float, str]:
    root = ET.fromstring(xml)
    return (root.findtext("name", ""), float(root.findtext("creationTime", "0")),
            root.findtext("description", ""))


def _memory_bytes(element: ET.Element | None) -> int:
    if element is None or element.text is None:
        return 0
    scale = {"b": 1, "bytes": 1, "KiB": 1024, "k": 1024, "MiB": 2**20, "M": 2**20,
             "GiB": 2**30, "G": 2**30}[element.get("unit", "KiB")]
    return int(element.text) * scale


def parse_mark(element: ET.Element | None) -> VmMark | None:
    if element is None:
        return None
    forwards = tuple(
        PortForward(f.get("name", ""), int(f.get("host-port", "0")), int(f.get("guest-port", "0")))
        for f in element.iter(f"{{{SOMNUS_NS}}}forward")
    )
    packs = tuple((p.get("name", ""), p.get("fingerprint", "")) for p in element.iter(f"{{{SOMNUS_NS}}}pack"))
    files = tuple((f.get("path", ""), f.get("digest", "")) for f in element.iter(f"{{{SOMNUS_NS}}}file"))
    return VmMark(
        spec_hash=element.get("spec-hash", ""),
        image=element.get("image", ""),
        disk_size=int(element.get("disk-size", "0")),
        os_family=element.get("os-family", ""),
        owner=element.get("owner"),
        pool=element.get("pool", "default"),
        backup=element.get("backup"),
        gpu=element.get("gpu"),
        forwards=forwards,
        packs=packs,
        files=files,
    )


def parse(xml: str, power: PowerState | None = None, definition: str | None = None) -> ActualVm:
    """Read an `ActualVm` from `virDomainGetXMLDesc` output.

    A running domain's XML carries `id`; `power` overrides that guess when the
    caller knows better (paused domains also carry an id). Its currentMemory is
    what the guest's balloon reports (status); the balloon target the host set
    is the currentMemory of `definition`, the persistent (inactive) XML, which
    `setMemoryFlags(..., AFFECT_CONFIG)` writes. Without `definition` (a domain
    that is shut off: both are the same) the target is read from `xml`.
    """
    root = ET.fromstring(xml)
    raw_id = root.get("id")
    domain_id = int(raw_id) if raw_id is not None and raw_id != "-1" else None
    vcpu = root.find("vcpu")
    max_vcpus = int(vcpu.text or "0") if vcpu is not None else 0
    current = vcpu.get("current") if vcpu is not None else None
    max_memory = _memory_bytes(root.find("memory"))
    reported = _current_memory(root, max_memory)
    persistent = ET.fromstring(definition) if definition is not None else root
    target = _current_memory(persistent, max_memory)
    serial_log = root.find("devices/serial/log")
    state = power or (PowerState.RUNNING if domain_id is not None else PowerState.SHUTOFF)
    return ActualVm(
        name=root.findtext("name", ""),
        power=state,
        domain_id=domain_id,
        vcpus=int(current) if current else max_vcpus,
        max_vcpus=max_vcpus,
        memory=target,
        max_memory=max_memory,
        mark=parse_mark(root.find(f"metadata/{{{SOMNUS_NS}}}vm")),
        console_log=serial_log.get("file") if serial_log is not None else None,
        balloon=reported if state is PowerState.RUNNING else None,
        gpus=_passed_through(persistent),
    )


def _current_memory(root: ET.Element, max_memory: int) -> int:
    current = root.find("currentMemory")
    return _memory_bytes(current) if current is not None else max_memory
