"""Container volumes and backups through the CLI, against the real dockerd (issue 12): a
named volume's data survives a recreate; `somnus backup container/NAME` copies the
committed image and the volume out of dockerd; `restore` brings both back. A prune
takes a backup first, and `restore` brings the pruned container back."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.integration.conftest import Workspace, container_doc

pytestmark = pytest.mark.integration


def _exec(ws: Workspace, *command: str) -> str:
    return subprocess.run(["docker", "exec", ws.name("box"), *command], check=True, capture_output=True,
                          text=True).stdout


def _box(ws: Workspace, memory: str) -> dict[str, object]:
    doc = container_doc(ws.name("box"), memory=memory)
    doc["spec"]["volumes"] = [{"name": "data", "mountPath": "/data"}]  # type: ignore[index]
    return doc


def test_volume_data_survives_a_recreate_and_a_backup_brings_image_and_volume_back(workspace: Workspace) -> None:
    ws = workspace
    address = f"container/{ws.name('box')}"
    ws.write("ws.yaml", _box(ws, "64Mi"))
    ws.somnus("apply", str(ws.manifests), "-y", check_exit=0)
    _exec(ws, "sh", "-c", "echo in-volume > /data/kept")

    ws.write("ws.yaml", _box(ws, "96Mi"))  # a new spec: the container is made anew
    ws.somnus("apply", str(ws.manifests), "-y", check_exit=0)
    assert _exec(ws, "cat", "/data/kept") == "in-volume\n"

    _exec(ws, "sh", "-c", "echo in-image > /root/kept")
    taken = ws.somnus("backup", address, check_exit=0).stdout
    assert f"{address}: full backup" in taken, taken
    [backup] = json.loads(ws.somnus("backups", address, "-o", "json", check_exit=0).stdout)["items"]
    assert backup["volumes"] == [{"name": f"somnus-{ws.name('box')}-data", "mountPath": "/data"}]
    assert backup["size"] > 0 and backup["reason"] == "manual"

    _exec(ws, "sh", "-c", "rm /data/kept /root/kept && echo changed > /data/new")
    refused = ws.somnus("restore", address, check_exit=2)
    assert "give -f MANIFESTS" in refused.stderr
    ws.somnus("restore", address, backup["name"], "-f", str(ws.manifests), check_exit=0)
    assert _exec(ws, "cat", "/data/kept", "/root/kept") == "in-volume\nin-image\n"
    assert _exec(ws, "ls", "/data") == "kept\n"
    ws.somnus("diff", str(ws.manifests), check_exit=0)
    listed = json.loads(ws.somnus("backups", address, "-o", "json", check_exit=0).stdout)["items"]
    assert [b["reason"] for b in listed] == ["manual", "before restore"]


def test_a_pruned_container_is_backed_up_first_and_restore_brings_it_back(workspace: Workspace) -> None:
    ws = workspace
    address = f"container/{ws.name('box')}"
    ws.write("ws.yaml", _box(ws, "64Mi"))
    ws.somnus("apply", str(ws.manifests), "-y", check_exit=0)
    _exec(ws, "sh", "-c", "echo in-volume > /data/kept && echo in-image > /root/kept")
    declared = ws.root / "declared"
    shutil.copytree(ws.manifests, declared)

    ws.write("ws.yaml")  # the container is no longer declared
    pruned = ws.somnus("apply", str(ws.manifests), "--prune", "-y", check_exit=0).stdout
    assert "before prune" in pruned, pruned
    assert ws.name("box") not in {c.name for c in ws.docker.containers.list(all=True)}
    [backup] = json.loads(ws.somnus("backups", address, "-o", "json", check_exit=0).stdout)["items"]
    assert backup["reason"] == "before prune" and backup["name"] in pruned

    ws.somnus("restore", address, "-f", str(declared), check_exit=0)
    assert _exec(ws, "cat", "/data/kept", "/root/kept") == "in-volume\nin-image\n"
    ws.somnus("diff", str(declared), check_exit=0)
