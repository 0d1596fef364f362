"""SIGKILL `somnus apply` at random moments, then check that the next apply recovers.

Used by tests/integration/test_crash_trials.py (CI's count) and bench/reliability.py
(larger counts). Each trial flips the manifests between two variants, so every
apply has work: a tiny-linux VM resized live or restarted, a container recreated
(its spec changes), and a pack step in another container (snapshot -> playbook ->
verify). The apply's process group is killed after a random number of its progress
lines and a random fraction of a second, cut short by its next line (seeded: the
seed is printed, a trial is reproducible). Then a plain `somnus apply` must exit
0, `somnus diff` must exit 0, and nothing may be lost or left over: no step open in
the journal, no playbook of a killed apply still running, no libvirt snapshot or
committed image beyond retention or of an object that is gone, no object with the
prefix that lacks its ownership mark.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import libvirt
import psutil
import yaml

from somnus_reconciler import settings as settings_mod
from testkit.output_lines import OutputLines

PACK_PLAYBOOK = [{"name": "marker", "hosts": "all", "gather_facts": False, "tasks": [
    {"name": "write a marker", "ansible.builtin.copy": {"dest": "/opt/marker", "content": "{{ 999999 | random }}"}},
    {"name": "take a moment", "ansible.builtin.command": "sleep 1"},
]}]

# An apply of either variant prints about 10 progress lines (3 steps started and
# finished, the pack's playbook tasks): a kill after 1 to 8 of them lands inside it.
_PROGRESS_LINES = 8

@dataclass(frozen=True)
class TrialResult:
    seed: int
    killed_after_s: float
    killed_mid_run: bool  # the apply was still running when killed
    recovered: bool  # the next apply said it rolled back an interrupted step
    converged: bool  # next apply exit 0 and diff exit 0
    problems: tuple[str, ...]  # what was lost or left over; empty is the goal


class Trials:
    def __init__(self, root: Path, prefix: str) -> None:
        self.root, self.prefix = root, prefix
        self.manifests, self.state_dir = root / "manifests", root / "state"
        (self.manifests / "playbooks").mkdir(parents=True, exist_ok=True)
        (self.manifests / "playbooks" / "marker.yml").write_text(yaml.safe_dump(PACK_PLAYBOOK))
        self.env = dict(os.environ, SOMNUS_STATE_DIR=str(self.state_dir), SOMNUS_SHUTDOWN_TIMEOUT="10")

    def write(self, variant: int) -> None:
        p = self.prefix
        docs: list[dict[str, Any]] = [
            {"apiVersion": "somnus/v1", "kind": "Pool", "metadata": {"name": p},
             "spec": {"domainType": "qemu", "cpuOvercommit": 8, "reserved": {"vcpus": 0, "memory": "1Gi"}}},
            {"apiVersion": "somnus/v1", "kind": "CapabilityPack", "metadata": {"name": f"marker-{variant}"},
             "spec": {"playbook": "playbooks/marker.yml", "verify": ["test -e /opt/marker"]}},
            {"apiVersion": "somnus/v1", "kind": "VirtualMachine", "metadata": {"name": f"{p}-vm"},
             "spec": {"resources": {"vcpus": 1 + variant, "memory": f"{192 + 64 * variant}Mi", "maxVcpus": 2,
                                    "maxMemory": "512Mi"}, "image": "tiny-linux", "diskSize": "1Gi"}},
            {"apiVersion": "somnus/v1", "kind": "Container", "metadata": {"name": f"{p}-box"},
             "spec": {"image": "somnus/busybox:latest", "command": ["sleep", "infinity"], "network": "none",
                      "resources": {"cpus": 0.25, "memory": f"{64 + 32 * variant}Mi"}}},
            {"apiVersion": "somnus/v1", "kind": "Container", "metadata": {"name": f"{p}-tools"},
             "spec": {"image": "somnus/base:bookworm", "command": ["sleep", "infinity"], "network": "none",
                      "resources": {"cpus": 0.5, "memory": "256Mi"}, "packs": [f"marker-{variant}"]}},
        ]
        (self.manifests / "ws.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))

    def somnus(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "somnus_reconciler", *args], capture_output=True,
                              text=True, env=self.env, timeout=900)

    def trial(self, number: int, seed: int, conn: libvirt.virConnect, client: docker.DockerClient) -> TrialResult:
        rng = random.Random(seed)
        self.write(number % 2)
        # The moment is drawn by events, not by the clock alone, so that it lands inside
        # the apply on a fast machine as on a slow one: after a random number of its
        # progress lines (a step started, a playbook task done, a step finished), then a
        # random part of a second or so, cut short by the apply's next line.
        lines, extra = rng.randint(1, _PROGRESS_LINES), rng.uniform(0.0, 1.5)
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "somnus_reconciler", "apply", str(self.manifests), "-y"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=self.env,
                                start_new_session=True)
        assert proc.stdout is not None
        printed = OutputLines(proc.stdout, str)
        if (at := self._progress_line(printed, lines)) is not None:
            printed.wait_for(lambda line: True, extra, after=at + 1)
        delay = time.monotonic() - started
        killed_mid_run = proc.poll() is None
        if killed_mid_run:
            os.killpg(proc.pid, signal.SIGKILL)  # the apply and its ansible-runner children
        proc.wait()
        printed.join(timeout_s=10)
        after = self.somnus("apply", str(self.manifests), "-y")
        diff = self.somnus("diff", str(self.manifests))
        problems = [f"apply after the kill exited {after.returncode}: {after.stdout[-800:]}{after.stderr[-800:]}"
                    ] if after.returncode != 0 else []
        if diff.returncode != 0:
            problems.append(f"diff exited {diff.returncode}: {diff.stdout[-800:]}")
        problems += self.leftovers(conn, client)
        return TrialResult(seed, round(delay, 2), killed_mid_run, "recovered:" in after.stdout,
                           after.returncode == 0 and diff.returncode == 0, tuple(problems))

    def _progress_line(self, printed: OutputLines[str], count: int) -> int | None:
        """The index of the apply's `count`th progress line; None when it ended with fewer."""
        at = -1
        for _ in range(count):
            found = printed.wait_for(lambda line: line.startswith((f"vm/{self.prefix}", f"container/{self.prefix}")),
                                     900, after=at + 1)
            if found is None:
                return None
            at = found
        return at

    def leftovers(self, conn: libvirt.virConnect, client: docker.DockerClient) -> list[str]:
        """What a crash may have lost or left behind; empty when all is well."""
        problems = []
        journal = self.state_dir / "journal.sqlite"
        with sqlite3.connect(journal) as db:
            open_steps = db.execute("SELECT address, step FROM steps WHERE state = 'open'").fetchall()
        if open_steps:
            problems.append(f"steps still open in the journal: {open_steps}")
        playbooks = playbooks_running_in(self.state_dir / "runs")
        if playbooks:
            problems.append(f"playbooks of a killed apply still running: pids {playbooks}")
        for dom in conn.listAllDomains(0):
            if not dom.name().startswith(self.prefix):
                continue
            if "somnus-reconciler.dev" not in dom.XMLDesc(0):
                problems.append(f"domain {dom.name()} has no ownership mark")
            snapshots = [s for s in dom.listAllSnapshots(0) if s.getName().startswith("somnus-")]
            if len(snapshots) > 5:
                problems.append(f"domain {dom.name()} keeps {len(snapshots)} snapshots (retain 5)")
        names = set()
        for container in client.containers.list(all=True, sparse=True):
            name = container.attrs["Names"][0].lstrip("/")
            if name.startswith(self.prefix):
                names.add(name)
                if not any(k.startswith("io.somnus.") for k in container.attrs.get("Labels", {})):
                    problems.append(f"container {name} has no ownership labels")
        per_container: dict[str, int] = {}
        # One listing call, no inspect of each image: another user of this dockerd may delete
        # its own snapshot images between the two.
        for image in client.api.images(name=f"somnus-snapshots/{self.prefix}*"):
            for tag in image.get("RepoTags") or ():
                repo = tag.split("/", 1)[-1].rsplit(":", 1)[0]
                if repo.startswith(self.prefix):
                    per_container[repo] = per_container.get(repo, 0) + 1
        for repo, count in per_container.items():
            if repo not in names:
                problems.append(f"committed snapshot images of container {repo}, which is gone: {count}")
            elif count > 5:
                problems.append(f"container {repo} keeps {count} snapshot images (retain 5)")
        tools = f"{self.prefix}-tools"
        if tools in names and subprocess.run(["docker", "exec", tools, "test", "-e", "/opt/marker"],
                                             capture_output=True).returncode != 0:
            problems.append(f"container {tools}: its declared pack's marker is missing")
        return problems

    def removed_container_then_killed_pack_step(self, client: docker.DockerClient) -> list[str]:
        """The container with a pack is removed by hand; the apply that makes it anew is
        killed while its pack's playbook runs; the next apply must roll the step back,
        say so first, and install the pack again (issue 12, item 0)."""
        client.containers.get(f"{self.prefix}-tools").remove(force=True)
        proc = subprocess.Popen([sys.executable, "-m", "somnus_reconciler", "apply", str(self.manifests), "-y"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env,
                                start_new_session=True)
        deadline = time.monotonic() + 600
        while not playbooks_running_in(self.state_dir / "runs") and proc.poll() is None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if proc.poll() is not None:
            return [f"the apply ended (exit {proc.returncode}) before its pack step's playbook ran"]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        after = self.somnus("apply", str(self.manifests), "-y")
        lines = after.stdout.splitlines()
        problems = [] if after.returncode == 0 else [f"apply after the kill exited {after.returncode}: {after.stdout}"]
        if not lines or not lines[0].startswith("recovered: "):
            problems.append(f"the apply after the kill does not start with what it recovered: {after.stdout[:800]}")
        if not any("pack install" in line for line in lines):
            problems.append(f"the apply after the kill did not install the pack again: {after.stdout[:800]}")
        diff = self.somnus("diff", str(self.manifests))
        if diff.returncode != 0:
            problems.append(f"diff exited {diff.returncode}: {diff.stdout[-800:]}")
        return problems

    def clean_up(self, conn: libvirt.virConnect, client: docker.DockerClient) -> None:
        """Only the Pool and a pack stay declared (the pack keeps playbooks/ from being read
        as manifests): `apply --prune` deletes the rest."""
        (self.manifests / "ws.yaml").write_text(yaml.safe_dump_all([
            {"apiVersion": "somnus/v1", "kind": "Pool", "metadata": {"name": self.prefix},
             "spec": {"domainType": "qemu"}},
            {"apiVersion": "somnus/v1", "kind": "CapabilityPack", "metadata": {"name": "marker-0"},
             "spec": {"playbook": "playbooks/marker.yml"}},
        ]))
        result = self.somnus("apply", str(self.manifests), "--prune", "-y")
        if result.returncode != 0:
            print(f"clean-up apply --prune exited {result.returncode}: {result.stdout[-2000:]}{result.stderr[-2000:]}",
                  file=sys.stderr, flush=True)
        for backups in settings_mod.resolve().backups_dir.glob(f"{self.prefix}*"):  # the prune's own backups
            shutil.rmtree(backups, ignore_errors=True)


def playbooks_running_in(work_dir: Path) -> list[int]:
    """Pids of processes whose command line names something under `work_dir` (a pack run's data)."""
    prefix = f"{work_dir}{os.sep}"
    return [p.pid for p in psutil.process_iter(["cmdline"])
            if any(arg.startswith(prefix) for arg in p.info["cmdline"] or ())]


GIVE_UP_AFTER = 3  # trials in a row that do not converge end the run early


def run_trials(root: Path, prefix: str, count: int, seed: int) -> list[TrialResult]:
    """The fixed sequence of `Trials.removed_container_then_killed_pack_step` (its problems
    as a first result with seed 0), then `count` trials from `seed` (fewer when
    GIVE_UP_AFTER in a row fail); prints one line per trial (with its seed)."""
    conn = libvirt.open("qemu:///system")
    client = docker.from_env()
    trials = Trials(root, prefix)
    try:
        trials.write(1)
        first = trials.somnus("apply", str(trials.manifests), "-y")
        if first.returncode != 0:
            raise RuntimeError(f"the first apply failed: {first.stdout}{first.stderr}")
        fixed = trials.removed_container_then_killed_pack_step(client)
        print(f"removed container, then a killed pack step: {fixed or 'recovered, converged'}", flush=True)
        results = [TrialResult(0, 0.0, True, True, not fixed, tuple(fixed))]
        for number in range(count):
            trial_seed = seed * 1000 + number
            result = trials.trial(number, trial_seed, conn, client)
            print(f"trial {number + 1}/{count} seed {trial_seed}: killed after {result.killed_after_s}s"
                  f"{'' if result.killed_mid_run else ' (already done)'}, "
                  f"{'recovered, ' if result.recovered else ''}"
                  f"{'converged' if result.converged else 'NOT converged'}"
                  + (f"; problems: {list(result.problems)}" if result.problems else ""), flush=True)
            results.append(result)
            if number + 1 >= GIVE_UP_AFTER and not any(r.converged for r in results[-GIVE_UP_AFTER:]):
                print(f"{GIVE_UP_AFTER} trials in a row did not converge: the rest would not either", flush=True)
                break
        return results
    finally:
        trials.clean_up(conn, client)
        client.close()
        conn.close()
