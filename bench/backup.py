"""Backups of a running debian-12 guest, side by side with the plain tools, in one run.

    python bench/backup.py

Makes one debian-12 VM (4Gi disk, QEMU TCG) with `somnus apply` and waits for its
agent. Then, in order, and prints each figure:
  - `somnus backup` (full): seconds, bytes written, MB/s;
  - plain `virtnbdbackup -l copy` of the same running domain (no checkpoint);
  - 10 MiB written in the guest, then `somnus backup` (incremental): seconds, bytes;
  - `somnus restore` of that incremental chain (it first backs up the VM as it is):
    seconds until the agent answers again;
  - `qemu-img convert` of the same disk, the VM stopped: seconds, bytes, MB/s.
The VM (`bench-backup-vm`), its disk and its backups are removed at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import libvirt
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from somnus_reconciler import settings as settings_mod  # noqa: E402
from somnus_reconciler.providers import guest_access  # noqa: E402
from somnus_reconciler.providers.agent_client import AgentClient, AgentError  # noqa: E402

NAME = "bench-backup-vm"
MB = 10**6


def somnus(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SOMNUS_STATE_DIR=str(state_dir))
    result = subprocess.run([sys.executable, "-m", "somnus_reconciler", *args], capture_output=True, text=True,
                            env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"somnus {' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result


def agent(state_dir: Path, timeout_s: float = 600) -> AgentClient:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        row = json.loads(somnus(state_dir, "get", "vm", NAME, "-o", "json").stdout)["items"][0]
        address = row["forwards"].get("agent")
        if address:
            client = AgentClient(int(address.rsplit(":", 1)[1]), guest_access.read_agent_token(state_dir, NAME),
                                 guest_access.agent_certificate(state_dir, NAME))
            try:
                client.status()
                return client
            except AgentError:
                pass
        time.sleep(1)
    raise SystemExit(f"the agent of {NAME} did not answer within {timeout_s:.0f} s")


def timed(run: Callable[[], object]) -> float:
    started = time.monotonic()
    run()
    return time.monotonic() - started


def newest_backup(state_dir: Path) -> dict[str, object]:
    items = json.loads(somnus(state_dir, "backups", f"vm/{NAME}", "-o", "json").stdout)["items"]
    return dict(items[-1])


def report(what: str, seconds: float, size: int | None = None) -> None:
    rate = f", {size / MB / seconds:.1f} MB/s" if size else ""
    bytes_ = f", {size / 2**20:.1f} MiB" if size is not None else ""
    print(f"{what:<46} {seconds:7.2f} s{bytes_}{rate}", flush=True)


def main() -> None:
    settings = settings_mod.resolve()
    with tempfile.TemporaryDirectory(prefix="bench-backup-") as tmp:
        root = Path(tmp)
        state, manifests = root / "state", root / "manifests"
        manifests.mkdir()
        (manifests / "vm.yaml").write_text(yaml.safe_dump({
            "apiVersion": "somnus/v1", "kind": "VirtualMachine", "metadata": {"name": NAME},
            "spec": {"resources": {"vcpus": 1, "memory": "1Gi"}, "image": "debian-12", "diskSize": "4Gi"}}))
        somnus(state, "image", "build", "debian-12")
        conn = libvirt.open(settings.libvirt_uri)
        try:
            somnus(state, "apply", str(manifests), "-y")
            client = agent(state)
            address = f"vm/{NAME}"

            seconds = timed(lambda: somnus(state, "backup", address))
            full = newest_backup(state)
            report("somnus backup (full, running guest)", seconds, int(str(full["size"])))

            plain = root / "plain"
            seconds = timed(lambda: subprocess.run(
                ["virtnbdbackup", "-U", settings.libvirt_uri, "-d", NAME, "-l", "copy", "-o", str(plain),
                 "-i", "vda", "--noprogress"], check=True, capture_output=True))
            report("plain virtnbdbackup -l copy (running guest)", seconds,
                   sum(p.stat().st_size for p in plain.glob("*.data")))

            client.execute(["sh", "-c", "head -c 10485760 /dev/urandom > /root/bench && sync"], timeout_s=120)
            seconds = timed(lambda: somnus(state, "backup", address))
            inc = newest_backup(state)
            report("somnus backup (incremental, 10 MiB written)", seconds, int(str(inc["size"])))

            started = time.monotonic()
            somnus(state, "restore", address, str(inc["name"]))
            agent(state)
            report("somnus restore until the agent answers", time.monotonic() - started)

            dom = conn.lookupByName(NAME)
            dom.destroy()
            disk, copy = settings.vms_dir / NAME / "disk.qcow2", root / "convert.qcow2"
            seconds = timed(lambda: subprocess.run(
                ["qemu-img", "convert", "-O", "qcow2", str(disk), str(copy)], check=True, capture_output=True))
            report("qemu-img convert (stopped guest)", seconds, copy.stat().st_size)
        finally:
            try:
                dom = conn.lookupByName(NAME)
                if dom.isActive():
                    dom.destroy()
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                                  | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
            except libvirt.libvirtError:
                pass
            conn.close()
            shutil.rmtree(settings.vms_dir / NAME, ignore_errors=True)
            shutil.rmtree(settings.backups_dir / NAME, ignore_errors=True)


if __name__ == "__main__":
    main()
