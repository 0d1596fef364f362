"""Daemon faults, for real: dockerd or libvirtd down before an apply (the reachable half
converges, the other half is a clear error, exit 2, nothing half-done), and stopped then
started again in the middle of an apply (the step's temporary failure is retried with
backoff and the apply converges). Each daemon is started again after its test
(tests/integration/daemons.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from tests.integration.conftest import Workspace, container_doc, vm_doc
from tests.integration.daemons import DOCKERD, LIBVIRTD, Daemon, stopped

pytestmark = pytest.mark.integration


def test_with_dockerd_down_vms_converge_and_containers_are_an_error(workspace: Workspace) -> None:
    ws = workspace
    ws.write("ws.yaml", vm_doc(ws.name("vm")), container_doc(ws.name("box")))
    with stopped(DOCKERD):
        half = ws.somnus("apply", str(ws.manifests), "-y", check_exit=2)
        assert "dockerd" in half.stderr and "left out" in half.stderr
        assert ws.domain("vm").isActive()
    converged = ws.somnus("apply", str(ws.manifests), "-y", check_exit=0)
    assert f"container/{ws.name('box')}: create" in converged.stdout
    assert f"vm/{ws.name('vm')}" not in converged.stdout  # done already, not done twice
    ws.somnus("diff", str(ws.manifests), check_exit=0)


def test_with_libvirtd_down_containers_converge_and_vms_are_an_error(workspace: Workspace) -> None:
    ws = workspace
    ws.write("ws.yaml", vm_doc(ws.name("vm")), container_doc(ws.name("box")))
    with stopped(LIBVIRTD):
        half = ws.somnus("apply", str(ws.manifests), "-y", check_exit=2)
        assert "libvirt" in half.stderr and "left out" in half.stderr
        assert ws.docker.api.inspect_container(ws.name("box"))["State"]["Running"]
    ws.somnus("apply", str(ws.manifests), "-y", check_exit=0)
    ws.somnus("diff", str(ws.manifests), check_exit=0)


RETRY_LINE = "retrying in"  # what the apply prints when a step's try failed and will be tried again


def apply_with_a_fault(ws: Workspace, daemon: Daemon, when_line: str) -> subprocess.CompletedProcess[str]:
    """`somnus apply`, with `daemon` stopped once `when_line` is printed and started again
    once the apply has printed a retry: driven by what the apply says, not by a clock, so a
    slow machine only makes it slower."""
    env = dict(os.environ, SOMNUS_STATE_DIR=str(ws.state_dir), SOMNUS_SHUTDOWN_TIMEOUT="15", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "somnus_reconciler", "apply", str(ws.manifests), "-y"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    fault, retried, ended = threading.Event(), threading.Event(), threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if when_line in line:
                fault.set()
            if RETRY_LINE in line and fault.is_set():
                retried.set()
        ended.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert fault.wait(300), f"never saw {when_line!r}: {''.join(lines)}"
    with stopped(daemon):
        deadline = time.monotonic() + 300
        while not (retried.is_set() or ended.is_set()) and time.monotonic() < deadline:
            retried.wait(0.5)
    proc.wait(timeout=600)
    reader.join(timeout=10)
    assert proc.stderr is not None
    return subprocess.CompletedProcess(proc.args, proc.returncode, "".join(lines), proc.stderr.read())


# VM steps run before container steps. dockerd goes down once the last VM's step starts and
# stays down until a container step has met it and said it will retry; libvirtd goes down
# once the first VM's step starts and stays down until that step says it will retry.
@pytest.mark.parametrize(("daemon", "when"), [(DOCKERD, "vm2"), (LIBVIRTD, "vm")], ids=["dockerd", "libvirtd"])
def test_a_daemon_restarted_mid_apply_is_retried_and_the_apply_converges(
        workspace: Workspace, daemon: Daemon, when: str) -> None:
    ws = workspace
    ws.write("ws.yaml", vm_doc(ws.name("vm")), vm_doc(ws.name("vm2")),
             container_doc(ws.name("box")), container_doc(ws.name("box2")))
    result = apply_with_a_fault(ws, daemon, f"vm/{ws.name(when)}: create")
    assert result.returncode == 0, result.stdout + result.stderr
    assert RETRY_LINE in result.stdout, result.stdout  # the temporary failure was retried
    ws.somnus("diff", str(ws.manifests), check_exit=0)
    state = ws.get_json()
    assert all(state[f"{kind}/{ws.name(n)}"]["state"] == "running"
               for kind, n in (("vm", "vm"), ("vm", "vm2"), ("container", "box"), ("container", "box2")))
