"""Fixtures for integration tests against the real libvirtd (qemu:///system) and dockerd.

They fail, never skip, when a daemon is missing. Every object a test creates
carries a random per-test prefix and is removed at teardown.

`no_secret_leaks` (session, autouse) fails the session when an agent token or a
private key made through any `Workspace` shows up in a `somnus` output or in a
file of a state directory other than its own 0600 file (see secret_scan.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import libvirt
import pytest
import yaml

from somnus_reconciler import settings as settings_mod
from somnus_reconciler.images import container_images, vm_images
from somnus_reconciler.providers import domain_xml
from somnus_reconciler.providers.docker_provider import DockerProvider
from somnus_reconciler.values.actual import PortForward
from somnus_reconciler.values.desired import DesiredVm, VmResources
from somnus_reconciler.values.diagnostics import Source
from tests.integration import secret_scan

LIBVIRT_URI = "qemu:///system"


@pytest.fixture(scope="session", autouse=True)
def no_secret_leaks() -> Iterator[None]:
    """Set up first, so torn down last: after every Workspace of the session is done."""
    yield
    findings = secret_scan.SESSION.scan()
    if findings:
        pytest.fail("secrets outside their 0600 files:\n" + "\n".join(findings), pytrace=False)


class ReconnectingConnection:
    """A libvirt connection that opens itself again once libvirtd was restarted
    (tests/integration/test_daemon_faults.py restarts it)."""

    def __init__(self, uri: str) -> None:
        self._uri = uri
        self._conn = libvirt.open(uri)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._conn, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return getattr(self._conn, name)(*args, **kwargs)
            except libvirt.libvirtError as e:
                if e.get_error_domain() != libvirt.VIR_FROM_RPC:
                    raise
                self._conn = libvirt.open(self._uri)  # libvirtd went away and is back
                return getattr(self._conn, name)(*args, **kwargs)

        return call


@pytest.fixture(scope="session")
def libvirt_conn() -> Iterator[libvirt.virConnect]:
    try:
        conn: Any = ReconnectingConnection(LIBVIRT_URI)
    except libvirt.libvirtError as e:
        pytest.fail(f"libvirtd is not reachable at {LIBVIRT_URI}: {e}; run scripts/setup-host.sh")
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env()
        client.ping()
    except Exception as e:  # noqa: BLE001 - any failure here means no daemon
        pytest.fail(f"dockerd is not reachable: {e}; run scripts/setup-host.sh")
    yield client
    client.close()


@pytest.fixture(scope="session")
def base_images(libvirt_conn: libvirt.virConnect, docker_client: docker.DockerClient) -> None:
    """tiny-linux and somnus/busybox, built once (both builds are cached by recipe)."""
    vm_images.build_vm_image("tiny-linux", settings_mod.resolve().images_dir)
    provider = DockerProvider()
    container_images.build_container_image("somnus/busybox:latest", provider)
    provider.close()


@dataclass
class Workspace:
    """A manifest directory, a state directory and a name prefix for one test."""

    root: Path
    prefix: str
    conn: libvirt.virConnect
    docker: docker.DockerClient
    manifests: Path = field(init=False)
    state_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.manifests = self.root / "manifests"
        self.manifests.mkdir()
        self.state_dir = self.root / "state"
        secret_scan.SESSION.register(self.state_dir)  # scanned for leaked secrets at session end

    def name(self, suffix: str) -> str:
        return f"{self.prefix}-{suffix}"

    def write(self, filename: str, *documents: dict[str, Any]) -> Path:
        """One manifest file, led by this test's own Pool so that --prune stays in the test."""
        pool = {
            "apiVersion": "somnus/v1", "kind": "Pool", "metadata": {"name": self.prefix},
            "spec": {"domainType": "qemu", "cpuOvercommit": 8, "reserved": {"vcpus": 0, "memory": "1Gi"}},
        }
        path = self.manifests / filename
        path.write_text(yaml.safe_dump_all([pool, *documents], sort_keys=False))
        return path

    def somnus(self, *args: str, check_exit: int | None = None,
               timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, SOMNUS_STATE_DIR=str(self.state_dir), SOMNUS_SHUTDOWN_TIMEOUT="15")
        result = subprocess.run(
            [sys.executable, "-m", "somnus_reconciler", *args],
            capture_output=True, text=True, env=env, timeout=timeout_s,
        )
        # For the session's secret scan: what was printed, and the keys while they exist.
        secret_scan.SESSION.record_output(f"stdout of somnus {' '.join(args)}", result.stdout)
        secret_scan.SESSION.record_output(f"stderr of somnus {' '.join(args)}", result.stderr)
        secret_scan.SESSION.harvest()
        if check_exit is not None:
            assert result.returncode == check_exit, (
                f"somnus {' '.join(args)} exited {result.returncode}, expected {check_exit}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def get_json(self) -> dict[str, dict[str, Any]]:
        out = self.somnus("get", "-o", "json", "-A", check_exit=0).stdout
        return {f"{i['kind']}/{i['name']}": i for i in json.loads(out)["items"]}

    def domain(self, suffix: str) -> libvirt.virDomain:
        return self.conn.lookupByName(self.name(suffix))


def vm_doc(name: str, *, vcpus: int = 1, memory: str = "256Mi", max_vcpus: int = 2,
           max_memory: str = "512Mi", running: bool = True, image: str = "tiny-linux",
           labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "somnus/v1", "kind": "VirtualMachine",
        "metadata": {"name": name, "labels": labels or {"owner": "tests"}},
        "spec": {
            "resources": {"vcpus": vcpus, "memory": memory, "maxVcpus": max_vcpus, "maxMemory": max_memory},
            "image": image, "diskSize": "1Gi", "running": running,
        },
    }


def container_doc(name: str, *, memory: str = "64Mi", env: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "somnus/v1", "kind": "Container",
        "metadata": {"name": name, "labels": {"owner": "tests"}},
        "spec": {
            "image": "somnus/busybox:latest", "command": ["sleep", "infinity"],
            "resources": {"cpus": 0.25, "memory": memory}, "network": "none", "env": env or {},
        },
    }


@pytest.fixture
def workspace(tmp_path: Path, libvirt_conn: libvirt.virConnect, docker_client: docker.DockerClient,
              base_images: None) -> Iterator[Workspace]:
    ws = Workspace(tmp_path, f"it-{uuid.uuid4().hex[:6]}", libvirt_conn, docker_client)
    yield ws
    remove_objects(ws)


def remove_objects(ws: Workspace) -> None:
    """Everything a test made under its prefix: domains with their disks, containers, snapshots,
    named volumes, backups."""
    libvirt_conn, docker_client = ws.conn, ws.docker
    for dom in libvirt_conn.listAllDomains(0):
        if dom.name().startswith(ws.prefix):
            if dom.isActive():
                dom.destroy()
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                              | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
            subprocess.run(["rm", "-rf", str(settings_mod.DEFAULT_GUEST_DIR / "vms" / dom.name())], check=False)
    for container in docker_client.containers.list(all=True, sparse=True):
        if container.attrs["Names"][0].lstrip("/").startswith(ws.prefix):
            container.remove(force=True)
    # The low-level listing: the SDK's images.list inspects each image, and one that another
    # run removes in between would fail the teardown.
    for image in docker_client.api.images(name="somnus-snapshots/*"):
        for tag in image.get("RepoTags") or []:
            if tag.split("/", 1)[1].startswith(ws.prefix):
                with contextlib.suppress(docker.errors.NotFound):
                    docker_client.images.remove(tag, force=True)
    for volume in docker_client.volumes.list(filters={"label": "io.somnus.managed"}):
        if volume.name.startswith(f"somnus-{ws.prefix}"):
            volume.remove(force=True)
    settings = settings_mod.resolve()  # backups: before a prune or a replace, or by hand
    for root in (settings.backups_dir, settings.container_backups_dir):
        for taken in root.glob(f"{ws.prefix}*"):
            subprocess.run(["rm", "-rf", str(taken)], check=False)


def image_domain_xml(name: str, image: vm_images.VmImage, overlay: Path, console_log: Path,
                     forwards: dict[str, tuple[int, int]], *, memory_mib: int, vcpus: int = 1,
                     seed: Path | None = None) -> str:
    """A domain booting `image` alone, built by the product's own `domain_xml.build`
    (forwards: name -> (host port on 127.0.0.1, guest port))."""
    memory = memory_mib * 2**20
    vm = DesiredVm(name, VmResources(vcpus, memory, vcpus, memory), image.name, 0, "debian", True,
                   (), 1, None, None, Source(Path("test"), 1))
    boot = domain_xml.BootSource(overlay, image.kernel, image.initrd, image.cmdline, seed)
    return domain_xml.build(vm, boot, domain_type="qemu", console_log=console_log,
                            forwards=tuple(PortForward(n, host, guest) for n, (host, guest) in forwards.items()))


def read_or_empty(path: Path) -> str:
    """A console log that may not exist yet."""
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def destroy_and_undefine(dom: libvirt.virDomain) -> None:
    with contextlib.suppress(libvirt.libvirtError):
        if dom.isActive():
            dom.destroy()
    with contextlib.suppress(libvirt.libvirtError):
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                          | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
