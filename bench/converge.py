"""Converging many objects from nothing: somnus against docker-compose and the raw define floor.

    python bench/converge.py [--containers 100] [--vms 50] [--parallelism 10]

In one run, side by side (the machine is shared and noisy: compare within a run):
  * N busybox containers (`network_mode: none`, `sleep infinity`): `somnus apply`
    with --parallelism, then Debian's docker-compose 1.29 `up -d` on the same N, then
    each one's second run (nothing to do). Compose's thread pool deadlocks when its
    limit (COMPOSE_PARALLEL_LIMIT, default 64) is below what its nested tasks need
    (docker/compose#5864, #7486: here it hung after 4 of 100 with a limit of 8, and
    with 20); it is given 2N + 8, with which 100 come up;
  * M VM definitions (tiny-linux, shut off): `somnus apply`, against the raw floor in
    one process: a qcow2 overlay (`qemu-img create`) and `defineXML` per domain.
Everything it makes is named `bench-conv-*` / project `benchconv` and removed at the end.
Needs docker-compose (apt-get install docker-compose).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from testkit.backups import remove_backups  # noqa: E402

PREFIX = "bench-conv"
IMAGE = "somnus/busybox:latest"


def _pool(vms: int) -> dict[str, object]:
    return {"apiVersion": "somnus/v1", "kind": "Pool", "metadata": {"name": "bench-conv"},
            "spec": {"domainType": "qemu", "maxVms": max(vms, 1), "maxVmsPerOwner": max(vms, 1),
                     "cpuOvercommit": 100, "reserved": {"vcpus": 0, "memory": "1Gi"}}}


def containers(n: int) -> list[dict[str, object]]:
    return [{"apiVersion": "somnus/v1", "kind": "Container", "metadata": {"name": f"{PREFIX}-box-{i}"},
             "spec": {"image": IMAGE, "command": ["sleep", "infinity"],
                      "resources": {"cpus": 0.5, "memory": "16Mi"}, "network": "none"}} for i in range(n)]


def vms(n: int) -> list[dict[str, object]]:
    return [{"apiVersion": "somnus/v1", "kind": "VirtualMachine", "metadata": {"name": f"{PREFIX}-vm-{i}"},
             "spec": {"resources": {"vcpus": 1, "memory": "128Mi"}, "image": "tiny-linux", "diskSize": "1Gi",
                      "running": False}} for i in range(n)]


def compose_file(n: int) -> dict[str, object]:
    return {"version": "2.4", "services": {
        f"box{i}": {"image": IMAGE, "command": ["sleep", "infinity"], "network_mode": "none",
                    "cpus": 0.5, "mem_limit": "16m"} for i in range(n)}}


def run(command: list[str], env: dict[str, str], *, cwd: Path = REPO, timeout: float = 600) -> float:
    """Seconds `command` took; infinity when it had not finished after `timeout` (it is killed)."""
    start = time.perf_counter()
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"  {' '.join(command[:4])} ...: no end after {timeout:.0f} s (hung), killed", flush=True)
        return float("inf")
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {result.returncode}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return elapsed


def raw_define_floor(n: int, state: Path) -> float:
    """qemu-img overlay + defineXML of n shut-off domains, in one process (their XML made first)."""
    import libvirt

    from somnus_reconciler import settings as settings_mod
    from somnus_reconciler.images import vm_images

    image = vm_images.find_vm_image("tiny-linux", settings_mod.resolve().images_dir)
    work = state / "raw"
    work.mkdir()
    xml = ("<domain type='qemu'><name>{name}</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>"
           "<os><type arch='x86_64'>hvm</type></os><devices><disk type='file' device='disk'>"
           "<driver name='qemu' type='qcow2'/><source file='{disk}'/><target dev='vda' bus='virtio'/>"
           "</disk></devices></domain>")
    conn = libvirt.open("qemu:///system")
    try:
        start = time.perf_counter()
        for i in range(n):
            disk = work / f"raw-{i}.qcow2"
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(image.disk),
                            str(disk), "1G"], check=True)
            conn.defineXML(xml.format(name=f"{PREFIX}-raw-{i}", disk=disk))
        elapsed = time.perf_counter() - start
    finally:
        for dom in conn.listAllDomains(0):
            if dom.name().startswith(f"{PREFIX}-raw-"):
                dom.undefine()
        conn.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--containers", type=int, default=100)
    parser.add_argument("--vms", type=int, default=50)
    parser.add_argument("--parallelism", type=int, default=10)
    args = parser.parse_args()
    if shutil.which("docker-compose") is None:
        raise SystemExit("docker-compose is not installed: apt-get install docker-compose")
    state = Path(tempfile.mkdtemp(prefix="somnus-bench-"))
    env = dict(os.environ, SOMNUS_STATE_DIR=str(state))
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # an installed package has its bytecode
    manifests = state / "manifests.yaml"
    project = state / "compose"
    project.mkdir()
    (project / "docker-compose.yml").write_text(yaml.safe_dump(compose_file(args.containers)))
    compose_env = dict(env, COMPOSE_PARALLEL_LIMIT=str(2 * args.containers + 8))
    compose = ["docker-compose", "-p", "benchconv"]
    figures: dict[str, float] = {}
    try:
        manifests.write_text(yaml.safe_dump_all([_pool(args.vms), *containers(args.containers)]))
        somnus = [sys.executable, "-m", "somnus_reconciler", "apply", str(manifests), "-y",
                  "--parallelism", str(args.parallelism)]
        for name, measure in (
            ("somnus containers", lambda: run(somnus, env)),
            ("somnus containers again", lambda: run(somnus, env)),
            ("compose containers", lambda: run([*compose, "up", "-d"], compose_env, cwd=project, timeout=300)),
            ("compose containers again", lambda: run([*compose, "up", "-d"], compose_env, cwd=project, timeout=300)),
        ):
            figures[name] = measure()
            print(f"  {name}: {figures[name]:.2f} s", flush=True)
        manifests.write_text(yaml.safe_dump_all([_pool(args.vms), *containers(args.containers), *vms(args.vms)]))
        figures["somnus VM definitions"] = run(somnus, env)
        figures["raw define floor"] = raw_define_floor(args.vms, state)
    finally:
        subprocess.run([*compose, "down", "-t", "1"], capture_output=True, env=compose_env, cwd=project, timeout=600)
        manifests.write_text(yaml.safe_dump_all([_pool(0)]))
        subprocess.run([sys.executable, "-m", "somnus_reconciler", "apply", str(manifests), "--prune", "-y"],
                       capture_output=True, env=env, cwd=REPO)
        remove_backups(PREFIX)
        shutil.rmtree(state, ignore_errors=True)

    n, m = args.containers, args.vms
    print(f"converge from nothing, one run, parallelism {args.parallelism}\n")
    print(f"{n} containers: somnus {figures['somnus containers']:.1f} s (again {figures['somnus containers again']:.2f} s)"
          f" | docker-compose {figures['compose containers']:.1f} s (again {figures['compose containers again']:.2f} s)"
          f" | ratio {figures['somnus containers'] / figures['compose containers']:.2f}")
    somnus_vms = figures["somnus VM definitions"]
    print(f"{m} VM definitions (beside the {n} containers, in sync): somnus {somnus_vms:.1f} s "
          f"({somnus_vms / m * 1000:.0f} ms a domain) | raw overlay + define {figures['raw define floor']:.1f} s "
          f"({figures['raw define floor'] / m * 1000:.1f} ms a domain)")


if __name__ == "__main__":
    main()
