"""Pack steps, in two parts.

hermetic: a no-op `somnus apply` on a converged VM with three packs, against
the same packs run as one plain `ansible-playbook` with nothing to change; and the
cost of one snapshot and one rollback, for a VM and for a container.
The packs are hermetic (a local apt repository built here, see
testkit/apt_repo.py): local-repo, hello (an apt package), marker (its
own playbook). The VM is the debian-12 image under QEMU TCG, reached over SSH on
127.0.0.1.

shipped: each pack of capability_packs/ alone in a container of its own
(somnus/base:bookworm, network host: the Debian mirror and PyPI), one pack at a
time: `somnus apply` from nothing (container, the pack's `requires`, the pack; each
step snapshot-guarded), then a no-op `somnus apply`; side by side, the same pack.yml
runs of the same packs as plain `ansible-playbook` (same Ansible settings) in a fresh
container made by `docker run`, from nothing and again. somnus goes first, so a
mirror's warm cache favours the plain run. research-browser gets the host-trust pack
first (testkit/shipped_packs.py says why).

shipped-vm: base-tools, then research-browser (with host-trust and pypi-hosts), added
one after the other to a debian-12 VM under TCG: `somnus apply` and a no-op
`somnus apply`; side by side, the same pack.yml runs as plain `ansible-playbook` over
the same SSH (127.0.0.1 forward, recorded host key) to a twin VM that somnus made
without packs: the packs just added, then all of them again.

    python bench/packs.py [--repeat 3] [--only hermetic|shipped|shipped-vm] [--pack NAME ...]

Everything is named `bench-packs-*` and removed at the end.
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

import docker

from somnus_reconciler.passes import prepare
from somnus_reconciler.providers import (
    ansible_inputs,  # noqa: E402
    guest_access,  # noqa: E402
    guest_identity,  # noqa: E402
)
from somnus_reconciler.providers import backends as backends_mod
from somnus_reconciler.values.desired import DesiredPack
from testkit import apt_repo, shipped_packs  # noqa: E402
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


def playbook_commands(packs: list[DesiredPack], inventory: ansible_inputs.Inventory,
                      workdir: Path) -> list[list[str]]:
    """One plain `ansible-playbook` of the generic pack.yml per pack (the pack as extra vars),
    against the one host of `inventory`."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "inventory.json").write_text(json.dumps(inventory))
    commands = []
    for pack in packs:
        variables = workdir / f"{pack.name}.json"
        variables.write_text(json.dumps(ansible_inputs.extra_vars(pack, "debian", "install")))
        commands.append([ansible_inputs.ansible_playbook(pack), "-i", str(workdir / "inventory.json"),
                         "-e", f"@{variables}", str(ansible_inputs.PACK_PLAYBOOK)])
    return commands


def vm_inventory(paths: list[Path], vm: str, key: guest_access.GuestKey) -> ansible_inputs.Inventory:
    """An inventory of the one VM `vm` (declared in `paths`), over the SSH somnus uses: its
    127.0.0.1 forward, its recorded host key (run with an ssh-agent holding `key`)."""
    desired = prepare.load_desired(paths)
    backends = backends_mod.open_backends(desired)
    observed = backends.vms.observe_one(vm)
    backends.close()
    assert observed is not None and observed.mark is not None
    port = next(f.host_port for f in observed.mark.forwards if f.name == "ssh")
    return {"guest": {"hosts": {"vm": {
        "ansible_host": "127.0.0.1", "ansible_port": port, "ansible_user": "root",
        "ansible_ssh_private_key_file": str(key.public_key),
        "ansible_ssh_common_args": shlex.join(guest_identity.ssh_options(key.identity)),
        "ansible_python_interpreter": "/usr/bin/python3"}}}}


def plain_playbook(tree: Path, key: guest_access.GuestKey, workdir: Path) -> list[list[str]]:
    """The same three packs with plain `ansible-playbook`, one run per pack (the generic
    playbook takes its pack as extra vars), against the same VM over the same SSH."""
    desired = prepare.load_desired([tree])
    return playbook_commands([desired.packs[name] for name in PACKS], vm_inventory([tree], f"{PREFIX}-vm", key),
                             workdir)


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


def hermetic(repeat: int) -> None:
    """The VM and the container with the three hermetic packs: no-op, plain playbook, snapshots."""
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
        noop = timed([[*somnus, "apply", str(tree), "-y"]], env, repeat)
        key = guest_access.ensure_keypair(state_dir, f"{PREFIX}-vm")
        with guest_access.ssh_agent(key) as agent:
            plain = timed(plain_playbook(tree, key, root), {**env, **agent.env}, repeat)
        costs = snapshot_costs(state_dir, tree)
    finally:
        cleanup = write_tree(root / "cleanup", with_guests=False)
        subprocess.run([*somnus, "apply", str(cleanup), "--prune", "-y"], capture_output=True, env=env)
        remove_backups(PREFIX)

    print(f"pack steps, one VM (debian-12, TCG) + one container, packs {', '.join(PACKS)}; median of {repeat}\n")
    print(f"converge from nothing (VM boot + 3 packs on each guest): {converge_s:.1f} s")
    print(f"no-op `somnus apply` (both guests):                      {noop * 1000:.0f} ms")
    print(f"plain `ansible-playbook` of the same packs, VM only:     {plain * 1000:.0f} ms")
    print(f"ratio:                                                   {plain / noop:.1f}x\n")
    for what, seconds in costs.items():
        print(f"{what + ':':<20} {seconds * 1000:8.0f} ms")


