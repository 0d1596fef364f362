"""The tiny-linux VM image builds, caches, and boots under the real libvirtd.

Builds the image into a fresh directory under /var/lib (QEMU runs as
libvirt-qemu under qemu:///system and must read it), boots a TCG domain from an
overlay with direct kernel boot, and checks what the rest of Somnus relies on:
the ready line on the serial console, the status server through a loopback
port forward, live memory ballooning, and ACPI shutdown. An unreachable
libvirtd is a failure, not a skip.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import pytest

from somnus_reconciler.images import store, vm_images
from somnus_reconciler.providers import domain_xml
from testkit.agent_process import free_port
from tests.integration.conftest import (
    destroy_and_undefine,
    image_domain_xml,
    read_or_empty,
)

pytestmark = pytest.mark.integration

LIBVIRT_URI = os.environ.get("SOMNUS_LIBVIRT_URI", "qemu:///system")
MEMORY_KIB = 256 * 1024
BALLOON_KIB = 192 * 1024
READY_TIMEOUT_S = 60.0
HTTP_TIMEOUT_S = 30.0
BALLOON_TIMEOUT_S = 20.0
SHUTDOWN_TIMEOUT_S = 20.0


@pytest.fixture(scope="module")
def test_root() -> Iterator[Path]:
    # /var/lib, not /tmp: QEMU runs as libvirt-qemu and must reach every file.
    root = Path(tempfile.mkdtemp(prefix="somnus-test-", dir="/var/lib"))
    os.chmod(root, 0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def tiny_image(test_root: Path) -> vm_images.VmImage:
    started = time.monotonic()
    image = vm_images.build_vm_image("tiny-linux", test_root / "images")
    print(f"\ntiny-linux cold build: {time.monotonic() - started:.2f} s")
    return image


@pytest.fixture
def cleanup() -> Iterator[contextlib.ExitStack]:
    with contextlib.ExitStack() as stack:
        yield stack


def test_built_image_is_complete_and_readable_by_qemu(tiny_image: vm_images.VmImage, test_root: Path) -> None:
    image_dir = vm_images.image_dir("tiny-linux", test_root / "images")
    assert tiny_image.kernel is not None and tiny_image.initrd is not None
    assert "console=ttyS0" in tiny_image.cmdline
    for path in (tiny_image.disk, tiny_image.kernel, tiny_image.initrd, image_dir / vm_images.RECIPE_FILE):
        assert path.parent == image_dir
        assert path.stat().st_mode & 0o777 == 0o644, path
    assert image_dir.stat().st_mode & 0o777 == 0o755
    assert vm_images.find_vm_image("tiny-linux", test_root / "images") == tiny_image
    assert vm_images.find_vm_image(str(tiny_image.disk), test_root / "images").kernel is None
    assert not [p for p in (test_root / "images").iterdir() if ".building-" in p.name]


def test_second_build_reuses_the_cached_image(tiny_image: vm_images.VmImage, test_root: Path) -> None:
    before = {p: p.stat().st_ino for p in (tiny_image.disk, tiny_image.kernel, tiny_image.initrd) if p}
    started = time.monotonic()
    again = vm_images.build_vm_image("tiny-linux", test_root / "images")
    print(f"\ntiny-linux cached build: {(time.monotonic() - started) * 1000:.1f} ms")
    assert again == tiny_image
    assert {p: p.stat().st_ino for p in before} == before


def test_missing_image_names_the_build_command(tmp_path: Path) -> None:
    with pytest.raises(vm_images.ImageError, match="somnus image build tiny-linux"):
        vm_images.find_vm_image("tiny-linux", tmp_path)


def test_leftovers_of_a_killed_build_are_not_an_image_and_get_replaced(test_root: Path) -> None:
    images_dir = test_root / "images-after-crash"
    staging = images_dir / ".tiny-linux.building-killed"
    staging.mkdir(parents=True)
    (staging / vm_images.KERNEL_FILE).write_bytes(b"half a kernel")
    half_published = vm_images.image_dir("tiny-linux", images_dir)
    half_published.mkdir()
    for file in (vm_images.DISK_FILE, vm_images.KERNEL_FILE, vm_images.INITRD_FILE):
        (half_published / file).write_bytes(b"")
    with pytest.raises(vm_images.ImageError):
        vm_images.find_vm_image("tiny-linux", images_dir)

    image = vm_images.build_vm_image("tiny-linux", images_dir)

    assert vm_images.find_vm_image("tiny-linux", images_dir) == image
    assert image.kernel is not None and image.kernel.stat().st_size > 1_000_000
    assert sorted(p.name for p in images_dir.iterdir()) == [".tiny-linux.lock", half_published.name]


def test_tiny_linux_boots_balloons_and_shuts_down_under_libvirt(
    tiny_image: vm_images.VmImage, test_root: Path, cleanup: contextlib.ExitStack
) -> None:
    try:
        conn = libvirt.open(LIBVIRT_URI)
    except libvirt.libvirtError as e:
        pytest.fail(f"libvirtd is unreachable at {LIBVIRT_URI}: {e}")
    cleanup.callback(conn.close)

    name = f"somnus-test-tiny-{secrets.token_hex(4)}"
    vm_dir = test_root / name
    vm_dir.mkdir(mode=0o755)
    cleanup.callback(shutil.rmtree, vm_dir, True)
    overlay = vm_dir / "disk.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(tiny_image.disk), str(overlay)],
        check=True,
    )
    console_log = vm_dir / "console.log"
    port = free_port()

    dom = conn.defineXML(image_domain_xml(name, tiny_image, overlay, console_log,
                                         {"agent": (port, domain_xml.GUEST_PORTS["agent"])}, memory_mib=MEMORY_KIB // 1024))
    cleanup.callback(destroy_and_undefine, dom)
    started = time.monotonic()
    dom.create()

    assert _wait_until(lambda: store.GUEST_READY_LINE in read_or_empty(console_log), READY_TIMEOUT_S), (
        f"no {store.GUEST_READY_LINE!r} within {READY_TIMEOUT_S} s; console:\n{read_or_empty(console_log)}"
    )
    ready_s = time.monotonic() - started
    body = _poll_http(f"http://127.0.0.1:{port}/status", HTTP_TIMEOUT_S)
    http_s = time.monotonic() - started
    print(f"\nboot to ready line: {ready_s:.1f} s, to HTTP status: {http_s:.1f} s")
    assert body.strip() == "ok"

    dom.setMemoryFlags(BALLOON_KIB, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    balloon_started = time.monotonic()
    assert _wait_until(lambda: _live_current_memory_kib(dom) == BALLOON_KIB, BALLOON_TIMEOUT_S), (
        f"live currentMemory stayed {_live_current_memory_kib(dom)} KiB, wanted {BALLOON_KIB}"
    )
    print(f"balloon to {BALLOON_KIB} KiB took {time.monotonic() - balloon_started:.1f} s")

    dom.shutdown()
    shutdown_started = time.monotonic()
    assert _wait_until(lambda: dom.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF, SHUTDOWN_TIMEOUT_S), (
        f"still {dom.state()} {SHUTDOWN_TIMEOUT_S} s after shutdown(); console:\n{read_or_empty(console_log)}"
    )
    print(f"ACPI shutdown took {time.monotonic() - shutdown_started:.1f} s")


def _live_current_memory_kib(dom: libvirt.virDomain) -> int:
    return domain_xml.parse(dom.XMLDesc(0)).memory // 1024


def _poll_http(url: str, timeout_s: float) -> str:
    # No proxies: the request must go to 127.0.0.1 itself, whatever the environment says.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with opener.open(url, timeout=3) as response:
                return str(response.read().decode())
        except OSError as e:
            if time.monotonic() > deadline:
                raise AssertionError(f"GET {url} failed for {timeout_s} s: {e}") from e
            time.sleep(0.5)


def _wait_until(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()
