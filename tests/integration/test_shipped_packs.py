"""The shipped capability packs (capability_packs/) proven in real guests.

One `somnus/base:bookworm` container per pack, with `network: host` (the only way a
container reaches the Debian mirror and PyPI here), all five converged by one
`somnus apply --parallelism 5` of capability_packs/ as it ships: each pack with its
`requires`, through ansible-runner, each step between a snapshot and its record.
Then, in file order (the module's containers are shared):
- each pack's apt packages are installed, its verify commands pass in its guest, and
  `somnus describe` lists it (and what it requires) as verified;
- research-browser opens a page served inside its guest in headless chromium,
  reads its title and text and writes a PNG;
- a second apply plans nothing and starts no Ansible;
- declaring no packs removes them: their apt packages are gone, their verify fails.
The converge, no-op and removal times are printed (per pack from the journal's steps).
The packs and research-browser's `host-trust` companion: testkit/shipped_packs.py.
"""

from __future__ import annotations

import re
import struct
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import libvirt
import pytest

from somnus_reconciler.images import container_images
from somnus_reconciler.providers.docker_provider import DockerProvider
from testkit import shipped_packs
from testkit.shipped_packs import CAPABILITY_PACKS, SHIPPED, guest_packs, shipped_spec
from tests.integration.conftest import Workspace, remove_objects

pytestmark = pytest.mark.integration
APPLY_TIMEOUT_S = 3600  # all five from nothing took 5.5 to 6.5 minutes here (see the printed times)


@dataclass(frozen=True)
class Applied:
    """One `somnus apply` of the module's manifests, and when it began."""

    ws: Workspace
    result: subprocess.CompletedProcess[str]
    began: float  # unix time
    seconds: float


def write(ws: Workspace, *, with_packs: bool) -> None:
    ws.write("ws.yaml", shipped_packs.host_trust_pack(ws.manifests),
             *(shipped_packs.container_doc(ws.name(pack), guest_packs(pack) if with_packs else [])
               for pack in SHIPPED))


def apply(ws: Workspace) -> Applied:
    began, start = time.time(), time.monotonic()
    result = ws.somnus("apply", str(CAPABILITY_PACKS), str(ws.manifests), "-y", "--parallelism", str(len(SHIPPED)),
                       timeout_s=APPLY_TIMEOUT_S)
    return Applied(ws, result, began, time.monotonic() - start)


@pytest.fixture(scope="module")
def converged(tmp_path_factory: pytest.TempPathFactory, libvirt_conn: libvirt.virConnect,
              docker_client: docker.DockerClient) -> Iterator[Applied]:
    """The five containers, each with its pack installed (the first apply)."""
    provider = DockerProvider()
    try:
        container_images.build_container_image(shipped_packs.IMAGE, provider)  # cached by recipe
    finally:
        provider.close()
    ws = Workspace(tmp_path_factory.mktemp("shipped-packs"), f"it-{uuid.uuid4().hex[:6]}", libvirt_conn,
                   docker_client)
    try:
        write(ws, with_packs=True)
        yield apply(ws)
    finally:
        remove_objects(ws)


@pytest.fixture(scope="module")
def removed(converged: Applied) -> Applied:
    """The same containers once their packs are no longer declared (the last apply)."""
    write(converged.ws, with_packs=False)
    return apply(converged.ws)


def install_order(pack: str) -> list[str]:
    return ["base-tools", *(p for p in guest_packs(pack) if p != "base-tools")]


def print_lines(capsys: pytest.CaptureFixture[str], title: str, lines: list[str]) -> None:
    with capsys.disabled():
        print(f"\n{title}")
        for line in lines:
            print(f"  {line}")


# -- install ----------------------------------------------------------------------

def test_one_parallel_apply_installs_every_pack_with_its_requires(
        converged: Applied, capsys: pytest.CaptureFixture[str]) -> None:
    ws, result = converged.ws, converged.result
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    steps = {pack: shipped_packs.steps_since(ws.state_dir, f"container/{ws.name(pack)}", converged.began)
             for pack in SHIPPED}
    for pack in SHIPPED:
        assert [(s.action, s.outcome) for s in steps[pack]] == [
            ("create", "ok"), *((f"pack install {p}", "ok") for p in install_order(pack))]
    # One apply, five objects at once: every container's steps overlap every other's.
    assert (max(min(s.started_at for s in done) for done in steps.values())
            < min(max(s.ended_at for s in done) for done in steps.values()))
    print_lines(capsys, f"converge from nothing, 5 containers at once: {converged.seconds:.1f} s; per pack:",
                [shipped_packs.converge_line(pack, steps[pack]) for pack in SHIPPED])


