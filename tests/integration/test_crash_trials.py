"""Crash at any point (testkit/crash_trials.py): SOMNUS_CRASH_TRIALS trials (20 by default)
of SIGKILL mid-apply with a VM, containers and pack steps; the seed is printed and can be
given back with SOMNUS_CRASH_SEED to replay a run."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from testkit.crash_trials import run_trials
from tests.integration.conftest import Workspace

pytestmark = pytest.mark.integration


def test_every_killed_apply_is_recovered_and_nothing_is_lost(workspace: Workspace, tmp_path: Path) -> None:
    count = int(os.environ.get("SOMNUS_CRASH_TRIALS", "20"))
    seed = int(os.environ.get("SOMNUS_CRASH_SEED", str(random.randrange(1, 10**6))))
    print(f"\ncrash trials: {count}, seed {seed} (SOMNUS_CRASH_SEED={seed} replays them)")
    results = run_trials(tmp_path / "trials", workspace.prefix, count, seed)
    failures = [r for r in results if r.problems or not r.converged]
    assert not failures, "\n".join(f"seed {r.seed}: {list(r.problems)}" for r in failures)
    assert len(results) == count + 1  # the fixed sequence first, then the random trials
    assert sum(r.killed_mid_run for r in results[1:]) >= count // 2, "most kills should land mid-apply"
