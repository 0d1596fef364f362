"""Many objects converged at once (issue 14, item 1), under the real libvirtd and dockerd:
20 containers and 5 tiny-linux VMs with --parallelism 10 (all done, the journal's steps
overlap, a second apply is a no-op), and packs on two debian-12 VMs at the same time,
one failing its verify and rolled back while the other is recorded."""

from __future__ import annotations

import pytest

from somnus_reconciler.journal import Event, Journal
from somnus_reconciler.providers import domain_xml
from tests.integration.conftest import Workspace, container_doc, vm_doc
from tests.integration.test_pack_steps import pack_doc, playbook

pytestmark = pytest.mark.integration


def _steps(ws: Workspace) -> list[Event]:
    with Journal(ws.state_dir / "journal.sqlite") as journal:
        return [e for e in journal.history(limit=1000) if e.started_at is not None]


def _overlapping(steps: list[Event]) -> set[tuple[str, str]]:
    """Pairs of objects whose steps ran at the same time."""
    return {(a.address, b.address) for a in steps for b in steps
            if a.address < b.address and a.started_at is not None and b.started_at is not None
            and a.started_at < b.at and b.started_at < a.at}


def test_twenty_containers_and_five_vms_converge_ten_at_a_time(workspace: Workspace) -> None:
    ws = workspace
    ws.write("many.yaml", *[container_doc(ws.name(f"box{i}"), memory="16Mi") for i in range(20)],
             *[vm_doc(ws.name(f"vm{i}"), memory="128Mi", max_memory="128Mi") for i in range(5)])
    applied = ws.somnus("apply", str(ws.manifests), "-y", "--parallelism", "10", check_exit=0).stdout
    assert "Apply finished: 25 step(s) done, 0 failed." in applied, applied
    steps = _steps(ws)
    assert len(steps) == 25 and all(str(e.outcome) == "ok" for e in steps)
    overlaps = _overlapping(steps)
    assert len(overlaps) >= 10, f"only {len(overlaps)} pairs of steps overlapped"
    assert any(a.startswith("vm/") != b.startswith("vm/") for a, b in overlaps)  # VMs beside containers
    assert "seed.img" not in ws.domain("vm0").XMLDesc(0)  # tiny-linux runs no agent nor sshd: no keys made
    ws.somnus("diff", str(ws.manifests), check_exit=0)
    assert "No changes" in ws.somnus("apply", str(ws.manifests), "-y", check_exit=0).stdout


def test_two_vms_get_their_packs_at_once_and_one_rolls_back_alone(workspace: Workspace) -> None:
    ws = workspace
    books = ws.manifests / "playbooks"
    books.mkdir()
    playbook(books / "marker.yml", [{"name": "marker", "ansible.builtin.copy": {"dest": "/opt/marker", "content": "x"}}])
    ws.somnus("image", "build", "debian-12", check_exit=0)

    def debian(suffix: str, pack: str) -> dict[str, object]:
        doc = vm_doc(ws.name(suffix), memory="1Gi", max_memory="1Gi", image="debian-12")
        doc["spec"]["diskSize"] = "4Gi"  # type: ignore[index]
        doc["spec"]["packs"] = [pack]  # type: ignore[index]
        return doc

    ws.write("ws.yaml", debian("good", "kept"), debian("bad", "refused"),
             pack_doc("kept", playbook="playbooks/marker.yml", verify=["test -e /opt/marker"]),
             pack_doc("refused", playbook="playbooks/marker.yml", verify=["test -e /opt/never-made"]))
    applied = ws.somnus("apply", str(ws.manifests), "-y", "--parallelism", "2", check_exit=1).stdout
    assert "Apply finished: 3 step(s) done, 1 failed." in applied, applied

    packs = {e.address: e for e in _steps(ws) if e.action.startswith("pack install")}
    good, bad = packs[f"vm/{ws.name('good')}"], packs[f"vm/{ws.name('bad')}"]
    assert (str(good.outcome), str(bad.outcome)) == ("ok", "rolled back"), (good, bad)
    assert _overlapping([good, bad]), f"the two pack steps did not overlap: {good}, {bad}"
    marks = {suffix: domain_xml.parse(ws.domain(suffix).XMLDesc(0)).mark for suffix in ("good", "bad")}
    assert marks["good"] is not None and [pack for pack, _ in marks["good"].packs] == ["kept"]
    assert marks["bad"] is not None and marks["bad"].packs == ()
    planned = ws.somnus("diff", str(ws.manifests), check_exit=1).stdout  # the next run sees it
    assert f"vm/{ws.name('bad')}" in planned and f"vm/{ws.name('good')}" not in planned, planned
