"""Secret files (issue 13, item 3): `files:` on VMs and containers validated at their line,
planned by keyed digest (the plan names the Secret, never the value), run by the engine
between a snapshot and its record or rollback (recording doubles), and written by the
real agent (a subprocess on loopback) atomically with mode and owner."""

from __future__ import annotations

import hashlib
import os
import pwd
import stat
import textwrap
from pathlib import Path

import pytest

from somnus_reconciler.engine.file_step import FileSteps
from somnus_reconciler.engine.snapshots import GuestSnapshots
from somnus_reconciler.journal import Journal
from somnus_reconciler.manifests import loader, references
from somnus_reconciler.planning import plan
from somnus_reconciler.planning.plan import Action
from somnus_reconciler.providers.agent_client import AgentClient, AgentRefused
from somnus_reconciler.values.actual import ActualContainer, WrittenFile
from somnus_reconciler.values.desired import DesiredContainer, GuestFiles, Revealed, SecretFile
from somnus_reconciler.values.diagnostics import InvalidInput, Source
from somnus_reconciler.values.outcome import Outcome
from testkit.agent_process import TOKEN, Agent, running_agent

CLEAR = "deploy-key-body-that-must-not-leak"
ARMOR = "-----BEGIN AGE ENCRYPTED FILE-----\nYWdl\n-----END AGE ENCRYPTED FILE-----\n"


def _manifest(tmp_path: Path, files: str) -> Path:
    """A container whose `files:` (line 6 on) are `files`, and secret/hub with one key."""
    armor = "".join(f"        {line}\n" for line in ARMOR.splitlines())
    head = "apiVersion: somnus/v1\nkind: Container\nmetadata: {name: box}\nspec:\n  image: img\n  files:\n"
    secret = (f"---\napiVersion: somnus/v1\nkind: Secret\nmetadata: {{name: hub}}\nspec:\n"
              f"  recipients: [age1{'q' * 58}]\n  data:\n    token: |\n{armor}")
    path = tmp_path / "ws.yaml"
    path.write_text(head + textwrap.indent(files, "    ") + secret)
    return path


@pytest.mark.parametrize(("files", "line", "problem"), [
    ("- {path: etc/token, secretRef: {name: hub, key: token}}\n", 7, "spec.files[0].path: 'etc/token' must be an absolute file path"),
    ("- {path: /etc/../token, secretRef: {name: hub, key: token}}\n", 7, "must be an absolute file path in the guest"),
    ("- {path: /t, secretRef: {name: hub, key: token}, mode: '0999'}\n", 7, "spec.files[0].mode"),
    ("- {path: /t, secretRef: {name: hub, key: token}}\n- {path: /t, secretRef: {name: hub, key: token}}\n", 6,
     "path '/t' is given twice"),
    ("- {path: /t, secretRef: {name: hub, key: nope}}\n", 7,
     "spec.files[0].secretRef.key: secret/hub has no key 'nope' (its keys: token)"),
    ("- {path: /t, secretRef: {name: gone, key: token}}\n", 7, "spec.files[0].secretRef.name"),
])
def test_a_bad_file_is_refused_at_its_line(tmp_path: Path, files: str, line: int, problem: str) -> None:
    path = _manifest(tmp_path, files)
    with pytest.raises(InvalidInput) as caught:
        references.resolve(loader.load([path]))
    shown = [str(d) for d in caught.value.diagnostics]
    assert any(p.startswith(f"{path}:") and problem in p for p in shown), shown
    assert any(f"{path}:{line}:" in p for p in shown), shown


def test_files_resolve_with_their_mode_and_owner(tmp_path: Path) -> None:
    path = _manifest(tmp_path, "- {path: /run/secrets/t, secretRef: {name: hub, key: token}, mode: '0440', "
                               "owner: 'nobody:nogroup'}\n")
    box = references.resolve(loader.load([path])).containers["box"]
    assert box.secret_files == (SecretFile("/run/secrets/t", "hub", "token", 0o440, "nobody:nogroup"),)


def _box(*files: tuple[str, str]) -> DesiredContainer:
    """A container with secret files (path, digest), each from secret/hub."""
    return DesiredContainer(
        "box", "img", None, 1.0, 2**30, "none", (), (), None, Source(Path("m.yaml"), 1),
        secret_files=tuple(SecretFile(p, "hub", "token", 0o600, "root") for p, _ in files),
        files=GuestFiles(tuple(files), tuple((p, Revealed(CLEAR, "hub/token")) for p, _ in files)))


def _running(box: DesiredContainer, *applied: tuple[str, str]) -> ActualContainer:
    return ActualContainer("box", "cid", "img", "running", box.spec_hash, files=applied)


def test_the_plan_writes_what_differs_removes_what_is_gone_and_names_only_the_secret() -> None:
    box = _box(("/a", "d1"), ("/b", "d2"))
    assert plan.files_change(box, {"/a": "d1", "/b": "d2"}, _running(box)) == []
    [change] = plan.files_change(box, {"/a": "d1", "/b": "old", "/c": "d3"}, _running(box))
    assert change.action is Action.FILES and change.reason == "write /b (secret/hub changed), remove /c"
    [new] = plan.files_change(box, {}, None)
    assert new.reason == "write /a (secret/hub), /b (secret/hub)"
    assert CLEAR not in repr(change) + repr(new)
    unrevealed = DesiredContainer("box", "img", None, 1.0, 2**30, "none", (), (), None, Source(Path("m.yaml"), 1),
                                  secret_files=box.secret_files)
    assert plan.files_change(unrevealed, {}, None) == []  # validate: nothing decrypted, nothing planned


