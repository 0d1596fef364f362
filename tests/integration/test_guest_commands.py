"""`somnus exec` and `somnus console` through the real CLI, against the real dockerd and libvirtd.

exec: a busybox container made by `somnus apply` runs a command through dockerd's exec
API; its stdout and stderr come back apart, the first line before the command ends, and
its exit code is `somnus exec`'s. A container somnus did not make and a managed one that
is stopped are refused (exit 2, naming it) and nothing runs in them.

console: a tiny-linux VM made by `somnus apply`. `somnus console vm/NAME` runs under a
pseudo-terminal (virsh refuses a console without one), attaches to the serial console,
and shows what the guest writes there: the line its init prints when the ACPI power
button is pressed. When the VM has stopped, the console ends and a new one is refused.
`somnus ssh` is tested with a debian-12 guest in test_guest_agent.py and
test_guest_identity.py.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import libvirt
import pytest

from testkit.output_lines import OutputLines
from tests.integration.conftest import Workspace, container_doc, vm_doc

pytestmark = pytest.mark.integration

BUSYBOX = "somnus/busybox:latest"
CONSOLE_TIMEOUT_S = 60.0


def _somnus_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "somnus_reconciler", *args]


def _env(ws: Workspace) -> dict[str, str]:
    return dict(os.environ, SOMNUS_STATE_DIR=str(ws.state_dir))


def _read_until(fd: int, wanted: bytes, timeout_s: float) -> bytes:
    """What the terminal's master `fd` gave until `wanted` appeared; AssertionError when it did not in time."""
    seen = b""
    deadline = time.monotonic() + timeout_s
    while wanted not in seen:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError(f"no {wanted!r} within {timeout_s:g} s; the terminal showed {seen!r}")
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: every process holding the terminal's other side has ended
            chunk = b""
        if not chunk:
            raise AssertionError(f"the terminal closed before {wanted!r}; it showed {seen!r}")
        seen += chunk
    return seen


def _unmarked_domain(name: str) -> str:
    """A domain without somnus's mark: what somnus did not create."""
    domain = ET.Element("domain", {"type": "qemu"})
    ET.SubElement(domain, "name").text = name
    ET.SubElement(domain, "memory", {"unit": "MiB"}).text = "64"
    ET.SubElement(ET.SubElement(domain, "os"), "type", {"arch": "x86_64", "machine": "pc"}).text = "hvm"
    return ET.tostring(domain, encoding="unicode")


def test_exec_runs_the_command_in_a_managed_container_streams_its_output_and_exits_with_its_code(
        workspace: Workspace) -> None:
    ws, name = workspace, workspace.name("box")
    ws.write("box.yaml", container_doc(name))
    ws.somnus("apply", str(ws.manifests), "-y", check_exit=0)

    ran = ws.somnus("exec", f"container/{name}", "--", "sh", "-c",
                    "echo out; echo err >&2; touch /tmp/made-by-exec; exit 7", check_exit=7)
    assert (ran.stdout, ran.stderr) == ("out\n", "err\n")
    assert ws.docker.containers.get(name).exec_run(["test", "-e", "/tmp/made-by-exec"]).exit_code == 0
    missing = ws.somnus("exec", f"container/{name}", "--", "no-such-program", check_exit=126)
    assert "no-such-program" in missing.stdout + missing.stderr

    # The command prints its first line, then waits for a gate that the test opens only once
    # that line has come through: it cannot end before, however slow or busy the machine.
    gate = "/tmp/somnus-test-gate"
    started = time.monotonic()
    following = subprocess.Popen(_somnus_argv("exec", f"container/{name}", "--", "sh", "-c",
                                              f"echo first; i=0; until [ -e {gate} ] || [ $i -ge 3000 ]; "
                                              "do sleep 0.1; i=$((i+1)); done; echo second"),
                                 stdout=subprocess.PIPE, text=True, env=_env(ws))
    assert following.stdout is not None
    printed = OutputLines(following.stdout, str)
    try:
        first = printed.wait_for(lambda line: True, CONSOLE_TIMEOUT_S)
        first_s = time.monotonic() - started
        assert first is not None and printed.items[first] == "first\n", f"the first line did not come: {printed.items}"
    finally:
        ws.docker.containers.get(name).exec_run(["touch", gate])
    assert following.wait(timeout=30) == 0
    printed.join(timeout_s=10)
    assert printed.items == ["first\n", "second\n"]
    print(f"\nfirst line after {first_s:.2f} s, the command's end after {time.monotonic() - started:.2f} s")


