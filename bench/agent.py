"""Latency of the in-guest agent over a VM's 127.0.0.1 forward, against the same agent on the host.

    python bench/agent.py [--requests 200]

Makes one debian-12 VM (QEMU TCG, user-mode networking) with `somnus apply`,
waits until `somnus get` says Ready, then times GET /status, GET /stats/basic
and POST /execute (`true`) through `agent_client` -- a new TCP connection per
request, as `get` and `describe` make them. The baseline is the same agent code
run on the host on 127.0.0.1, so the difference is the forward and the guest.
Also timed: `somnus get` and `somnus describe` of that VM, end to end. The VM
is named `bench-agent-vm` and removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from somnus_reconciler.providers import guest_access  # noqa: E402
from somnus_reconciler.providers.agent_client import AgentClient, AgentUnreachable  # noqa: E402
from testkit.agent_process import TOKEN, running_agent  # noqa: E402
from testkit.backups import remove_backups  # noqa: E402

PREFIX = "bench-agent"


def somnus(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SOMNUS_STATE_DIR=str(state_dir))
    return subprocess.run([sys.executable, "-m", "somnus_reconciler", *args], capture_output=True,
                          text=True, env=env, check=True)


def timed_ms(call: Callable[[], object], n: int) -> tuple[float, float]:
    """(median, p95) in milliseconds over n calls, after 3 warm-up calls."""
    for _ in range(3):
        call()
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(0.95 * (n - 1))]


def measure(client: AgentClient, n: int) -> dict[str, tuple[float, float]]:
    return {
        "GET /status": timed_ms(client.status, n),
        "GET /stats/basic": timed_ms(client.stats_basic, max(10, n // 10)),  # samples CPU for 0.1 s
        "POST /execute true": timed_ms(lambda: client.execute(["true"]), max(10, n // 4)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        root = Path(tmp)
        (root / "host").mkdir()
        with running_agent(root / "host") as host_agent:
            host = measure(AgentClient(host_agent.port, TOKEN, host_agent.certificate), args.requests)

        manifests, state = root / "manifests", root / "state"
        manifests.mkdir()
        pool = {"apiVersion": "somnus/v1", "kind": "Pool", "metadata": {"name": PREFIX},
                "spec": {"domainType": "qemu", "reserved": {"vcpus": 0, "memory": "1Gi"}}}
        vm = {"apiVersion": "somnus/v1", "kind": "VirtualMachine", "metadata": {"name": f"{PREFIX}-vm"},
              "spec": {"resources": {"vcpus": 1, "memory": "1Gi"}, "image": "debian-12", "diskSize": "4Gi"}}
        (manifests / "vm.yaml").write_text(yaml.safe_dump_all([pool, vm]))
        started = time.monotonic()
        somnus(state, "apply", str(manifests), "-y")
        try:
            while True:
                row = json.loads(somnus(state, "get", "vm", f"{PREFIX}-vm", "-o", "json").stdout)["items"][0]
                if any(c["type"] == "Ready" and c["status"] == "True" for c in row["conditions"]):
                    break
                if time.monotonic() - started > 300:
                    raise SystemExit(f"not Ready after 300 s: {row['conditions']}")
                time.sleep(1)
            ready_s = time.monotonic() - started
            port = int(row["forwards"]["agent"].rsplit(":", 1)[1])
            guest = measure(AgentClient(port, guest_access.read_agent_token(state, f"{PREFIX}-vm"),
                                           guest_access.agent_certificate(state, f"{PREFIX}-vm")), args.requests)
            get_ms = timed_ms(lambda: somnus(state, "get", "vm", f"{PREFIX}-vm"), 5)
            describe_ms = timed_ms(lambda: somnus(state, "describe", f"vm/{PREFIX}-vm"), 5)
        finally:
            (manifests / "vm.yaml").write_text(yaml.safe_dump_all([pool]))
            try:
                somnus(state, "apply", str(manifests), "--prune", "-y")
            except (subprocess.CalledProcessError, AgentUnreachable) as e:
                print(f"cleanup failed: {e}", file=sys.stderr)
            remove_backups(PREFIX)  # the prune's backup of the bench VM

    print(f"apply -> Ready (boot under TCG, agent up): {ready_s:.1f} s")
    print(f"{'request':<22} {'guest via forward':>22} {'host loopback':>18}")
    for name in guest:
        g, h = guest[name], host[name]
        print(f"{name:<22} {g[0]:8.2f} ms (p95 {g[1]:6.2f}) {h[0]:7.2f} ms (p95 {h[1]:5.2f})")
    print(f"somnus get vm (whole process):      median {get_ms[0]:.0f} ms")
    print(f"somnus describe vm (whole process): median {describe_ms[0]:.0f} ms")


if __name__ == "__main__":
    main()
