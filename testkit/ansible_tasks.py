"""The tasks a pack's run would execute, listed by `ansible-playbook --list-tasks`, without a guest.

tests/integration/test_ansible_packs.py uses it to check the winget and Homebrew
task files, which no guest here can run.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

from somnus_reconciler.providers import ansible_inputs
from somnus_reconciler.providers.ansible_inputs import PACK_PLAYBOOK
from somnus_reconciler.values.desired import DesiredPack


def render_tasks(pack: DesiredPack, os_family: str, action: str = "install") -> list[str]:
    """Names of the tasks a run would execute, in order (`ansible-playbook --list-tasks`).

    Task names of the generic playbook start with the tool they use
    (`Apt:`, `Winget:`, `Brew:`, `Verify:`). Needs no guest.
    """
    variables = ansible_inputs.extra_vars(pack, os_family, action)
    with tempfile.TemporaryDirectory(prefix="somnus-list-") as scratch:
        env = dict(os.environ, **ansible_inputs.ansible_env(Path(scratch)))
        result = subprocess.run(
            [ansible_inputs.ansible_playbook(pack), "--list-tasks", "-i", f"{ansible_inputs.GUEST_GROUP}-host,",
             "-e", json.dumps(variables), str(PACK_PLAYBOOK)],
            capture_output=True, text=True, env=env, timeout=120, check=False,
        )
    if result.returncode != 0:
        raise AssertionError(f"pack/{pack.name}: list tasks failed: {result.stderr or result.stdout}")
    return _parse_task_list(result.stdout)


def _parse_task_list(listing: str) -> list[str]:
    tasks: list[str] = []
    in_tasks = False
    for line in listing.splitlines():
        stripped = line.strip()
        if stripped == "tasks:":
            in_tasks = True
        elif stripped.startswith("play #") or not stripped:
            in_tasks = False
        elif in_tasks:
            tasks.append(stripped.split("\tTAGS:")[0].strip())
    return tasks