def test_exec_refuses_a_container_somnus_did_not_make_or_that_is_stopped_and_runs_nothing(
        workspace: Workspace) -> None:
    ws = workspace
    foreign = ws.docker.containers.run(BUSYBOX, ["sleep", "infinity"], name=ws.name("foreign"), detach=True,
                                       network_mode="none", init=True)
    refused = ws.somnus("exec", f"container/{foreign.name}", "--", "touch", "/tmp/must-not-exist", check_exit=2)
    assert f"container/{foreign.name} not found among the containers somnus manages" in refused.stderr, refused
    assert foreign.exec_run(["test", "-e", "/tmp/must-not-exist"]).exit_code == 1

    name = ws.name("stopped")
    ws.write("box.yaml", container_doc(name))
    ws.somnus("apply", str(ws.manifests), "-y", check_exit=0)
    ws.docker.containers.get(name).stop(timeout=5)
    stopped = ws.somnus("exec", f"container/{name}", "--", "true", check_exit=2)
    assert f"container/{name} is not running (it is exited)" in stopped.stderr, stopped

    wrong_kind = ws.somnus("exec", f"vm/{name}", "--", "true", check_exit=2)
    assert "give container/NAME" in wrong_kind.stderr, wrong_kind


def test_console_attaches_to_the_serial_console_of_a_running_vm_and_refuses_one_that_is_not(
        workspace: Workspace) -> None:
    ws, name = workspace, workspace.name("vm")
    ws.write("vm.yaml", vm_doc(name))
    ws.somnus("apply", str(ws.manifests), "-y", check_exit=0)
    foreign = ws.conn.defineXML(_unmarked_domain(ws.name("foreign")))  # defined, never started
    unmanaged = ws.somnus("console", f"vm/{foreign.name()}", check_exit=2)
    assert f"vm/{foreign.name()} not found among the VMs somnus manages" in unmanaged.stderr, unmanaged
    no_terminal = subprocess.run(_somnus_argv("console", f"vm/{name}"), stdin=subprocess.DEVNULL,
                                 capture_output=True, text=True, env=_env(ws), timeout=60)
    assert no_terminal.returncode == 2 and "a console needs a terminal" in no_terminal.stderr, no_terminal

    master, slave = pty.openpty()
    started = time.monotonic()
    session = subprocess.Popen(_somnus_argv("console", f"vm/{name}"), stdin=slave, stdout=slave, stderr=slave,
                               env=_env(ws), start_new_session=True)
    os.close(slave)
    try:
        attached = _read_until(master, b"Escape character is ^]", CONSOLE_TIMEOUT_S)
        assert f"Connected to domain '{name}'".encode() in attached
        attached_s = time.monotonic() - started
        ws.domain("vm").shutdown()  # the ACPI power button: the guest's init says so on its console
        _read_until(master, b"somnus-guest: power button pressed, powering off", CONSOLE_TIMEOUT_S)
        code = session.wait(timeout=CONSOLE_TIMEOUT_S)  # the console ends with the VM
    finally:
        if session.poll() is None:
            session.kill()
            session.wait()
        os.close(master)
    print(f"\nconsole attached after {attached_s:.2f} s; it ended with the VM after {time.monotonic() - started:.2f} s")
    assert code == 0
    assert ws.domain("vm").state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
    stopped = ws.somnus("console", f"vm/{name}", check_exit=2)
    assert f"vm/{name} is not running" in stopped.stderr, stopped
