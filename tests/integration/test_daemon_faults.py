"""Daemon faults, for real: dockerd or libvirtd down before an apply (the reachable half
converges, the other half is a clear error, exit 2, nothing half-done), and stopped then
started again in the middle of an apply (the step's temporary failure is retried with
backoff and the apply converges). Each daemon is started again after its test
(tests/integration/daemons.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from testkit.output_lines import OutputLines
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


@contextlib.contextmanager
def paused(proc: subprocess.Popen[str]) -> Iterator[None]:
    """The apply (the test's own child, by its pid) stopped with SIGSTOP inside the block:
    it takes no step while a daemon goes down or comes back."""
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)


def apply_with_a_fault(ws: Workspace, daemon: Daemon, when_line: str,
                       retried: str) -> subprocess.CompletedProcess[str]:
    """`somnus apply`, with `daemon` down from the moment the apply prints `when_line` until a
    step whose line starts with `retried` has met the outage and said it will retry.

    Driven by what the apply prints, never by a clock: the apply is paused while the
    daemon stops (so no step runs against a daemon half down) and while it starts again
    (so a daemon slow to come back on a busy machine never outlasts the retry's backoff);
    a slow machine only makes the test slower. One object at a time (`--parallelism 1`),
    in plan order, VMs then containers: which steps meet the outage is known.
    """
    env = dict(os.environ, SOMNUS_STATE_DIR=str(ws.state_dir), SOMNUS_SHUTDOWN_TIMEOUT="15", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "somnus_reconciler", "apply", str(ws.manifests), "-y", "--parallelism", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    out, err = OutputLines(proc.stdout, str), OutputLines(proc.stderr, str)
    try:
        fault_at = out.wait_for(lambda line: line.startswith(when_line), 300)
        assert fault_at is not None, f"never saw {when_line!r}: {''.join(out.items)}{''.join(err.items)}"
        try:
            with paused(proc):
                daemon.stop()
            retry_at = out.wait_for(lambda line: line.startswith(retried) and RETRY_LINE in line, 300, after=fault_at)
            assert retry_at is not None, (f"no {retried}* step met the {daemon.name} outage and said it would retry:\n"
                                          f"{''.join(out.items)}{''.join(err.items)}")
        finally:
            with paused(proc):
                daemon.restart()
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.join(timeout_s=10)
        err.join(timeout_s=10)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "".join(out.items), "".join(err.items))


# dockerd goes down once the last VM's step starts, so the containers' steps after it meet
# the outage; libvirtd goes down once the first VM's step starts.
@pytest.mark.parametrize(("daemon", "when", "retried"), [(DOCKERD, "vm/{vm2}: create", "container/{box}:"),
                                                         (LIBVIRTD, "vm/{vm}: create", "vm/{vm}:")],
                         ids=["dockerd", "libvirtd"])
def test_a_daemon_restarted_mid_apply_is_retried_and_the_apply_converges(
        workspace: Workspace, daemon: Daemon, when: str, retried: str) -> None:
    ws = workspace
    names = {suffix: ws.name(suffix) for suffix in ("vm", "vm2", "box", "box2")}
    ws.write("ws.yaml", vm_doc(names["vm"]), vm_doc(names["vm2"]),
             container_doc(names["box"]), container_doc(names["box2"]))
    result = apply_with_a_fault(ws, daemon, when.format(**names), retried.format(**names))
    assert result.returncode == 0, result.stdout + result.stderr
    retries = [line for line in result.stdout.splitlines() if RETRY_LINE in line]
    assert retries and retries[0].startswith(retried.format(**names)), result.stdout  # the outage's step retried
    assert f"{retried.format(**names)} done" in result.stdout, result.stdout  # ... and then did it
    ws.somnus("diff", str(ws.manifests), check_exit=0)
    state = ws.get_json()
    assert all(state[f"{kind}/{ws.name(n)}"]["state"] == "running"
               for kind, n in (("vm", "vm"), ("vm", "vm2"), ("container", "box"), ("container", "box2")))