SHIPPED_POOL = {"apiVersion": "somnus/v1", "kind": "Pool", "metadata": {"name": f"{PREFIX}-shipped"},
                "spec": {"domainType": "qemu", "reserved": {"vcpus": 0, "memory": "1Gi"}}}


def shipped_tree(root: Path, pack: str) -> Path:
    """The manifests that put `pack` (with host-trust where it needs it) in a container of its own."""
    tree = root / pack
    tree.mkdir(parents=True)
    docs = [SHIPPED_POOL, shipped_packs.host_trust_pack(tree),
            shipped_packs.container_doc(f"{PREFIX}-{pack}", shipped_packs.guest_packs(pack))]
    (tree / "ws.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return tree


def plain_run(pack: str, tree: Path, workdir: Path, repeat: int) -> tuple[float, float]:
    """The same packs as plain `ansible-playbook` runs in a fresh container: (from nothing, median again)."""
    desired = prepare.load_desired([shipped_packs.CAPABILITY_PACKS, tree])
    container = f"{PREFIX}-plain-{pack}"
    packs = [desired.packs[name] for name in desired.containers[f"{PREFIX}-{pack}"].packs]
    commands = playbook_commands(packs, ansible_inputs.inventory(ansible_inputs.DockerTarget(container), "debian",
                                                                 packs[0]), workdir)
    env = {**os.environ, **ansible_inputs.ansible_env(workdir)}
    start = time.perf_counter()
    subprocess.run(["docker", "run", "-d", "--name", container, "--network", "host", "--cpus", "1",
                    "--memory", "1536m", shipped_packs.IMAGE, "sleep", "infinity"], check=True, capture_output=True)
    timed(commands, env, 1)
    return time.perf_counter() - start, timed(commands, env, repeat)


def somnus_converge(tree: Path, env: dict[str, str], repeat: int, address: str, label: str) -> tuple[float, float, str]:
    """`somnus apply` of capability_packs/ and `tree`: (converge s, median no-op s, the converge's steps)."""
    apply = [sys.executable, "-m", "somnus_reconciler", "apply", str(shipped_packs.CAPABILITY_PACKS), str(tree), "-y"]
    began, start = time.time(), time.perf_counter()
    timed([apply], env, 1)
    converge = time.perf_counter() - start
    noop = timed([apply], env, repeat)
    steps = shipped_packs.steps_since(Path(env["SOMNUS_STATE_DIR"]), address, began)
    return converge, noop, shipped_packs.converge_line(label, steps)


def row(label: str, *figures: float) -> str:
    """A line of the shipped tables: the heading without `figures`, else somnus converge and
    no-op, plain converge and no-op (seconds)."""
    if not figures:
        return (f"{label:<18} {'somnus converge':>16} {'no-op':>9} {'plain converge':>15} {'no-op':>9} "
                f"{'no-op ratio':>12}")
    converge, noop, plain_converge, plain_noop = figures
    return (f"{label:<18} {converge:14.1f} s {noop * 1000:6.0f} ms {plain_converge:13.1f} s "
            f"{plain_noop * 1000:6.0f} ms {plain_noop / noop:11.1f}x")


def remove_bench_containers() -> None:
    """Every container named `bench-packs-*` and its committed snapshots."""
    client = docker.from_env()
    try:
        for container in client.containers.list(all=True, filters={"name": PREFIX}):
            container.remove(force=True)
        for image in client.images.list(name="somnus-snapshots/*"):
            for tag in image.tags:
                if tag.split("/", 1)[1].startswith(PREFIX):
                    client.images.remove(tag, force=True)
    finally:
        client.close()


def shipped(repeat: int, packs: list[str]) -> None:
    """Each shipped pack alone: somnus converge and no-op, against plain ansible-playbook.
    A row is printed as soon as its pack is done."""
    root = Path(tempfile.mkdtemp(prefix="somnus-bench-shipped-"))
    env = dict(os.environ, SOMNUS_STATE_DIR=str(root / "state"))
    print(f"shipped packs, each alone in a container (somnus/base:bookworm, network host); no-op: median of {repeat}\n")
    print(row("pack"), flush=True)
    breakdown = []
    try:
        for pack in packs:
            tree = shipped_tree(root / "manifests", pack)
            converge, noop, steps = somnus_converge(tree, env, repeat, f"container/{PREFIX}-{pack}", pack)
            breakdown.append(steps)
            print(row(pack, converge, noop, *plain_run(pack, tree, root / "plain" / pack, repeat)), flush=True)
    finally:
        remove_bench_containers()
    print("\nsomnus converge, step by step (from the journal):")
    for line in breakdown:
        print(f"  {line}")


VM_STAGES = [("base-tools", ["base-tools"]), ("research-browser", shipped_packs.VM_BROWSER_PACKS)]


def shipped_vm_tree(root: Path, packs: list[str]) -> Path:
    """Two debian-12 VMs: `bench-packs-vm-somnus` with `packs`, its twin `bench-packs-vm-plain` with none."""
    tree = root / "vm-manifests"
    tree.mkdir(parents=True, exist_ok=True)
    docs = [SHIPPED_POOL, shipped_packs.host_trust_pack(tree), shipped_packs.pypi_hosts_pack(tree),
            shipped_packs.vm_doc(f"{PREFIX}-vm-somnus", packs), shipped_packs.vm_doc(f"{PREFIX}-vm-plain", [])]
    (tree / "ws.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return tree


def wait_for_ssh(vm: str, env: dict[str, str], timeout_s: float = 900) -> None:
    """Until `somnus ssh vm/VM -- true` works: the VM has booted and proved its host key."""
    deadline = time.monotonic() + timeout_s
    while subprocess.run([sys.executable, "-m", "somnus_reconciler", "ssh", f"vm/{vm}", "--", "true"],
                         capture_output=True, env=env).returncode != 0:
        if time.monotonic() > deadline:
            raise SystemExit(f"vm/{vm} did not answer over SSH within {timeout_s:.0f} s")
        time.sleep(2)


def shipped_vm(repeat: int) -> None:
    """base-tools, then research-browser, in a debian-12 VM: somnus converge and no-op, against
    the same pack.yml runs with plain `ansible-playbook` over the same SSH to a twin VM."""
    root = Path(tempfile.mkdtemp(prefix="somnus-bench-shipped-vm-"))
    state_dir = root / "state"
    env = dict(os.environ, SOMNUS_STATE_DIR=str(state_dir))
    somnus = [sys.executable, "-m", "somnus_reconciler"]
    plain_vm = f"{PREFIX}-vm-plain"
    print(f"shipped packs in a debian-12 VM (TCG, 2 vCPUs, 2 GiB), added one after the other; plain: the same "
          f"pack.yml runs over the same SSH to a twin VM; no-op: median of {repeat}", flush=True)
    breakdown = []
    try:
        tree = shipped_vm_tree(root, [])
        start = time.perf_counter()
        timed([[*somnus, "apply", str(shipped_packs.CAPABILITY_PACKS), str(tree), "-y"]], env, 1)
        for vm in (f"{PREFIX}-vm-somnus", plain_vm):  # booted: no figure below counts a boot
            wait_for_ssh(vm, env)
        print(f"both VMs from nothing, booted, no packs: {time.perf_counter() - start:.1f} s\n")
        print(row("packs added"), flush=True)
        key = guest_access.ensure_keypair(state_dir, plain_vm)
        done: list[str] = []
        for label, packs in VM_STAGES:
            tree = shipped_vm_tree(root, packs)
            converge, noop, steps = somnus_converge(tree, env, repeat, f"vm/{PREFIX}-vm-somnus", label)
            breakdown.append(steps)
            desired = prepare.load_desired([shipped_packs.CAPABILITY_PACKS, tree])
            inventory = vm_inventory([shipped_packs.CAPABILITY_PACKS, tree], plain_vm, key)
            every = playbook_commands([desired.packs[name] for name in packs], inventory, root / "plain" / label)
            added = [command for name, command in zip(packs, every) if name not in done]
            with guest_access.ssh_agent(key) as agent:
                plain_env = {**env, **ansible_inputs.ansible_env(root / "plain"), **agent.env}
                plain_converge = timed(added, plain_env, 1)
                plain_noop = timed(every, plain_env, repeat)
            done = list(packs)
            print(row(label, converge, noop, plain_converge, plain_noop), flush=True)
    finally:
        cleanup = root / "cleanup"
        cleanup.mkdir()
        (cleanup / "pool.yaml").write_text(yaml.safe_dump(SHIPPED_POOL))  # the Pool alone: --prune removes the VMs
        subprocess.run([*somnus, "apply", str(cleanup), "--prune", "-y"], capture_output=True, env=env)
        remove_backups(PREFIX)
    print("\nsomnus converge, step by step (from the journal):")
    for line in breakdown:
        print(f"  {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=["hermetic", "shipped", "shipped-vm"], help="run one part (default: all)")
    parser.add_argument("--pack", action="append", choices=shipped_packs.SHIPPED, dest="packs",
                        help="shipped: only this pack (again for more; default: all five)")
    args = parser.parse_args()
    if args.only in (None, "hermetic"):
        hermetic(args.repeat)
    if args.only is None:
        print()
    if args.only in (None, "shipped"):
        shipped(args.repeat, args.packs or list(shipped_packs.SHIPPED))
    if args.only is None:
        print()
    if args.only in (None, "shipped-vm"):
        shipped_vm(args.repeat)


if __name__ == "__main__":
    main()
