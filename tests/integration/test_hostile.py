"""Hostile manifests against the real libvirtd and dockerd: `somnus apply` refuses every case
of testkit/hostile_cases.py with exit 2 at its line, and nothing is created.

Also the container that a plain apply makes, as dockerd reports it: nothing privileged,
no host paths, no published ports, and env and command exactly as declared.
"""

from __future__ import annotations

import pytest

from somnus_reconciler import settings as settings_mod
from testkit import hostile_cases
from tests.integration.conftest import Workspace, container_doc

pytestmark = pytest.mark.integration

SHELL_TEXT = "$(touch /tmp/pwned); `id` && echo ${HOME} | tee /x; 'q' \"dq\""


def _made_by(ws: Workspace) -> list[str]:
    """Every domain, container and VM directory named with the test's prefix (every case
    names its objects with it; other tests may run alongside, so nothing else counts)."""
    vms_dir = settings_mod.resolve().vms_dir
    names = [f"domain {dom.name()}" for dom in ws.conn.listAllDomains(0)]
    names += [f"container {c.attrs['Names'][0].lstrip('/')}" for c in ws.docker.containers.list(all=True, sparse=True)]
    names += [f"VM directory {p}" for p in vms_dir.iterdir()] if vms_dir.is_dir() else []
    return [name for name in names if name.split()[-1].split("/")[-1].startswith(ws.prefix)]


def test_apply_refuses_every_hostile_case_and_creates_nothing(workspace: Workspace) -> None:
    ws = workspace
    missed: list[str] = []
    for index, case in enumerate(hostile_cases.CASES):
        manifest = hostile_cases.materialize(case, ws.root / f"case-{index}", prefix=ws.prefix)
        result = ws.somnus("apply", str(manifest.parent), "-y")
        if result.returncode != 2 or hostile_cases.refusal_in(case, manifest, result.stderr) is None:
            missed.append(f"{case.description}: exit {result.returncode}\n{result.stdout}{result.stderr}")

    assert missed == []
    assert _made_by(ws) == []
    assert not (ws.state_dir / "keys").exists()


def test_a_declared_container_runs_unprivileged_with_env_and_command_as_given(workspace: Workspace) -> None:
    ws = workspace
    doc = container_doc(ws.name("box"), env={"EVIL": SHELL_TEXT})
    doc["spec"]["command"] = ["sleep", "infinity", SHELL_TEXT]
    ws.write("box.yaml", doc)
    ws.somnus("apply", str(ws.manifests), "-y", check_exit=0)

    inspected = ws.docker.api.inspect_container(ws.name("box"))
    host = inspected["HostConfig"]
    assert host["Privileged"] is False
    assert host["NetworkMode"] == "none"
    assert not host.get("Binds") and not host.get("Mounts") and not host.get("Devices")
    assert not host.get("CapAdd") and not host.get("SecurityOpt")
    assert not host.get("PortBindings") and host.get("PublishAllPorts") is False
    assert host.get("PidMode", "") == "" and host.get("IpcMode") != "host"
    assert inspected["Mounts"] == []
    assert inspected["Config"]["Cmd"] == ["sleep", "infinity", SHELL_TEXT]
    assert f"EVIL={SHELL_TEXT}" in inspected["Config"]["Env"]
    assert inspected["NetworkSettings"]["Ports"] in ({}, None)
