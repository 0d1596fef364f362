"""base-tools and research-browser, as they ship, in a real debian-12 VM (QEMU TCG).

One VM for the module, made and changed only by `somnus apply` of capability_packs/
as it ships beside this test's manifests; each pack step between a libvirt snapshot
and its record. The guest reaches the Debian mirror and PyPI through QEMU user-mode
networking; the test reaches the guest through `somnus ssh` on its 127.0.0.1 forward.
In file order (the module's VM is shared):
- base-tools alone: the VM is made, boots and gets the pack; a second apply plans
  nothing;
- research-browser added: it installs, both packs' apt packages are there, their
  verify commands pass in the guest and `somnus describe` lists them as verified;
  its check wrote a PNG screenshot of a page served inside the guest; a second apply
  plans nothing;
- research-browser no longer declared: its apt packages are gone, its verify fails,
  and base-tools, still declared, still passes its own.
The converge, no-op and removal times are printed, per step from the journal.

research-browser comes with two test companions, host-trust and pypi-hosts
(testkit/shipped_packs.py says why).
"""

from __future__ import annotations

import base64
import struct
import subprocess
import time
import uuid
from collections.abc import Iterator

import docker
import libvirt
import pytest

from testkit import shipped_packs
from testkit.shipped_packs import CAPABILITY_PACKS, VM_BROWSER_PACKS, shipped_spec
from tests.integration.conftest import Workspace, remove_objects
from tests.integration.test_shipped_packs import Applied

pytestmark = pytest.mark.integration

APPLY_TIMEOUT_S = 3600  # research-browser under TCG: chromium's packages, Playwright, a headless page
CHECK_TIMEOUT_S = 900  # one run of somnus-browser-check in the guest (chromium under TCG)
BASE_ONLY = ["base-tools"]
WITH_BROWSER = VM_BROWSER_PACKS
WITHOUT_BROWSER = VM_BROWSER_PACKS[:-1]
SCREENSHOT = "/tmp/somnus-browser-check.png"  # where research-browser's verify writes it
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def vm_address(ws: Workspace) -> str:
    return f"vm/{ws.name('vm')}"


def write(ws: Workspace, packs: list[str]) -> None:
    ws.write("ws.yaml", shipped_packs.host_trust_pack(ws.manifests), shipped_packs.pypi_hosts_pack(ws.manifests),
             shipped_packs.vm_doc(ws.name("vm"), packs))


def apply(ws: Workspace, packs: list[str]) -> Applied:
    write(ws, packs)
    began, start = time.time(), time.monotonic()
    result = ws.somnus("apply", str(CAPABILITY_PACKS), str(ws.manifests), "-y", timeout_s=APPLY_TIMEOUT_S)
    return Applied(ws, result, began, time.monotonic() - start)


def steps(applied: Applied) -> list[shipped_packs.Step]:
    """The VM's steps in `applied`, from the journal."""
    return shipped_packs.steps_since(applied.ws.state_dir, vm_address(applied.ws), applied.began)


def in_guest(ws: Workspace, command: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    """`command` run by root's shell in the VM, through `somnus ssh` (as a pack's verify runs it)."""
    return ws.somnus("ssh", vm_address(ws), "--", command, timeout_s=timeout_s)


def installed(ws: Workspace, packages: list[str]) -> list[str]:
    """Which of `packages` dpkg has installed in the VM, in the order given."""
    query = in_guest(ws, "dpkg-query -W -f '${Package} ${Status}\\n' " + " ".join(packages))
    present = {line.split()[0] for line in query.stdout.splitlines() if line.endswith(" install ok installed")}
    return [package for package in packages if package in present]


def failing_checks(ws: Workspace, commands: list[str]) -> list[str]:
    return [command for command in commands if in_guest(ws, command, CHECK_TIMEOUT_S).returncode != 0]


def described_packs(ws: Workspace) -> list[str]:
    """The packs `somnus describe` lists as verified, in its order."""
    described = ws.somnus("describe", vm_address(ws), check_exit=0).stdout
    listed = described.split("\npacks:\n", 1)[1].split("events:\n", 1)[0] if "\npacks:\n" in described else ""
    return [line.split()[0] for line in listed.splitlines()
            if len(line.split()) > 2 and line.split()[1] == "verified"]


def report(capsys: pytest.CaptureFixture[str], title: str, applied: Applied) -> None:
    with capsys.disabled():
        print(f"\n{title}: {applied.seconds:.1f} s")
        for step in steps(applied):
            print(f"  {step.action:<32} {step.outcome:<8} {step.seconds:7.1f} s")


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory, libvirt_conn: libvirt.virConnect,
       docker_client: docker.DockerClient) -> Iterator[Workspace]:
    workspace = Workspace(tmp_path_factory.mktemp("shipped-packs-vm"), f"it-{uuid.uuid4().hex[:6]}",
                          libvirt_conn, docker_client)
    workspace.somnus("image", "build", "debian-12", check_exit=0, timeout_s=1800)  # cached by recipe
    try:
        yield workspace
    finally:
        remove_objects(workspace)


@pytest.fixture(scope="module")
def base_converged(ws: Workspace) -> Applied:
    """The VM made, with base-tools alone (the first apply)."""
    return apply(ws, BASE_ONLY)


@pytest.fixture(scope="module")
def browser_converged(base_converged: Applied) -> Applied:
    """research-browser (with its companions) added to the VM."""
    return apply(base_converged.ws, WITH_BROWSER)


@pytest.fixture(scope="module")
def browser_removed(browser_converged: Applied) -> Applied:
    """research-browser no longer declared; base-tools and the companions still are."""
    return apply(browser_converged.ws, WITHOUT_BROWSER)


