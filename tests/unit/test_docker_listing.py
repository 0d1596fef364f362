"""The container listing a child process reads for a one-shot command (providers.docker_listing):
taken by the first observe only, dropped when it may be stale, ignored when the child failed.
The children here print a canned listing; tests/integration/test_docker_listing.py runs the real one."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from somnus_reconciler.providers.docker_listing import PendingListing
from somnus_reconciler.providers.docker_provider import DockerProvider
from somnus_reconciler.providers.protocols import BackendUnavailable

SUMMARY = {"Names": ["/box"], "Id": "c0ffee", "Image": "busybox", "State": "running",
           "Labels": {"io.somnus.managed": "true", "io.somnus.spec-hash": "h1"}}
NOWHERE = "unix:///nonexistent/docker.sock"  # observe without a listing fails: it had to connect


def child(code: str) -> PendingListing:
    return PendingListing(subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE), time.time())


def printing(summaries: object) -> PendingListing:
    return child(f"import sys; sys.stdout.write({json.dumps(json.dumps(summaries))})")


def test_the_first_observe_takes_the_childs_listing_and_the_next_one_asks_dockerd() -> None:
    provider = DockerProvider(NOWHERE, listing=printing([SUMMARY]))
    observed = provider.observe()
    assert list(observed) == ["box"] and (observed["box"].container_id, observed["box"].spec_hash) == ("c0ffee", "h1")
    with pytest.raises(BackendUnavailable):
        provider.observe()


@pytest.mark.parametrize("code", ["import sys; sys.exit(1)", "print('not json')", "print('{}')"])
def test_a_child_that_could_not_list_leaves_observe_to_ask_dockerd(code: str) -> None:
    provider = DockerProvider(NOWHERE, listing=child(code))
    with pytest.raises(BackendUnavailable):
        provider.observe()


def test_a_listing_begun_before_the_last_change_is_dropped_and_a_later_one_kept() -> None:
    listing = printing([SUMMARY])
    provider = DockerProvider(NOWHERE, listing=listing)
    provider.drop_listing(unless_started_after=listing.started_at - 1)  # the change came before it began
    assert list(provider.observe()) == ["box"]
    listing = printing([SUMMARY])
    provider = DockerProvider(NOWHERE, listing=listing)
    provider.drop_listing(unless_started_after=listing.started_at + 1)  # a change came after it began
    with pytest.raises(BackendUnavailable):
        provider.observe()


def test_closing_the_provider_ends_a_child_nobody_took() -> None:
    listing = child("import time; time.sleep(60)")
    DockerProvider(NOWHERE, listing=listing).close()
    assert listing._process.returncode is not None
