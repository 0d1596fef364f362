"""Hostile manifests are refused with `FILE:LINE: kind/name: message` and exit 2, and what
gets through to the backends cannot be turned against the host.

Every case of testkit/hostile_cases.py that `validate` refuses goes through the CLI here;
the few that only planning refuses (image file contents) are checked at `images`. The
domain XML is built with hostile strings to show they stay text; the container that
`DockerProvider.create` asks dockerd for is recorded through docker-py's own request
building, without a daemon.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import docker
import pytest
from click.testing import CliRunner

from somnus_reconciler.cli.commands import cli
from somnus_reconciler.images import vm_images
from somnus_reconciler.planning import admission
from somnus_reconciler.providers import domain_xml
from somnus_reconciler.providers.docker_provider import DockerProvider
from somnus_reconciler.values.actual import PortForward
from somnus_reconciler.values.desired import DesiredContainer, DesiredState, DesiredVm, VmResources
from somnus_reconciler.values.diagnostics import Source
from somnus_reconciler.values.model import PoolSpec
from testkit import hostile_cases
from testkit.hostile_cases import HostileCase

VALIDATE_CASES = [case for case in hostile_cases.CASES if case.stage == "validate"]
APPLY_CASES = [case for case in hostile_cases.CASES if case.stage == "apply"]


def _ids(cases: list[HostileCase]) -> list[str]:
    return [case.description for case in cases]


@pytest.mark.parametrize("case", VALIDATE_CASES, ids=_ids(VALIDATE_CASES))
def test_validate_refuses_the_hostile_manifest_at_its_line(case: HostileCase, tmp_path: Path) -> None:
    manifest = hostile_cases.materialize(case, tmp_path)
    result = CliRunner().invoke(cli, ["validate", str(manifest.parent)])
    assert result.exit_code == 2, result.output
    assert hostile_cases.refusal_in(case, manifest, result.stderr) is not None, (
        f"expected {manifest}:{hostile_cases.expected_line(case)}: ... {case.expected!r} in\n{result.stderr}"
    )
    assert "nothing was changed" in result.stderr


@pytest.mark.parametrize("case", APPLY_CASES, ids=_ids(APPLY_CASES))
def test_image_files_qemu_would_follow_elsewhere_are_refused(case: HostileCase, tmp_path: Path) -> None:
    """These pass `validate` (it opens no image file); `apply` refuses them when it plans
    the VM (tests/integration/test_hostile.py), through this lookup."""
    manifest = hostile_cases.materialize(case, tmp_path)
    assert CliRunner().invoke(cli, ["validate", str(manifest.parent)]).exit_code == 0
    [image] = [tmp_path / path for path in case.files]
    with pytest.raises(vm_images.ImageError, match=case.expected):
        vm_images.find_vm_image(str(image), tmp_path / "guest-images")


def test_a_standalone_qcow2_inside_an_allowed_root_is_accepted(tmp_path: Path) -> None:
    case = next(c for c in hostile_cases.CASES if c.description.startswith("'..' out of"))
    manifest = hostile_cases.materialize(case, tmp_path)
    allowed = manifest.read_text().replace("/images/../secret.qcow2", "/images/standalone.qcow2")
    manifest.write_text(allowed.replace(hostile_cases.REFUSED_HERE, ""))
    result = CliRunner().invoke(cli, ["validate", str(manifest.parent)])
    assert result.exit_code == 0, result.output
    assert vm_images.find_vm_image(str(tmp_path / "images" / "standalone.qcow2"), tmp_path).disk == (
        tmp_path / "images" / "standalone.qcow2"
    )


def test_image_paths_are_checked_after_resolving_links_and_dots(tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (root / "inside").symlink_to(tmp_path / "elsewhere")
    assert vm_images.path_problem(f"{root}/a.qcow2", [root]) is None
    assert vm_images.path_problem("debian-12", [root]) is None  # a base image name, not a path
    assert "resolves to" in str(vm_images.path_problem(f"{root}/../a.qcow2", [root]))
    assert "resolves to" in str(vm_images.path_problem(f"{root}/inside/a.qcow2", [root]))
    # A root that is itself a link counts as where it leads.
    (tmp_path / "root-link").symlink_to(root)
    assert vm_images.path_problem(f"{root}/a.qcow2", [tmp_path / "root-link"]) is None


# --- disks against the guest directory's file system ---------------------------------------

GiB = 2**30


def _vm(name: str, disk_size: int, *, running: bool = True) -> DesiredVm:
    return DesiredVm(
        name=name, resources=VmResources(1, GiB, 1, GiB), image="tiny-linux", disk_size=disk_size,
        os_family="debian", running=running, packs=(), snapshot_retain=5, owner=None, profile=None,
        source=Source(Path("vms.yaml"), len(name)),
    )


def _disk_problems(vms: list[DesiredVm], new: set[str], *, total: int, free: int) -> list[str]:
    desired = DesiredState(vms={vm.name: vm for vm in vms}, containers={}, packs={}, pool=PoolSpec())
    host = admission.HostCapacity(cpus=64, memory=512 * GiB,
                                  disk=admission.DiskCapacity(Path("/guests"), total, free))
    return [str(p) for p in admission.check(desired, host, new_disks=new)]


def test_a_disk_beyond_the_whole_file_system_is_refused_even_for_a_stopped_vm() -> None:
    assert _disk_problems([_vm("a", 2**60, running=False)], set(), total=100 * GiB, free=50 * GiB) == [
        "vms.yaml:1: vm/a: spec.diskSize: 1Ei is more than the whole file system of /guests (100Gi)",
    ]


def test_new_disks_must_fit_in_the_free_space_and_existing_ones_are_not_counted_again() -> None:
    vms = [_vm("old", 40 * GiB), _vm("new1", 6 * GiB), _vm("new2", 6 * GiB)]
    assert _disk_problems(vms, {"new1"}, total=100 * GiB, free=10 * GiB) == []
    assert _disk_problems(vms, {"new1", "new2"}, total=100 * GiB, free=10 * GiB) == [
        "vms.yaml:4: vm/new2: new VM disks need 12Gi but /guests has 10Gi free",
    ]


def test_without_a_measured_disk_nothing_about_disks_is_said() -> None:
    desired = DesiredState(vms={"a": _vm("a", 2**60)}, containers={}, packs={}, pool=PoolSpec())
    assert admission.check(desired, admission.HostCapacity(cpus=64, memory=512 * GiB), new_disks={"a"}) == []


# --- the domain XML keeps hostile strings as text ----------------------------------------

HOSTILE_TEXT = "x</name><devices><disk type='file'/></devices><name>&xxe;\"'"


def _domain(vm: DesiredVm) -> str:
    boot = domain_xml.BootSource(disk=Path("/var/lib/somnus/vms/x/disk.qcow2"))
    return domain_xml.build(vm, boot, domain_type="qemu", console_log=Path("/tmp/console.log"),
                            forwards=(PortForward("ssh", 2222, 22),), packs=(("p<a>ck", "&fp;"),))


def test_hostile_strings_stay_text_and_attribute_values_in_the_domain_xml() -> None:
    vm = DesiredVm(
        name=HOSTILE_TEXT, resources=VmResources(1, 2**30, 1, 2**30), image=f"/images/{HOSTILE_TEXT}.qcow2",
        disk_size=2**30, os_family="debian", running=True, packs=(), snapshot_retain=5,
        owner=HOSTILE_TEXT, profile=None, source=Source(Path("m.yaml"), 1), pool=HOSTILE_TEXT,
    )
    xml = _domain(vm)

    assert "&lt;/name&gt;&lt;devices&gt;" in xml and "&amp;xxe;" in xml
    root = ET.fromstring(xml)
    reference = ET.fromstring(_domain(DesiredVm(
        name="plain", resources=vm.resources, image="/images/plain.qcow2", disk_size=vm.disk_size,
        os_family="debian", running=True, packs=(), snapshot_retain=5, owner="plain", profile=None,
        source=vm.source, pool="plain",
    )))
    # Exactly the elements of a domain built from plain strings: nothing injected.
    assert [e.tag for e in root.iter()] == [e.tag for e in reference.iter()]
    assert [e.tag for e in root.iter("name")] == ["name"]
    assert len(root.findall("devices/disk")) == 1
    assert root.findtext("name") == HOSTILE_TEXT
    mark = domain_xml.parse_mark(root.find(f"metadata/{{{domain_xml.SOMNUS_NS}}}vm"))
    assert mark is not None
    assert (mark.owner, mark.pool, mark.image) == (HOSTILE_TEXT, HOSTILE_TEXT, vm.image)
    assert mark.packs == (("p<a>ck", "&fp;"),)
    # The mark alone, as setMetadata takes it, escapes the same way.
    alone = ET.fromstring(domain_xml.mark_xml(vm, ()))
    assert [e.tag for e in alone.iter()] == ["vm"] and alone.get("owner") == HOSTILE_TEXT


# --- what DockerProvider.create asks dockerd for --------------------------------------------


class _RecordingApi(docker.APIClient):  # type: ignore[misc]
    """docker-py's real client, which builds HostConfig itself, with the two calls that
    would reach dockerd recorded instead. A fixed API version: no request at all."""

    def __init__(self) -> None:
        super().__init__(base_url="unix:///nonexistent/docker.sock", version="1.43")
        self.created: dict[str, Any] = {}

    def create_container(self, **kwargs: Any) -> dict[str, str]:
        self.created = kwargs
        return {"Id": "0" * 64}

    def start(self, container: str) -> None:
        pass


SHELL_TEXT = "$(touch /tmp/pwned); `id` | tee /etc/x && echo ${HOME} > /dev/null; 'q' \"dq\""


def test_create_asks_for_nothing_privileged_and_passes_argv_and_env_as_given() -> None:
    api = _RecordingApi()
    provider = DockerProvider()
    provider._local.client = api  # the seam `_api()` returns (this thread's client); no daemon is contacted
    container = DesiredContainer(
        name="box", image="somnus/busybox:latest", command=("echo", SHELL_TEXT), cpus=0.5, memory=2**26,
        network="none", env=(("EVIL", SHELL_TEXT),), packs=(), owner="alice", source=Source(Path("m"), 1),
    )

    provider.create(container)

    created = api.created
    assert created["command"] == ["echo", SHELL_TEXT]  # argv as given: no shell in between
    assert created["environment"] == [f"EVIL={SHELL_TEXT}"]
    host_config = created["host_config"]
    assert host_config["NetworkMode"] == "none"
    assert not host_config.get("Privileged")
    for absent in ("Binds", "Mounts", "Devices", "CapAdd", "PortBindings", "PublishAllPorts",
                   "SecurityOpt", "PidMode", "IpcMode", "UsernsMode", "VolumesFrom", "Sysctls"):
        assert not host_config.get(absent), absent
    assert set(host_config) <= {"NetworkMode", "RestartPolicy", "Init", "NanoCpus", "Memory"}, host_config


def test_create_refuses_a_network_mode_other_than_none_or_host() -> None:
    provider = DockerProvider()
    provider._local.client = _RecordingApi()
    container = DesiredContainer(
        name="box", image="somnus/busybox:latest", command=None, cpus=1, memory=2**26, network="bridge",
        env=(), packs=(), owner=None, source=Source(Path("m"), 1),
    )
    with pytest.raises(Exception, match="network 'bridge' is not allowed"):
        provider.create(container)