class Guest:
    """The container provider double: snapshots, restore and write_files, recorded."""

    def __init__(self, *, fail: bool = False, wrong_mode: bool = False) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.fail, self.wrong_mode = fail, wrong_mode

    def snapshot(self, name: str, snapshot: str, description: str) -> str:
        self.calls.append(("snapshot", name))
        return snapshot

    def snapshots(self, name: str) -> list[object]:
        return []

    def restore(self, c: DesiredContainer, snapshot: str) -> str:
        self.calls.append(("restore", c.name))
        return "cid"

    def delete(self, name: str, **_: object) -> None:
        pass

    def observe_one(self, name: str) -> ActualContainer:
        return ActualContainer(name, "cid", "img", "running", "hash")

    def write_files(self, name: str, writes: list[tuple[SecretFile, Revealed]], removes: list[str]) -> list[WrittenFile]:
        self.calls.append(("write_files", name, *(f.path for f, _ in writes), *(f"-{p}" for p in removes)))
        if self.fail:
            from somnus_reconciler.providers.protocols import ProviderError
            raise ProviderError(f"container/{name}", f"write {writes[-1][0].path}", "Read-only file system")
        sha = {f.path: hashlib.sha256(v.reveal().encode()).hexdigest() for f, v in writes}
        return [WrittenFile(f.path, sha[f.path], 0o644 if self.wrong_mode else f.mode, 0, 0) for f, _ in writes]


@pytest.mark.parametrize(("guest", "outcome", "recorded"), [
    (Guest(), Outcome.OK, {"/a": "d1", "/b": "d2"}),
    (Guest(fail=True), Outcome.ROLLED_BACK, {"/c": "d3"}),
    (Guest(wrong_mode=True), Outcome.ROLLED_BACK, {"/c": "d3"}),
])
def test_the_step_writes_between_a_snapshot_and_its_record_or_rollback(
        tmp_path: Path, guest: Guest, outcome: Outcome, recorded: dict[str, str]) -> None:
    box = _box(("/a", "d1"), ("/b", "d2"))
    with Journal(tmp_path / "journal.sqlite") as journal:
        journal.set_container_file("box", "cid", "/c", "d3")
        [change] = plan.files_change(box, {"/c": "d3"}, _running(box, ("/c", "d3")))
        snapshots = GuestSnapshots(vms=None, containers=guest, journal=journal)  # type: ignore[arg-type]
        attempt = FileSteps(snapshots, None).run(change, lambda line: None)
        assert attempt.outcome is outcome, attempt.message
        assert guest.calls[:2] == [("snapshot", "box"), ("write_files", "box", "/a", "/b", "-/c")]
        assert (("restore", "box") in guest.calls) == (outcome is Outcome.ROLLED_BACK)
        assert dict(journal.container_packs(files=True).get("box", ("", ()))[1]) == recorded
        assert journal.container_packs() == {}  # packs and files apart
        assert CLEAR not in attempt.message


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Agent:
    with running_agent(tmp_path_factory.mktemp("agent")) as a:
        yield a


def test_the_agent_writes_each_file_atomically_with_its_mode_and_owner(agent: Agent, tmp_path: Path) -> None:
    client = AgentClient(agent.port, TOKEN, agent.certificate, "vm1")
    target = tmp_path / "made" / "token"
    (tmp_path / "old").write_text("old")
    written = client.write_files([(SecretFile(str(target), "hub", "token", 0o440, "nobody:nogroup"),
                                   Revealed(CLEAR, "hub/token"))], [str(tmp_path / "old")])
    assert target.read_text() == CLEAR and not (tmp_path / "old").exists()
    st = target.stat()
    assert stat.S_IMODE(st.st_mode) == 0o440 and st.st_uid == pwd.getpwnam("nobody").pw_uid
    assert written == [WrittenFile(str(target), hashlib.sha256(CLEAR.encode()).hexdigest(), 0o440, st.st_uid,
                                   st.st_gid)]
    assert [p.name for p in target.parent.iterdir()] == ["token"]  # no temporary file left


def test_the_agent_refuses_a_read_only_directory_and_an_unknown_owner_naming_the_path(
        agent: Agent, tmp_path: Path) -> None:
    client = AgentClient(agent.port, TOKEN, agent.certificate, "vm1")
    for path, owner, problem in (("/proc/somnus-token", "root", "/proc/somnus-token"),
                                 (str(tmp_path / "t"), "no-such-user", "no user 'no-such-user' in the guest")):
        with pytest.raises(AgentRefused) as refused:
            client.write_files([(SecretFile(path, "hub", "token", 0o600, owner), Revealed(CLEAR, "hub/token"))], [])
        assert refused.value.status == 422 and problem in str(refused.value) and CLEAR not in str(refused.value)
    assert not os.path.exists(tmp_path / "t")


def test_a_recreated_container_gets_every_file_again_and_the_fields_say_what_happens_to_each() -> None:
    from somnus_reconciler.values.actual import ActualState
    from somnus_reconciler.values.desired import DesiredState
    from somnus_reconciler.values.model import PoolSpec

    box = _box(("/a", "d1"))
    replaced = ActualContainer("box", "cid", "img", "running", "an-older-spec", files=(("/a", "d1"),))
    changes = plan.compute(DesiredState({}, {"box": box}, {}, PoolSpec()), ActualState({}, {"box": replaced}),
                           prune=False).changes
    assert [c.action for c in changes] == [Action.REPLACE, Action.FILES]
    assert [(f.name, f.before, f.after) for f in changes[1].fields] == [("/a", "absent", "secret/hub/token")]
