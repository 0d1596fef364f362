"""The container listing a child process reads while a one-shot command loads (issue 14,
item 3; providers.docker_listing), against the real dockerd: it is the listing the
provider makes itself, and an apply whose listing began before another command changed a
container lists again instead of planning from what it saw."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from somnus_reconciler.passes import apply as apply_pass
from somnus_reconciler.passes.converge import PassOptions
from somnus_reconciler.planning.plan import Plan
from somnus_reconciler.providers.docker_listing import PendingListing
from somnus_reconciler.providers.docker_provider import DockerProvider
from tests.integration.conftest import Workspace, container_doc

pytestmark = pytest.mark.integration


def listed_now(tmp_path: Path) -> PendingListing:
    """The real child's listing of this moment, handed over later (by a child that prints it)."""
    started_at = time.time()
    listed = subprocess.run([sys.executable, "-m", "somnus_reconciler.providers.docker_listing"],
                            capture_output=True, check=True, timeout=60).stdout
    (tmp_path / "listing.json").write_bytes(listed)
    replay = f"import sys; sys.stdout.buffer.write(open({str(tmp_path / 'listing.json')!r}, 'rb').read())"
    return PendingListing(subprocess.Popen([sys.executable, "-c", replay], stdout=subprocess.PIPE), started_at)


def test_the_childs_listing_is_the_one_the_provider_makes(workspace: Workspace, tmp_path: Path) -> None:
    ws = workspace
    ws.write("box.yaml", container_doc(ws.name("box")))
    ws.somnus("apply", str(ws.manifests), "-y", check_exit=0)
    from_child = DockerProvider(listing=listed_now(tmp_path)).observe()
    own = DockerProvider().observe()
    assert from_child == own and ws.name("box") in own


def test_an_apply_lists_again_when_another_apply_changed_containers_after_its_listing_began(
        workspace: Workspace, tmp_path: Path) -> None:
    ws = workspace
    ws.write("box.yaml", container_doc(ws.name("box")))
    stale = listed_now(tmp_path)  # before the box exists
    ws.somnus("apply", str(ws.manifests), "-y", check_exit=0)  # another process makes it, under the lock
    plans: list[Plan] = []

    def seen(plan: Plan) -> bool:
        plans.append(plan)
        return False  # show only, as --dry-run

    apply_pass.apply([ws.manifests], PassOptions(on_plan=seen), state_dir=str(ws.state_dir), listing=stale)
    assert plans[0].in_sync, [str(change) for change in plans[0].changes]  # the stale listing would create it
