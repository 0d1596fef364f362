"""Guests prove who they are before anything goes to them (issue 17), under the real
libvirtd with a debian-12 VM and the real CLI.

Impostors stand where the VM's forwards are: an SSH server with a host key of its own
(testkit/impostors.py, paramiko) and a plain HTTP server that keeps every byte it
receives. The VM's mark is pointed at them, as when another local process holds the
ports somnus reaches a guest through (a stopped VM's ports taken, a guest gone
between observation and use). Then `get`, `describe`, `apply` with a pack change and
`somnus ssh` each refuse, naming the VM (and the port); the HTTP impostor received no
token and the SSH impostor no login and no command.
"""

from __future__ import annotations

import re

import libvirt
import pytest

from somnus_reconciler.providers import domain_xml, guest_access
from testkit import impostors
from tests.integration.conftest import Workspace

pytestmark = pytest.mark.integration


def _vm_doc(ws: Workspace, packs: list[str]) -> dict[str, object]:
    return {"apiVersion": "somnus/v1", "kind": "VirtualMachine", "metadata": {"name": ws.name("vm")},
            "spec": {"resources": {"vcpus": 1, "memory": "1Gi"}, "image": "debian-12", "diskSize": "4Gi",
                     "running": True, "packs": packs}}


_PACK = {"apiVersion": "somnus/v1", "kind": "CapabilityPack", "metadata": {"name": "tools"},
         "spec": {"packages": {"apt": ["jq"]}}}


def _point_forwards_at(ws: Workspace, ports: dict[str, int]) -> None:
    """The mark's forwards (what somnus reads) to `ports`, live and persistent; QEMU keeps its own."""
    dom = ws.domain("vm")
    mark = domain_xml.mark_with_records(dom.XMLDesc(0))
    assert mark is not None
    for name, port in ports.items():
        mark, count = re.subn(rf'(<forward name="{name}" host-port=")\d+', rf"\g<1>{port}", mark)
        assert count == 1, mark
    dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, mark, "somnus", domain_xml.SOMNUS_NS,
                    libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG)


def test_impostors_on_a_vms_ports_get_no_token_no_login_and_no_command(workspace: Workspace) -> None:
    ws, name = workspace, workspace.name("vm")
    ws.somnus("image", "build", "debian-12", check_exit=0)
    ws.write("ws.yaml", _vm_doc(ws, []), _PACK)
    ws.somnus("apply", str(ws.manifests), "-y", check_exit=0)
    token = guest_access.read_agent_token(ws.state_dir, name).encode()

    with impostors.ssh_impostor() as sshd, impostors.http_impostor() as http:
        _point_forwards_at(ws, {"ssh": sshd.port, "agent": http.port})

        row = ws.get_json()[f"vm/{name}"]
        connected = next(c for c in row["conditions"] if c["type"] == "AgentConnected")
        assert connected["status"] == "False" and f"vm/{name}: what answers on 127.0.0.1:{http.port}" in \
            connected["message"], connected
        described = ws.somnus("describe", f"vm/{name}", check_exit=0).stdout
        assert f"vm/{name}: what answers on 127.0.0.1:{http.port} did not prove" in described, described

        ws.write("ws.yaml", _vm_doc(ws, ["tools"]), _PACK)
        applied = ws.somnus("apply", str(ws.manifests), "-y", check_exit=1)
        refusal = f"vm/{name}: the SSH server on 127.0.0.1:{sshd.port} did not prove it is vm/{name}"
        assert refusal in applied.stdout + applied.stderr, applied

        shell = ws.somnus("ssh", f"vm/{name}", "touch", "/tmp/impostor-was-here", check_exit=2)
        assert refusal in shell.stderr, shell

    assert http.received, "the client never reached the HTTP impostor"
    assert token not in http.received and b"Authorization" not in http.received
    assert sshd.log == []  # no login, no channel, no command
