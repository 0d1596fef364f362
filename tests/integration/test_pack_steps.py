"""Pack steps end to end through `somnus apply` on a real container: snapshot ->
playbook -> verify -> record, rollback on failure, no Ansible on a no-op, and
recovery after the apply process is killed mid-step."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from testkit import apt_repo
from testkit.crash_trials import playbooks_running_in
from tests.integration.conftest import Workspace

pytestmark = pytest.mark.integration
IMAGE = "somnus/base:bookworm"


def pack_doc(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "somnus/v1", "kind": "CapabilityPack", "metadata": {"name": name}, "spec": spec}


def box_doc(name: str, packs: list[str]) -> dict[str, Any]:
    return {"apiVersion": "somnus/v1", "kind": "Container", "metadata": {"name": name},
            "spec": {"image": IMAGE, "command": ["sleep", "infinity"], "network": "none",
                     "resources": {"cpus": 0.5, "memory": "256Mi"}, "packs": packs}}


def playbook(path: Path, tasks: list[dict[str, Any]]) -> None:
    path.write_text(yaml.safe_dump([{"name": path.stem, "hosts": "all", "gather_facts": False,
                                     "tasks": tasks}], sort_keys=False))


@pytest.fixture
def packs(workspace: Workspace, tmp_path: Path) -> list[dict[str, Any]]:
    """local-repo (the only apt source), hello (an apt package), two-step (fails in its
    second task after its first wrote a file) and slow (writes a file, then sleeps)."""
    repo = apt_repo.build_local_repo(tmp_path / "repo", tmp_path / "debs")
    books = workspace.manifests / "playbooks"
    apt_repo.write_local_repo_playbook(books / "local-repo.yml", repo)
    playbook(books / "two-step.yml", [
        {"name": "write a marker", "ansible.builtin.copy": {"dest": "/opt/two-step-marker", "content": "x"}},
        {"name": "fail on purpose", "ansible.builtin.command": "false"},
    ])
    playbook(books / "slow.yml", [
        {"name": "write a marker", "ansible.builtin.copy": {"dest": "/opt/slow-marker", "content": "x"}},
        {"name": "take a while", "ansible.builtin.command": "sleep 120"},
    ])
    return [
        pack_doc("local-repo", playbook="playbooks/local-repo.yml"),
        pack_doc("hello", requires=["local-repo"], packages={"apt": ["somnus-hello"]},
                 verify=["somnus-hello | grep -qx hello"]),
        pack_doc("two-step", playbook="playbooks/two-step.yml"),
        pack_doc("slow", playbook="playbooks/slow.yml"),
    ]


def in_box(ws: Workspace, *argv: str) -> int:
    return subprocess.run(["docker", "exec", ws.name("box"), *argv], capture_output=True, timeout=60).returncode


def test_packs_go_in_as_guarded_steps_and_a_failed_step_is_rolled_back(
        workspace: Workspace, packs: list[dict[str, Any]]) -> None:
    ws = workspace
    ws.write("ws.yaml", *packs, box_doc(ws.name("box"), ["hello"]))
    first = ws.somnus("apply", str(ws.manifests), "-y", check_exit=0)
    assert "pack local-repo" in first.stdout and "(snapshot first)" in first.stdout
    assert in_box(ws, "somnus-hello") == 0
    listed = ws.somnus("snapshots", f"container/{ws.name('box')}", check_exit=0).stdout
    assert listed.count("somnus-pack-") == 2

    again = ws.somnus("apply", str(ws.manifests), "-y", check_exit=0)
    assert "No changes" in again.stdout and "ansible" not in again.stdout.lower()
    assert not (ws.state_dir / "runs").exists() or not any((ws.state_dir / "runs").iterdir())

    ws.write("ws.yaml", *packs, box_doc(ws.name("box"), ["hello", "two-step"]))
    failed = ws.somnus("apply", str(ws.manifests), "-y", check_exit=1)
    assert "fail on purpose" in failed.stdout
    assert in_box(ws, "test", "-e", "/opt/two-step-marker") != 0, "the failed step's first task was not undone"
    assert in_box(ws, "somnus-hello") == 0, "the earlier step's package must stay"
    described = ws.somnus("describe", f"container/{ws.name('box')}", check_exit=0).stdout
    assert "pack install two-step" in described and "rolled back" in described
    assert "fail on purpose" in described

    # The failure is remembered as not applied: the next run tries that step again, and only it.
    retry = ws.somnus("diff", str(ws.manifests), check_exit=1).stdout
    assert "pack two-step" in retry and "pack hello" not in retry

    # By hand: a change made out of band is undone by rolling back to the newest snapshot.
    assert in_box(ws, "touch", "/opt/by-hand") == 0
    ws.somnus("rollback", f"container/{ws.name('box')}", "-f", str(ws.manifests), check_exit=0)
    assert in_box(ws, "test", "-e", "/opt/by-hand") != 0 and in_box(ws, "somnus-hello") == 0
    ws.somnus("rollback", f"container/{ws.name('box')}", check_exit=2)  # needs the manifests

    # The container now runs on its newest snapshot's image; that snapshot can still go.
    from somnus_reconciler.providers.docker_provider import DockerProvider

    provider = DockerProvider()
    newest = provider.snapshots(ws.name("box"))[-1].name
    provider.delete_snapshot(ws.name("box"), newest)
    assert newest not in [s.name for s in provider.snapshots(ws.name("box"))]
    assert in_box(ws, "somnus-hello") == 0
    provider.close()


def test_an_apply_killed_mid_step_is_rolled_back_by_the_next_run(
        workspace: Workspace, packs: list[dict[str, Any]]) -> None:
    ws = workspace
    ws.write("ws.yaml", *packs, box_doc(ws.name("box"), []))
    ws.somnus("apply", str(ws.manifests), "-y", check_exit=0)
    ws.write("ws.yaml", *packs, box_doc(ws.name("box"), ["slow"]))
    env = dict(os.environ, SOMNUS_STATE_DIR=str(ws.state_dir))
    apply = subprocess.Popen([sys.executable, "-m", "somnus_reconciler", "apply", str(ws.manifests), "-y"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:  # killed in its long task: killed between tasks, the orphan can end by itself (its pty is gone)
        deadline = time.monotonic() + 120
        while not sleeping_in_box(ws):
            assert time.monotonic() < deadline and apply.poll() is None, "the slow step never started"
            time.sleep(0.5)
        assert in_box(ws, "test", "-e", "/opt/slow-marker") == 0
    finally:
        os.killpg(apply.pid, signal.SIGKILL)  # the apply and ansible-runner, not ansible-playbook
        apply.wait()
    # ansible-playbook runs in a session of its own: the kill did not reach it.
    assert playbooks_running_in(ws.state_dir / "runs"), "the playbook should have outlived the apply"

    ws.write("ws.yaml", *packs, box_doc(ws.name("box"), []))
    recovered = ws.somnus("apply", str(ws.manifests), "-y", check_exit=0)
    assert "recovered:" in recovered.stdout and "rolled back to somnus-pack-slow-" in recovered.stdout
    assert "a playbook left running by an interrupted pack step" in recovered.stdout
    assert not playbooks_running_in(ws.state_dir / "runs")
    assert not list((ws.state_dir / "runs").glob("pack-*")), "the killed run's data directory is left"
    assert in_box(ws, "test", "-e", "/opt/slow-marker") != 0
    ws.somnus("diff", str(ws.manifests), check_exit=0)


def sleeping_in_box(ws: Workspace) -> bool:
    """Is the slow pack's `sleep 120` running in the container (seen from the host)?"""
    top = subprocess.run(["docker", "top", ws.name("box"), "-o", "pid,args"], capture_output=True, text=True,
                         timeout=60)
    return "sleep 120" in top.stdout


