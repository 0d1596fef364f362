"""Pack steps: a no-op `somnus apply` on a converged VM with three packs, against
the same packs run as one plain `ansible-playbook` with nothing to change; and the
cost of one snapshot and one rollback, for a VM and for a container.

    python bench/packs.py [--repeat 3]

The packs are hermetic (a local apt repository built here, see
testkit/apt_repo.py): local-repo, hello (an apt package), marker (its
own playbook). The VM is the debian-12 image under QEMU TCG, reached over SSH on
127.0.0.1. Everything is named `bench-packs-*` and removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from somnus_reconciler.passes import prepare
from somnus_reconciler.providers import (
    ansible_inputs,  # noqa: E402
    guest_access,  # noqa: E402
    guest_identity,  # noqa: E402
)
from somnus_reconciler.providers import backends as backends_mod
from testkit import apt_repo  # noqa: E402
from testkit.backups import remove_backups  # noqa: E402

PREFIX = "bench-packs"
PACKS = ["local-repo", "hello", "marker"]


def manifests(root: Path, *, with_guests: bool) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = [
        {"apiVersion": "somnus/v1", "kind": "Pool", "metadata": {"name": PREFIX},
         "spec": {"domainType": "qemu", "reserved": {"vcpus": 0, "memory": "1Gi"}}},
        {"apiVersion": "somnus/v1", "kind": "CapabilityPack", "metadata": {"name": "local-repo"},
         "spec": {"playbook": "playbooks/local-repo.yml"}},
        {"apiVersion": "somnus/v1", "kind": "CapabilityPack", "metadata": {"name": "hello"},
         "spec": {"requires": ["local-repo"], "packages": {"apt": ["somnus-hello"]},
                  "verify": ["somnus-hello | grep -qx hello"]}},
        {"apiVersion": "somnus/v1", "kind": "CapabilityPack", "metadata": {"name": "marker"},
         "spec": {"playbook": "playbooks/marker.yml", "verify": ["test -e /opt/marker"]}},
    ]
    if with_guests:
        docs.append({"apiVersion": "somnus/v1", "kind": "VirtualMachine", "metadata": {"name": f"{PREFIX}-vm"},
                     "spec": {"resources": {"vcpus": 1, "memory": "1Gi"}, "image": "debian-12",
                              "diskSize": "4Gi", "packs": PACKS}})
        docs.append({"apiVersion": "somnus/v1", "kind": "Container", "metadata": {"name": f"{PREFIX}-box"},
                     "spec": {"image": "somnus/base:bookworm", "command": ["sleep", "infinity"],
                              "network": "none", "resources": {"cpus": 0.5, "memory": "256Mi"},
                              "packs": PACKS}})
    return docs


def write_tree(root: Path, with_guests: bool) -> Path:
    repo = apt_repo.build_local_repo(root / "repo", root / "debs")
    apt_repo.write_local_repo_playbook(root / "m" / "playbooks" / "local-repo.yml", repo)
    (root / "m" / "playbooks" / "marker.yml").write_text(yaml.safe_dump([{
        "name": "marker", "hosts": "all", "gather_facts": False,
        "tasks": [{"name": "write a marker", "ansible.builtin.copy": {"dest": "/opt/marker", "content": "x"}}],
    }]))
    (root / "m" / "packs.yaml").write_text(yaml.safe_dump_all(manifests(root, with_guests=with_guests)))
    return root / "m"


def timed(commands: list[list[str]], env: dict[str, str], repeat: int) -> float:
    """Median wall time of running `commands` one after the other."""
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        for argv in commands:
            result = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO)
            if result.returncode != 0:
                raise SystemExit(f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def plain_playbook(tree: Path, key: guest_access.GuestKey, workdir: Path) -> list[list[str]]:
    """The same three packs with plain `ansible-playbook`, one run per pack (the generic
    playbook takes its pack as extra vars), against the same VM over the same SSH (run
    them with the env of an ssh-agent holding `key`, as somnus does)."""
    desired = prepare.load_desired([tree])
    backends = backends_mod.open_backends(desired)
    vm = backends.vms.observe_one(f"{PREFIX}-vm")
    backends.close()
    assert vm is not None and vm.mark is not None
    port = next(f.host_port for f in vm.mark.forwards if f.name == "ssh")
    inventory = {"guest": {"hosts": {"vm": {
        "ansible_host": "127.0.0.1", "ansible_port": port, "ansible_user": "root",
        "ansible_ssh_private_key_file": str(key.public_key),
        "ansible_ssh_common_args": shlex.join(guest_identity.ssh_options(key.identity)),
        "ansible_python_interpreter": "/usr/bin/python3"}}}}
    (workdir / "inventory.json").write_text(json.dumps(inventory))
    playbook = Path(sys.executable).parent / "ansible-playbook"
    commands = []
    for name in PACKS:
        variables = workdir / f"{name}.json"
        variables.write_text(json.dumps(ansible_inputs.extra_vars(desired.packs[name], "debian", "install")))
        commands.append([str(playbook if playbook.exists() else "ansible-playbook"), "-i",
                         str(workdir / "inventory.json"), "-e", f"@{variables}", str(ansible_inputs.PACK_PLAYBOOK)])
    return commands


def snapshot_costs(state_dir: Path, tree: Path) -> dict[str, float]:
    desired = prepare.load_desired([tree])
    backends = backends_mod.open_backends(desired, state_dir=str(state_dir))
    figures = {}
    for kind, provider, name in (("vm", backends.vms, f"{PREFIX}-vm"), ("container", backends.containers, f"{PREFIX}-box")):
        start = time.perf_counter()
        provider.snapshot(name, "somnus-bench-1", "bench")
        figures[f"{kind} snapshot"] = time.perf_counter() - start
        start = time.perf_counter()
        if kind == "vm":
            backends.vms.revert(name, "somnus-bench-1")
        else:
            backends.containers.restore(desired.containers[name], "somnus-bench-1")
        figures[f"{kind} rollback"] = time.perf_counter() - start
        provider.delete_snapshot(name, "somnus-bench-1")
    backends.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="somnus-bench-packs-"))
    state_dir = root / "state"
    env = dict(os.environ, SOMNUS_STATE_DIR=str(state_dir))
    somnus = [sys.executable, "-m", "somnus_reconciler"]
    tree = write_tree(root, with_guests=True)
    try:
        start = time.perf_counter()
        converge = subprocess.run([*somnus, "apply", str(tree), "-y"], capture_output=True, text=True, env=env)
        converge_s = time.perf_counter() - start
        if converge.returncode != 0:
            raise SystemExit(f"converge failed:\n{converge.stdout}{converge.stderr}")
        noop = timed([[*somnus, "apply", str(tree), "-y"]], env, args.repeat)
        key = guest_access.ensure_keypair(state_dir, f"{PREFIX}-vm")
        with guest_access.ssh_agent(key) as agent:
            plain = timed(plain_playbook(tree, key, root), {**env, **agent.env}, args.repeat)
        costs = snapshot_costs(state_dir, tree)
    finally:
        cleanup = write_tree(root / "cleanup", with_guests=False)
        subprocess.run([*somnus, "apply", str(cleanup), "--prune", "-y"], capture_output=True, env=env)
        remove_backups(PREFIX)

    print(f"pack steps, one VM (debian-12, TCG) + one container, packs {', '.join(PACKS)}; median of {args.repeat}\n")
    print(f"converge from nothing (VM boot + 3 packs on each guest): {converge_s:.1f} s")
    print(f"no-op `somnus apply` (both guests):                      {noop * 1000:.0f} ms")
    print(f"plain `ansible-playbook` of the same packs, VM only:     {plain * 1000:.0f} ms")
    print(f"ratio:                                                   {plain / noop:.1f}x\n")
    for what, seconds in costs.items():
        print(f"{what + ':':<20} {seconds * 1000:8.0f} ms")


if __name__ == "__main__":
    main()
