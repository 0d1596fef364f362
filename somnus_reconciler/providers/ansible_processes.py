"""Ending the playbooks a killed apply left running.

passes.converge calls `end_interrupted_runs` (through
engine.pack_runner.AnsiblePackRunner) under the apply lock, before the engine
rolls back the steps that apply left open: a playbook still running would go on
changing the guest while its step is rolled back.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import psutil


def end_interrupted_runs(work_dir: Path) -> list[str]:
    """End the playbooks a killed process left running in `work_dir`, and remove their data.

    ansible-runner starts ansible-playbook in a session of its own (on a pty, SIGHUP
    ignored), so a SIGKILL of the apply does not reach it: it would go on changing
    the guest while the next apply rolls the step back. Such a playbook is found by
    its command line, which names its data directory under `work_dir`; its process
    group (Ansible's workers and their `docker exec` or ssh children) is killed
    whole. Call it only under the apply lock: no run of this state directory is live
    then. Returns what was ended.
    """
    leftovers = sorted(work_dir.glob("pack-*"))
    if not leftovers:  # every finished run removes its directory: nothing can be left running
        return []
    prefix = str(work_dir) + os.sep
    found = {proc.pid: proc for proc in psutil.process_iter(["cmdline"])
             if any(arg.startswith(prefix) for arg in proc.info["cmdline"] or ())}
    ended: list[psutil.Process] = []
    for pid, proc in found.items():
        try:
            group = os.getpgid(pid)
            if group == pid:  # a playbook's leader: its group goes with it
                os.killpg(group, signal.SIGKILL)
            elif group not in found:  # never a group that is not the run's own
                proc.kill()
            else:
                continue  # a worker: ended with its leader's group
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
        ended.append(proc)
    psutil.wait_procs(ended, timeout=10)
    for data_dir in leftovers:
        shutil.rmtree(data_dir, ignore_errors=True)
    return [f"ended pid {proc.pid}: a playbook left running by an interrupted pack step" for proc in ended]
