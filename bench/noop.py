"""No-op `somnus diff` against the raw floor, at V VMs (defined, shut off) + C containers.

    python bench/noop.py [--vms 50] [--containers 100] [--repeat 7] [--keep DIR]

It converges the VMs and containers with `somnus apply`, then times,
in this one run (the machine is shared and noisy: compare ratios):
  * `somnus diff` as a whole process (what a user waits for), median of --repeat;
  * the raw floor as a whole process: one Python process that does one libvirt
    listing plus each domain's XML, and one sparse Docker listing;
  * a watch loop's no-op resync inside a running process (passes.loop.Loop.run_pass,
    backends kept open) against the same raw calls on open connections.
Everything it creates is named `bench-noop-*` and removed at the end, unless
--keep DIR leaves it converged, with its manifest and state in DIR (for profiling).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from testkit.backups import remove_backups  # noqa: E402

PREFIX = "bench-noop"

RAW_FLOOR = """
import libvirt, docker
conn = libvirt.open("qemu:///system")
for dom in conn.listAllDomains(0):
    dom.XMLDesc(0)
docker.from_env().containers.list(all=True, sparse=True)
"""


def manifests(vms: int, containers: int) -> list[dict[str, object]]:
    docs: list[dict[str, object]] = [{
        "apiVersion": "somnus/v1", "kind": "Pool", "metadata": {"name": "bench"},
        "spec": {"domainType": "qemu", "maxVms": max(vms, 1), "maxVmsPerOwner": max(vms, 1), "cpuOvercommit": 100,
                 "reserved": {"vcpus": 0, "memory": "1Gi"}},
    }]
    for i in range(vms):
        docs.append({
            "apiVersion": "somnus/v1", "kind": "VirtualMachine", "metadata": {"name": f"{PREFIX}-vm-{i}"},
            "spec": {"resources": {"vcpus": 1, "memory": "128Mi"}, "image": "tiny-linux",
                     "diskSize": "1Gi", "running": False},
        })
    for i in range(containers):
        docs.append({
            "apiVersion": "somnus/v1", "kind": "Container", "metadata": {"name": f"{PREFIX}-box-{i}"},
            "spec": {"image": "somnus/busybox:latest", "command": ["sleep", "infinity"],
                     "resources": {"cpus": 0.5, "memory": "16Mi"}, "network": "none"},
        })
    return docs


def somnus(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "somnus_reconciler", *args],
                          capture_output=True, text=True, env=env, cwd=REPO)


def timed(command: list[str], env: dict[str, str], repeat: int, expect: int = 0) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
        samples.append(time.perf_counter() - start)
        if result.returncode != expect:
            raise SystemExit(f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return statistics.median(samples)


def in_process(path: Path, state_dir: Path, repeat: int) -> tuple[float, float]:
    """A watch loop's no-op resync (`Loop.run_pass` with its backends kept open: load the
    manifests, take the lock, observe, run the packs' verify checks, plan), against the
    raw listings on connections already open."""
    import docker
    import libvirt

    from somnus_reconciler.passes import prepare
    from somnus_reconciler.passes.converge import PassVerdict
    from somnus_reconciler.passes.loop import Loop
    from somnus_reconciler.passes.loop_events import Trigger

    loop = Loop(lambda event: None, state_dir=str(state_dir))
    conn = libvirt.open("qemu:///system")
    client = docker.from_env()
    ours, raw = [], []
    for i in range(repeat + 1):  # the first pass opens the connections
        start = time.perf_counter()
        report = loop.run_pass(lambda: prepare.load_desired([path], state_dir=str(state_dir)), Trigger("resync", time.time()), check_packs=True)
        if i:
            ours.append(time.perf_counter() - start)
        assert report.verdict is PassVerdict.IN_SYNC, report.errors
        start = time.perf_counter()
        for dom in conn.listAllDomains(0):
            dom.XMLDesc(0)
        client.containers.list(all=True, sparse=True)
        if i:
            raw.append(time.perf_counter() - start)
    loop.close()
    conn.close()
    client.close()
    return statistics.median(ours), statistics.median(raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vms", type=int, default=50)
    parser.add_argument("--containers", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--keep", type=Path, help="leave everything converged, manifest and state in this directory")
    args = parser.parse_args()
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="somnus-bench-noop-"))
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, SOMNUS_STATE_DIR=str(workdir / "state"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # an installed package has its bytecode; compile it once here
    path = workdir / "bench.yaml"
    path.write_text(yaml.safe_dump_all(manifests(args.vms, args.containers), sort_keys=False))
    try:
        start = time.perf_counter()
        result = somnus("apply", str(path), "--prune", "-y", env=env)
        converge = time.perf_counter() - start
        if result.returncode != 0:
            raise SystemExit(f"apply failed:\n{result.stdout}{result.stderr}")
        somnus_cmd = [sys.executable, "-m", "somnus_reconciler"]
        diff = timed([*somnus_cmd, "diff", str(path)], env, args.repeat)
        apply = timed([*somnus_cmd, "apply", str(path), "-y"], env, args.repeat)
        floor = timed([sys.executable, "-c", RAW_FLOOR], env, args.repeat)
        ours_in, raw_in = in_process(path, workdir / "state", args.repeat)
    finally:
        if args.keep is None:
            path.write_text(yaml.safe_dump_all(manifests(0, 0), sort_keys=False))
            somnus("apply", str(path), "--prune", "-y", env=env)
            remove_backups(PREFIX)

    print(f"no-op, {args.vms} VMs (shut off) + {args.containers} containers; median of {args.repeat}; one run")
    print(f"  converge from nothing:         {converge:8.2f} s")
    print(f"  whole process: somnus diff     {diff * 1000:8.0f} ms  ({diff / floor:.2f}x the floor)")
    print(f"  whole process: somnus apply    {apply * 1000:8.0f} ms  ({apply / floor:.2f}x the floor)")
    print(f"  whole process: raw floor       {floor * 1000:8.0f} ms")
    print(f"  watch loop: one no-op resync   {ours_in * 1000:8.1f} ms  ({ours_in / raw_in:.2f}x the floor)")
    print(f"  watch loop: raw listings       {raw_in * 1000:8.1f} ms  (connections open)")


if __name__ == "__main__":
    main()