def in_vm(ws: Workspace, command: str) -> subprocess.CompletedProcess[str]:
    from somnus_reconciler.providers import guest_access

    vm = ws.get_json()[f"vm/{ws.name('vm')}"]
    port = int(vm["forwards"]["ssh"].rsplit(":", 1)[1])
    key = guest_access.ensure_keypair(ws.state_dir, ws.name("vm"))
    with guest_access.ssh_agent(key) as agent:  # ssh reads no key file
        return subprocess.run(guest_access.ssh_command(port, key, command), capture_output=True, text=True,
                              timeout=120, env={**os.environ, **agent.env})


def test_packs_on_a_debian_vm_over_ssh_with_libvirt_snapshots(
        workspace: Workspace, packs: list[dict[str, Any]]) -> None:
    ws = workspace
    vm = {"apiVersion": "somnus/v1", "kind": "VirtualMachine", "metadata": {"name": ws.name("vm")},
          "spec": {"resources": {"vcpus": 1, "memory": "1Gi"}, "image": "debian-12", "diskSize": "4Gi",
                   "packs": ["hello"]}}
    ws.write("ws.yaml", *packs, vm)
    ws.somnus("apply", str(ws.manifests), "-y", check_exit=0)
    assert in_vm(ws, "somnus-hello").stdout.strip() == "hello"
    assert ws.somnus("snapshots", ws.name("vm"), check_exit=0).stdout.count("somnus-pack-") == 2
    assert "No changes" in ws.somnus("apply", str(ws.manifests), "-y", check_exit=0).stdout

    vm["spec"]["packs"] = ["hello", "two-step"]
    ws.write("ws.yaml", *packs, vm)
    failed = ws.somnus("apply", str(ws.manifests), "-y", check_exit=1)
    assert "fail on purpose" in failed.stdout
    assert in_vm(ws, "test -e /opt/two-step-marker").returncode == 1, "the revert did not undo the first task"
    assert in_vm(ws, "somnus-hello").stdout.strip() == "hello"
    assert "rolled back" in ws.somnus("describe", f"vm/{ws.name('vm')}", check_exit=0).stdout

    assert in_vm(ws, "touch /opt/by-hand").returncode == 0
    newest = ws.somnus("snapshots", ws.name("vm"), check_exit=0).stdout.splitlines()[-1].split()[0]
    ws.somnus("rollback", ws.name("vm"), newest, check_exit=0)
    assert in_vm(ws, "test -e /opt/by-hand").returncode == 1
    ws.somnus("rollback", ws.name("vm"), "somnus-no-such-snapshot", check_exit=2)