@pytest.mark.parametrize("pack", SHIPPED)
def test_each_pack_is_installed_and_verified_in_its_guest(converged: Applied, pack: str) -> None:
    ws, name, spec = converged.ws, converged.ws.name(pack), shipped_spec(pack)
    assert shipped_packs.installed(name, spec["packages"]["apt"]) == spec["packages"]["apt"]
    assert shipped_packs.failing_checks(name, spec["verify"]) == []
    described = ws.somnus("describe", f"container/{name}", check_exit=0).stdout
    assert "\npacks:\n" in described, described
    listed = described.split("\npacks:\n", 1)[1].split("events:\n", 1)[0]
    names = re.findall(r"^  (\S+) +verified \d{4}-\d\d-\d\d \d\d:\d\d:\d\d  fingerprint [0-9a-f]{12}$", listed,
                       re.MULTILINE)
    assert names == install_order(pack), described


def test_research_browser_screenshots_a_page_served_inside_its_guest(converged: Applied, tmp_path: Path) -> None:
    name = converged.ws.name("research-browser")
    # The pack's verify already ran the check once, during the install.
    assert subprocess.run(["docker", "exec", name, "test", "-s", "/tmp/somnus-browser-check.png"],
                          timeout=60).returncode == 0
    check = subprocess.run(["docker", "exec", name, "somnus-browser-check", "/tmp/by-the-test.png"],
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stderr
    assert "title: Somnus research browser\ntext: chromium renders this page\n" in check.stdout
    subprocess.run(["docker", "cp", f"{name}:/tmp/by-the-test.png", str(tmp_path / "shot.png")], check=True,
                   timeout=60)
    png = (tmp_path / "shot.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    assert struct.unpack(">II", png[16:24]) == (1280, 720)  # Playwright's default viewport
    assert len(png) > 2000, "a page with a heading and a line of text is more than a blank image"


# -- no-op --------------------------------------------------------------------------

def test_a_second_apply_plans_nothing_and_starts_no_ansible(
        converged: Applied, capsys: pytest.CaptureFixture[str]) -> None:
    ws = converged.ws
    ws.somnus("diff", str(CAPABILITY_PACKS), str(ws.manifests), check_exit=0)
    again = apply(ws)
    assert again.result.returncode == 0, again.result.stderr
    assert "No changes" in again.result.stdout and "ansible" not in again.result.stdout.lower()
    runs = ws.state_dir / "runs"
    assert not runs.exists() or not any(runs.iterdir()), "a pack run was started"
    for pack in SHIPPED:
        assert shipped_packs.steps_since(ws.state_dir, f"container/{ws.name(pack)}", again.began) == []
    print_lines(capsys, f"no-op apply of the 5 containers: {again.seconds:.2f} s", [])


# -- removal ------------------------------------------------------------------------

def test_declaring_no_packs_removes_every_pack_in_reverse_order(
        removed: Applied, capsys: pytest.CaptureFixture[str]) -> None:
    ws, result = removed.ws, removed.result
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    lines = []
    for pack in SHIPPED:
        steps = shipped_packs.steps_since(ws.state_dir, f"container/{ws.name(pack)}", removed.began)
        assert [(s.action, s.outcome) for s in steps] == [
            (f"pack remove {p}", "ok") for p in reversed(install_order(pack))]
        lines.append(shipped_packs.converge_line(pack, steps))
    ws.somnus("diff", str(CAPABILITY_PACKS), str(ws.manifests), check_exit=0)
    print_lines(capsys, f"removal, 5 containers at once: {removed.seconds:.1f} s; per pack:", lines)


@pytest.mark.parametrize("pack", SHIPPED)
def test_a_removed_pack_leaves_none_of_its_packages_and_fails_its_verify(removed: Applied, pack: str) -> None:
    ws, name, spec = removed.ws, removed.ws.name(pack), shipped_spec(pack)
    assert shipped_packs.installed(name, spec["packages"]["apt"]) == []
    failing = shipped_packs.failing_checks(name, spec["verify"])
    assert failing, f"every verify command of {pack} still passes"
    assert "packs:" not in ws.somnus("describe", f"container/{name}", check_exit=0).stdout