def assert_no_op(ws: Workspace, packs: list[str], capsys: pytest.CaptureFixture[str], title: str) -> None:
    ws.somnus("diff", str(CAPABILITY_PACKS), str(ws.manifests), check_exit=0)
    again = apply(ws, packs)
    assert again.result.returncode == 0, f"{again.result.stdout}\n{again.result.stderr}"
    assert "No changes" in again.result.stdout and "ansible" not in again.result.stdout.lower()
    runs = ws.state_dir / "runs"
    assert not runs.exists() or not any(runs.iterdir()), "a pack run was started"
    assert steps(again) == []
    report(capsys, title, again)


# -- base-tools alone -------------------------------------------------------------

def test_the_first_apply_makes_the_vm_and_installs_base_tools(
        base_converged: Applied, capsys: pytest.CaptureFixture[str]) -> None:
    result = base_converged.result
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert [(s.action, s.outcome) for s in steps(base_converged)] == [
        ("create", "ok"), ("pack install base-tools", "ok")]
    assert described_packs(base_converged.ws) == BASE_ONLY
    report(capsys, "converge: the VM from nothing (boot included) with base-tools", base_converged)


def test_a_second_apply_of_base_tools_is_a_no_op(
        base_converged: Applied, capsys: pytest.CaptureFixture[str]) -> None:
    assert_no_op(base_converged.ws, BASE_ONLY, capsys, "no-op: base-tools")


# -- research-browser added ---------------------------------------------------------

def test_adding_research_browser_installs_it_after_its_companions(
        browser_converged: Applied, capsys: pytest.CaptureFixture[str]) -> None:
    result = browser_converged.result
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert [(s.action, s.outcome) for s in steps(browser_converged)] == [
        (f"pack install {pack}", "ok") for pack in WITH_BROWSER[1:]]
    # Each step began with a libvirt snapshot of the running VM.
    snapshots = browser_converged.ws.somnus("snapshots", browser_converged.ws.name("vm"), check_exit=0).stdout
    assert all(f"somnus-pack-{pack}-" in snapshots for pack in WITH_BROWSER), snapshots
    report(capsys, "converge: research-browser added (with host-trust and pypi-hosts)", browser_converged)


@pytest.mark.parametrize("pack", ["base-tools", "research-browser"])
def test_each_pack_is_installed_and_verified_in_the_vm(browser_converged: Applied, pack: str) -> None:
    ws, spec = browser_converged.ws, shipped_spec(pack)
    assert installed(ws, spec["packages"]["apt"]) == spec["packages"]["apt"]
    assert failing_checks(ws, spec["verify"]) == []
    assert described_packs(ws) == WITH_BROWSER


def test_research_browser_screenshots_a_page_served_inside_the_vm(browser_converged: Applied) -> None:
    ws = browser_converged.ws
    # The pack's verify ran the check once, during the install, and left its screenshot.
    signature = in_guest(ws, f"head -c 8 {SCREENSHOT} | od -An -tx1")
    assert bytes.fromhex(signature.stdout) == PNG_SIGNATURE, signature
    check = in_guest(ws, "somnus-browser-check /tmp/by-the-test.png", CHECK_TIMEOUT_S)
    assert check.returncode == 0, f"{check.stdout}\n{check.stderr}"
    assert "title: Somnus research browser\ntext: chromium renders this page\n" in check.stdout
    png = base64.b64decode(in_guest(ws, "base64 -w0 /tmp/by-the-test.png").stdout)
    assert png[:8] == PNG_SIGNATURE and png[12:16] == b"IHDR"
    assert struct.unpack(">II", png[16:24]) == (1280, 720)  # Playwright's default viewport
    assert len(png) > 2000, "a page with a heading and a line of text is more than a blank image"


def test_a_second_apply_with_both_packs_is_a_no_op(
        browser_converged: Applied, capsys: pytest.CaptureFixture[str]) -> None:
    assert_no_op(browser_converged.ws, WITH_BROWSER, capsys, "no-op: base-tools and research-browser")


# -- research-browser removed ---------------------------------------------------------

def test_removing_research_browser_uninstalls_it_and_its_verify_fails(
        browser_removed: Applied, capsys: pytest.CaptureFixture[str]) -> None:
    ws, result = browser_removed.ws, browser_removed.result
    report(capsys, "removal: research-browser", browser_removed)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert [(s.action, s.outcome) for s in steps(browser_removed)] == [("pack remove research-browser", "ok")]
    spec = shipped_spec("research-browser")
    # Removed, not purged: dpkg still knows chromium (`dpkg -s` exits 0, "deinstall ok
    # config-files"), but it is not installed and its binary is gone.
    assert in_guest(ws, "test -e /usr/bin/chromium").returncode == 1
    # Its own packages go; python3-venv, which base-tools declares too, is that pack's to keep.
    its_own = [p for p in spec["packages"]["apt"] if p not in shipped_spec("base-tools")["packages"]["apt"]]
    assert "chromium" in its_own and installed(ws, its_own) == []
    assert failing_checks(ws, spec["verify"]) == spec["verify"]
    assert described_packs(ws) == WITHOUT_BROWSER
    ws.somnus("diff", str(CAPABILITY_PACKS), str(ws.manifests), check_exit=0)


def test_removing_research_browser_leaves_base_tools_working(browser_removed: Applied) -> None:
    ws, spec = browser_removed.ws, shipped_spec("base-tools")
    assert installed(ws, spec["packages"]["apt"]) == spec["packages"]["apt"]
    assert failing_checks(ws, spec["verify"]) == []
