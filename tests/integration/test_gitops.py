"""`somnus gitops` following a local bare repository, against the real dockerd:
a pushed commit is applied and its revision recorded on the objects; a commit
that fails validation, and one whose apply rolls back, are quarantined while the
previous revision stays in force; a later good commit is applied."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import Workspace, container_doc
from tests.integration.event_stream import EventStream
from tests.integration.test_pack_steps import box_doc, pack_doc

pytestmark = pytest.mark.integration
MiB = 2**20


class Repo:
    """A bare repository and a work tree that pushes to it."""

    def __init__(self, root: Path) -> None:
        self.bare, self.work = root / "origin.git", root / "work"
        subprocess.run(["git", "init", "--quiet", "--bare", "--initial-branch=main", str(self.bare)], check=True)
        subprocess.run(["git", "init", "--quiet", "--initial-branch=main", str(self.work)], check=True)
        self.git("remote", "add", "origin", str(self.bare))

    def git(self, *args: str) -> str:
        env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid", "GIT_COMMITTER_NAME": "t",
               "GIT_COMMITTER_EMAIL": "t@example.invalid", "PATH": "/usr/bin:/bin"}
        return subprocess.run(["git", "-C", str(self.work), *args], check=True, capture_output=True,
                              text=True, env=env).stdout.strip()

    def push(self, files: dict[str, str], message: str, *, remove: tuple[str, ...] = ()) -> str:
        for name in remove:
            (self.work / name).unlink()
        for name, content in files.items():
            path = self.work / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
        self.git("add", "-A")
        self.git("commit", "--quiet", "-m", message)
        self.git("push", "--quiet", "origin", "main")
        return self.git("rev-parse", "HEAD")


def manifests(ws: Workspace, *docs: dict[str, Any]) -> str:
    pool = {"apiVersion": "somnus/v1", "kind": "Pool", "metadata": {"name": ws.prefix},
            "spec": {"reserved": {"vcpus": 0, "memory": "1Gi"}}}
    return yaml.safe_dump_all([pool, *docs], sort_keys=False)


def test_gitops_applies_good_revisions_and_quarantines_bad_ones(workspace: Workspace, tmp_path: Path) -> None:
    ws = workspace
    repo = Repo(tmp_path)
    fails = yaml.safe_dump([{"name": "fails", "hosts": "all", "gather_facts": False,
                             "tasks": [{"name": "fail on purpose", "ansible.builtin.command": "false"}]}])
    first = repo.push({"manifests/ws.yaml": manifests(ws, container_doc(ws.name("box")))}, "first")
    stream = EventStream(["gitops", f"file://{repo.bare}", "--branch", "main", "--path", "manifests",
                          "--interval", "2s", "--prune"], ws.state_dir)
    try:
        stream.reconciled(trigger="revision", revision=first, outcome="converged")
        assert ws.get_json()[f"container/{ws.name('box')}"]["revision"] == first

        mark = stream.mark()
        bad = repo.push({"manifests/ws.yaml": manifests(ws, container_doc(ws.name("box"), memory="96Mi"))
                         + "broken: [\n"}, "a syntax error")
        invalid = stream.reconciled(after=mark, trigger="revision", revision=bad, outcome="invalid")
        assert "ws.yaml" in invalid["errors"][0]
        # Quarantined: later intervals resync the revision in force, never the bad one.
        stream.reconciled(after=mark, trigger="resync", revision=first, outcome="in sync")
        stream.reconciled(after=stream.mark(), trigger="resync", revision=first)
        assert [e for e in stream.events[mark:] if e.get("revision") == bad and e["event"] == "reconciled"] == [invalid]

        mark = stream.mark()
        rolled = repo.push({
            "manifests/playbooks/fails.yml": fails,
            "manifests/ws.yaml": manifests(ws, pack_doc("fails", playbook="playbooks/fails.yml"),
                                           container_doc(ws.name("box")), box_doc(ws.name("tools"), ["fails"])),
        }, "a pack that fails")
        failed = stream.reconciled(after=mark, trigger="revision", revision=rolled, outcome="failed", timeout_s=300)
        assert "fail on purpose" in " ".join(failed["errors"])
        # The last good revision is applied again at once: the container it lacks goes (--prune).
        stream.reconciled(after=mark, trigger="revision", revision=first, outcome="converged", timeout_s=300)
        assert f"container/{ws.name('tools')}" not in ws.get_json()

        mark = stream.mark()
        good = repo.push({"manifests/ws.yaml": manifests(ws, container_doc(ws.name("box"), memory="128Mi"))},
                         "a good one", remove=("manifests/playbooks/fails.yml",))
        stream.reconciled(after=mark, trigger="revision", revision=good, outcome="converged")
        box = ws.get_json()[f"container/{ws.name('box')}"]
        assert box["revision"] == good
        assert int(ws.docker.api.inspect_container(ws.name("box"))["HostConfig"]["Memory"]) == 128 * MiB
    finally:
        assert stream.stop() == 0
