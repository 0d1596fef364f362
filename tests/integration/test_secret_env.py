"""A container's environment from an age-encrypted Secret (issue 13), through the CLI and
the real dockerd: `somnus secret keygen` and `encrypt`, apply, the value in the
container (docker exec), and a file from it with its mode and owner; a new value
recreates the container and the plan names the Secret, not the value; a file write
that fails rolls its step back; a value encrypted to another identity is refused at its line
and nothing changes. `gitops` applies an encrypted Secret from a local repository and
quarantines a revision whose value is for another identity. The clear values are given to the session's secret scan, which
fails if any turns up in an output, the journal, the history index or a state file."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from somnus_reconciler.providers import age_secrets
from tests.integration import secret_scan
from tests.integration.conftest import Workspace, container_doc
from tests.integration.event_stream import EventStream
from tests.integration.test_gitops import Repo

pytestmark = pytest.mark.integration

FIRST, SECOND = "hf_first-0d5c9e-never-in-clear", "hf_second-7b21aa-never-in-clear"


TOKEN_FILE = {"path": "/run/secrets/hub-token", "secretRef": {"name": "hub", "key": "token"}, "mode": "0400",
              "owner": "nobody:nogroup"}


def _docs(ws: Workspace, recipient: str, value: str,
          files: tuple[dict[str, Any], ...] = (TOKEN_FILE,)) -> tuple[dict[str, Any], dict[str, Any]]:
    box = container_doc(ws.name("box"), env={"PLAIN": "visible"})
    box["spec"]["env"]["HF_TOKEN"] = {"secretRef": {"name": "hub", "key": "token"}}
    box["spec"]["files"] = list(files)
    secret = {"apiVersion": "somnus/v1", "kind": "Secret", "metadata": {"name": "hub"},
              "spec": {"recipients": [recipient], "data": {"token": value}}}
    return box, secret


def _declare(ws: Workspace, recipient: str, value: str, files: tuple[dict[str, Any], ...] = (TOKEN_FILE,)) -> Path:
    path = ws.write("ws.yaml", *_docs(ws, recipient, value, files))
    assert "1 value(s) encrypted" in ws.somnus("secret", "encrypt", str(path), check_exit=0).stdout
    assert value not in path.read_text()
    return path


def _env(ws: Workspace) -> str:
    return _in_box(ws, 'printf %s "$HF_TOKEN"')


def _in_box(ws: Workspace, script: str) -> str:
    return subprocess.run(["docker", "exec", ws.name("box"), "sh", "-c", script], capture_output=True,
                          text=True, check=True).stdout.strip()


def _token_file(ws: Workspace) -> str:
    return _in_box(ws, "stat -c '%a %U:%G' /run/secrets/hub-token && cat /run/secrets/hub-token")


def test_an_env_value_from_a_secret_reaches_the_container_and_a_new_one_recreates_it(workspace: Workspace) -> None:
    ws = workspace
    for label, value in (("first", FIRST), ("second", SECOND)):
        secret_scan.SESSION.register_value(f"secret hub/token ({label}) of {ws.prefix}", value)
    public = ws.somnus("secret", "keygen", check_exit=0).stdout.strip()

    _declare(ws, public, FIRST)
    ws.somnus("apply", str(ws.manifests), "-y", check_exit=0)
    assert _env(ws) == FIRST and _token_file(ws) == f"400 nobody:nogroup\n{FIRST}"
    first_id = ws.docker.containers.get(ws.name("box")).id
    ws.somnus("get", "-o", "json", check_exit=0)
    ws.somnus("describe", f"container/{ws.name('box')}", check_exit=0)
    ws.somnus("diff", str(ws.manifests), check_exit=0)

    _declare(ws, public, SECOND)
    planned = ws.somnus("diff", str(ws.manifests), check_exit=1).stdout
    assert f"container/{ws.name('box')}" in planned and "spec or secret/hub changed" in planned
    ws.somnus("apply", str(ws.manifests), "-y", check_exit=0)
    assert _env(ws) == SECOND and ws.docker.containers.get(ws.name("box")).id != first_id
    assert _token_file(ws) == f"400 nobody:nogroup\n{SECOND}"
    ws.somnus("diff", str(ws.manifests), check_exit=0)

    stranger = age_secrets.keygen(ws.root / "stranger.key")
    _declare(ws, stranger, FIRST)
    refused = ws.somnus("apply", str(ws.manifests), "-y", check_exit=2)
    assert "ws.yaml:" in refused.stderr and "secret/hub: spec.data.token" in refused.stderr
    assert "not encrypted to this identity" in refused.stderr
    assert _env(ws) == SECOND and _token_file(ws) == f"400 nobody:nogroup\n{SECOND}"  # nothing that uses it changed
    ws.somnus("history", check_exit=0)  # its output, the journal and the history index: scanned for the values


def test_a_file_write_that_fails_in_a_container_rolls_the_step_back(workspace: Workspace) -> None:
    ws = workspace
    secret_scan.SESSION.register_value(f"secret hub/token (rollback) of {ws.prefix}", FIRST)
    public = ws.somnus("secret", "keygen", check_exit=0).stdout.strip()
    _declare(ws, public, FIRST, files=())
    ws.somnus("apply", str(ws.manifests), "-y", check_exit=0)
    first = {"path": "/root/first-token", "secretRef": {"name": "hub", "key": "token"}}
    read_only = {"path": "/sys/somnus-token", "secretRef": {"name": "hub", "key": "token"}}  # sysfs: read-only
    _declare(ws, public, FIRST, files=(first, read_only))
    failed = ws.somnus("apply", str(ws.manifests), "-y", check_exit=1)
    assert "/sys/somnus-token" in failed.stdout and "Read-only file system" in failed.stdout, failed.stdout
    assert "rolled back to somnus-files-" in failed.stdout, failed.stdout
    assert _in_box(ws, "test -e /root/first-token && echo there || echo gone") == "gone"
    assert _env(ws) == FIRST  # made anew from the snapshot, with its declared environment
    assert "files: write /root/first-token (secret/hub), /sys/somnus-token (secret/hub)" in \
        ws.somnus("diff", str(ws.manifests), check_exit=1).stdout  # the next run sees it


def test_gitops_applies_an_encrypted_secret_and_quarantines_a_value_for_another_identity(
        workspace: Workspace, tmp_path: Path) -> None:
    ws = workspace
    secret_scan.SESSION.register_value(f"secret hub/token (gitops) of {ws.prefix}", FIRST)
    public = ws.somnus("secret", "keygen", check_exit=0).stdout.strip()
    stranger = age_secrets.keygen(ws.root / "stranger.key")
    encrypted = {recipient: _declare(ws, recipient, FIRST).read_text() for recipient in (public, stranger)}
    repo = Repo(tmp_path)
    first = repo.push({"manifests/ws.yaml": encrypted[public]}, "an encrypted secret")
    stream = EventStream(["gitops", f"file://{repo.bare}", "--branch", "main", "--path", "manifests",
                          "--interval", "2s"], ws.state_dir)
    try:
        stream.reconciled(trigger="revision", revision=first, outcome="converged")
        assert _env(ws) == FIRST
        mark = stream.mark()
        bad = repo.push({"manifests/ws.yaml": encrypted[stranger]}, "a value for another identity")
        invalid = stream.reconciled(after=mark, trigger="revision", revision=bad, outcome="invalid")
        assert "secret/hub" in invalid["errors"][0] and "not encrypted to this identity" in invalid["errors"][0]
        stream.reconciled(after=mark, trigger="resync", revision=first, outcome="in sync")
    finally:
        assert stream.stop() == 0
    assert _env(ws) == FIRST
