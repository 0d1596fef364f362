"""The debian-12 VM image and the somnus/base:bookworm container image, for real.

debian-12 is built (or found cached) in the shared images directory, as
`somnus image build` would leave it, and booted under the real libvirtd
(qemu:///system, TCG) from an overlay, with a seed disk carrying a fresh key
pair's public half and an agent token. The checks are what Ansible and the
engine rely on: SSH as root by key through a 127.0.0.1 port forward, python3
with apt, a settled systemd, the seed installed with the right modes, no
password logins, and internal snapshots of the running guest that revert its
disk. An unreachable libvirtd or dockerd is a failure, not a skip.

Figures (build, boot to SSH, snapshot times) are printed; run with -s to see them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import libvirt
import pytest

from somnus_reconciler import settings
from somnus_reconciler.images import container_images, rootfs, store, vm_images
from somnus_reconciler.images.debian_image import ROOT_LABEL
from somnus_reconciler.providers import domain_xml, guest_access, ssh_agent
from somnus_reconciler.providers.docker_provider import DockerProvider
from somnus_reconciler.providers.protocols import BackendUnavailable
from testkit.agent_process import free_port
from tests.integration import secret_scan
from tests.integration.conftest import (
    destroy_and_undefine,
    image_domain_xml,
    read_or_empty,
)

pytestmark = pytest.mark.integration

MEMORY_KIB = 1024 * 1024
VCPUS = 2
SSH_TIMEOUT_S = 240.0
READY_LINE_TIMEOUT_S = 60.0
AGENT_TOKEN = b"test-token-" + secrets.token_hex(8).encode()


@dataclass(frozen=True)
class Guest:
    dom: libvirt.virDomain
    port: int
    key: guest_access.GuestKey
    agent: ssh_agent.SshAgent  # holds the key for the module: ssh reads no key file
    console_log: Path
    boot_to_ssh_s: float

    def ssh(self, command: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            guest_access.ssh_command(self.port, self.key, command),
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
            env={**os.environ, **self.agent.env},
        )
        if check:
            assert result.returncode == 0, (
                f"{command!r} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result


@pytest.fixture(scope="module")
def images_dir() -> Path:
    return settings.resolve().images_dir


@pytest.fixture(scope="module")
def debian_image(images_dir: Path) -> vm_images.VmImage:
    started = time.monotonic()
    image = vm_images.build_vm_image("debian-12", images_dir, log=print)
    print(f"\ndebian-12 build (cold or cached): {time.monotonic() - started:.1f} s")
    return image


@pytest.fixture(scope="module")
def test_root() -> Iterator[Path]:
    # /var/lib, not /tmp: QEMU runs as libvirt-qemu and must reach every file.
    root = Path(tempfile.mkdtemp(prefix="somnus-test-debian-", dir="/var/lib"))
    os.chmod(root, 0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def guest(
    debian_image: vm_images.VmImage, test_root: Path, libvirt_conn: libvirt.virConnect,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Guest]:
    """One running debian-12 guest for the module: booting one takes a while under TCG."""
    name = f"somnus-test-debian-{secrets.token_hex(4)}"
    state_dir = tmp_path_factory.mktemp("state")
    vm_dir = test_root / name
    vm_dir.mkdir(mode=0o755)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(guest_access.remove_keypair, state_dir, name)
        key = guest_access.ensure_keypair(state_dir, name)
        secret_scan.SESSION.register(state_dir)  # this key, too, must not leak (secret_scan.py)
        secret_scan.SESSION.harvest()
        seed = vm_dir / "seed.img"
        # The host key and agent certificate it proves itself with, as the provider gives every VM.
        guest_access.build_seed_disk(seed, {**guest_access.seed_files(state_dir, name), "agent-token": AGENT_TOKEN})
        overlay = vm_dir / "disk.qcow2"
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(debian_image.disk), str(overlay)],
            check=True,
        )
        console_log = vm_dir / "console.log"
        port = free_port()
        dom = libvirt_conn.defineXML(image_domain_xml(name, debian_image, overlay, console_log, {"ssh": (port, 22)},
                                                      memory_mib=MEMORY_KIB // 1024, vcpus=VCPUS, seed=seed))
        cleanup.callback(destroy_and_undefine, dom)
        started = time.monotonic()
        dom.create()
        agent = cleanup.enter_context(guest_access.ssh_agent(key))
        try:
            guest_access.wait_for_ssh(port, key, SSH_TIMEOUT_S, agent=agent)
        except guest_access.GuestUnreachable as e:
            pytest.fail(f"{e}\nconsole:\n{read_or_empty(console_log)[-4000:]}")
        boot_to_ssh_s = time.monotonic() - started
        print(f"\ndebian-12 boot to SSH under TCG ({VCPUS} vCPUs, 1 GiB): {boot_to_ssh_s:.1f} s")
        yield Guest(dom, port, key, agent, console_log, boot_to_ssh_s)
        secret_scan.SESSION.record_output(f"console log of {name}", read_or_empty(console_log))


def test_image_files_are_readable_by_qemu(debian_image: vm_images.VmImage, images_dir: Path) -> None:
    image_dir = vm_images.image_dir("debian-12", images_dir)
    assert debian_image.kernel is not None and debian_image.initrd is not None
    assert f"root=LABEL={ROOT_LABEL}" in debian_image.cmdline
    for path in (debian_image.disk, debian_image.kernel, debian_image.initrd, image_dir / vm_images.RECIPE_FILE):
        assert path.parent == image_dir
        assert path.stat().st_mode & 0o777 == 0o644, path
    assert image_dir.stat().st_mode & 0o777 == 0o755


def test_second_build_reuses_the_cached_image(debian_image: vm_images.VmImage, images_dir: Path) -> None:
    files = (debian_image.disk, debian_image.kernel, debian_image.initrd)
    before = {p: p.stat().st_ino for p in files if p is not None}
    started = time.monotonic()
    again = vm_images.build_vm_image("debian-12", images_dir)
    print(f"\ndebian-12 cached build: {(time.monotonic() - started) * 1000:.1f} ms")
    assert again == debian_image
    assert {p: p.stat().st_ino for p in before} == before


def test_guest_is_reachable_by_key_and_ready_for_ansible(guest: Guest) -> None:
    assert guest.ssh("python3 -c 'import apt, apt_pkg; apt_pkg.init(); print(apt_pkg.VERSION)'").stdout.strip()
    authorized = guest.ssh("cat /root/.ssh/authorized_keys").stdout
    assert authorized.strip() == guest.key.public_openssh
    modes = guest.ssh("stat -c '%n %a' /root/.ssh /root/.ssh/authorized_keys /etc/somnus /etc/somnus/agent-token "
                      "/etc/somnus/agent-key.pem /etc/ssh/ssh_host_ed25519_key")
    assert modes.stdout.split("\n")[:6] == [
        "/root/.ssh 700", "/root/.ssh/authorized_keys 600", "/etc/somnus 700", "/etc/somnus/agent-token 600",
        "/etc/somnus/agent-key.pem 600", "/etc/ssh/ssh_host_ed25519_key 600",
    ]
    assert guest.ssh("cat /etc/somnus/agent-token").stdout.encode() == AGENT_TOKEN
    # `is-system-running` exits non-zero when degraded; its output is the answer.
    state = ""
    deadline = time.monotonic() + READY_LINE_TIMEOUT_S
    while time.monotonic() < deadline:
        state = guest.ssh("systemctl is-system-running", check=False).stdout.strip()
        if state not in ("initializing", "starting"):
            break
        time.sleep(1)
    failed = guest.ssh("systemctl --failed --no-legend", check=False).stdout
    assert state in ("running", "degraded"), f"system is {state!r}; failed units:\n{failed}"
    print(f"\nsystem state: {state}; failed units: {failed.strip() or 'none'}")
    sshd = guest.ssh("sshd -T").stdout
    assert "permitrootlogin without-password" in sshd  # sshd -T's name for prohibit-password
    assert "passwordauthentication no" in sshd
    shadow = guest.ssh("getent shadow root").stdout
    assert shadow.split(":")[1].startswith(("*", "!")), "root must have no password"


def test_guest_finds_the_hosts_package_mirrors_without_a_nameserver(guest: Guest, images_dir: Path) -> None:
    built = json.loads((vm_images.image_dir("debian-12", images_dir) / vm_images.RECIPE_FILE).read_text())["built"]
    guest_hosts = guest.ssh("cat /etc/hosts").stdout.splitlines()
    assert built["hosts_lines"], "the build host resolved none of its apt hosts"
    for line in built["hosts_lines"]:
        assert line in guest_hosts
    guest_sources = guest.ssh("cat /etc/apt/sources.list.d/somnus-host.sources").stdout
    assert guest_sources == "\n".join(built["apt_sources"])
    mirror_hosts = {line.split()[1] for line in built["hosts_lines"]}
    assert mirror_hosts == {h for s in rootfs._deb822_sources(guest_sources) for h in s.hostnames()}
    assert "nameserver" not in guest.ssh("grep -v '^#' /etc/resolv.conf", check=False).stdout


def test_guest_prints_the_ready_line_on_the_serial_console(guest: Guest) -> None:
    deadline = time.monotonic() + READY_LINE_TIMEOUT_S
    while store.GUEST_READY_LINE not in read_or_empty(guest.console_log) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert store.GUEST_READY_LINE in read_or_empty(guest.console_log), read_or_empty(guest.console_log)[-4000:]


def test_internal_snapshot_of_the_running_guest_reverts_its_disk(guest: Guest) -> None:
    started = time.monotonic()
    snapshot = guest.dom.snapshotCreateXML(domain_xml.snapshot_xml("before-change", "test"), 0)
    create_s = time.monotonic() - started
    marker = f"/root/somnus-marker-{secrets.token_hex(4)}"
    guest.ssh(f"echo changed > {marker} && sync")
    assert guest.ssh(f"test -e {marker}", check=False).returncode == 0

    started = time.monotonic()
    guest.dom.revertToSnapshot(snapshot, 0)
    revert_s = time.monotonic() - started
    guest_access.wait_for_ssh(guest.port, guest.key, 60.0, agent=guest.agent)
    back_s = time.monotonic() - started
    print(f"\nsnapshot create: {create_s:.2f} s, revert: {revert_s:.2f} s, revert to SSH: {back_s:.2f} s")

    assert guest.dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert guest.ssh(f"test -e {marker}", check=False).returncode == 1, "the file outlived the revert"
    snapshot.delete(0)


def test_base_container_image_has_python3_apt_and_a_working_apt_get(tmp_path: Path) -> None:
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as e:
        pytest.fail(f"dockerd is not reachable: {e}")
    provider = DockerProvider()
    try:
        started = time.monotonic()
        container_images.build_container_image(container_images.DEBIAN_BASE_IMAGE, provider, log=print)
        print(f"\nsomnus/base:bookworm build (cold or cached): {time.monotonic() - started:.1f} s")
    except BackendUnavailable as e:
        pytest.fail(f"dockerd is not reachable: {e}")
    finally:
        provider.close()
    repo = _flat_apt_repo(tmp_path / "repo", "somnus-probe")
    container = client.containers.run(
        container_images.DEBIAN_BASE_IMAGE, detach=True, network_mode="none",
        name=f"somnus-test-base-{secrets.token_hex(4)}",
        volumes={str(repo): {"bind": "/repo", "mode": "ro"}},
    )
    try:
        exit_code, output = container.exec_run(["python3", "-c", "import apt; print(len(apt.Cache()))"])
        assert exit_code == 0, output.decode()
        script = (
            "echo 'deb [trusted=yes] file:/repo ./' >/etc/apt/sources.list"
            " && rm -f /etc/apt/sources.list.d/*"
            " && apt-get update -q && apt-get install -y -q somnus-probe"
            " && cat /usr/share/somnus-probe/hello"
        )
        exit_code, output = container.exec_run(["sh", "-c", script])
        assert exit_code == 0, output.decode()
        assert output.decode().rstrip().endswith("probe installed")
    finally:
        container.remove(force=True)
        client.close()


def _flat_apt_repo(repo: Path, package: str) -> Path:
    """A trusted flat apt repository holding one tiny package, for apt-get without a network."""
    tree = repo.parent / "pkg"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "usr/share" / package).mkdir(parents=True)
    control = (
        f"Package: {package}\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: Somnus tests <tests@localhost>\nDescription: apt-get probe\n"
    )
    (tree / "DEBIAN/control").write_text(control)
    (tree / "usr/share" / package / "hello").write_text("probe installed\n")
    repo.mkdir()
    deb = repo / f"{package}_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(deb)], check=True,
                   capture_output=True)
    digest = hashlib.sha256(deb.read_bytes()).hexdigest()
    (repo / "Packages").write_text(
        f"{control}Filename: ./{deb.name}\nSize: {deb.stat().st_size}\nSHA256: {digest}\n\n"
    )
    os.chmod(repo, 0o755)
    return repo
