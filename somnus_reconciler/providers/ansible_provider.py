"""Capability packs installed in a guest with Ansible, through ansible-runner.

The engine calls `run_pack` (through engine.pack_runner) for one pack on one
guest (a VM over SSH on a 127.0.0.1 port forward, or a container through
`docker exec`). Every run executes the generic `playbooks/pack.yml` with the
extra vars, inventory and environment of `ansible_inputs`. `ansible_results` reads what
the run reports; `ansible_processes` ends runs a killed apply left behind.

This is the only module that imports `ansible_runner`. What a guest does wrong
(a failed task, an unreachable host, a timeout) comes back as a
`PackRunResult`; what the caller or the host does wrong (an unknown family, a
missing playbook, no `ansible-playbook`, ansible-runner failing to start)
raises `ProviderError`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from somnus_reconciler.providers import ansible_inputs, ansible_results, guest_access
from somnus_reconciler.providers.ansible_inputs import PACK_PLAYBOOK, SshTarget, Target
from somnus_reconciler.providers.ansible_results import PackRunResult
from somnus_reconciler.providers.protocols import ProviderError, as_provider_error
from somnus_reconciler.providers.ssh_agent import SshAgent
from somnus_reconciler.values.desired import DesiredPack
from somnus_reconciler.values.errors import SomnusError


def run_pack(
    target: Target,
    pack: DesiredPack,
    *,
    os_family: str,
    action: str = "install",
    work_dir: Path,
    timeout_s: float = 1800,
    on_event: Callable[[str], None] = lambda line: None,
    cancel: Callable[[], bool] = lambda: False,
) -> PackRunResult:
    """Install (or uninstall) one pack on one guest; blocks until done or `timeout_s`.

    `on_event` receives a short line per play and task result. The private data
    directory (inventory, artifacts, Ansible's local temp) lives under
    `work_dir` while the run lasts and is removed afterwards. A VM's private key
    never goes in it: ssh takes it from the run's own ssh-agent (`guest_access.ssh_agent`,
    its socket in that directory), stopped when the run ends.
    """
    variables = ansible_inputs.extra_vars(pack, os_family, action)
    binary = ansible_inputs.ansible_playbook(pack)
    inventory = ansible_inputs.inventory(target, os_family, pack)
    work_dir.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix=f"pack-{pack.name}-", dir=work_dir))  # mode 0700
    events = ansible_results.EventLog(on_event)
    started = time.monotonic()
    import ansible_runner  # here, not at the top: every `somnus diff` imports this module

    stack = contextlib.ExitStack()  # the run's ssh-agent, stopped before its directory goes
    try:
        agent = _ssh_agent(stack, target, data_dir, f"pack/{pack.name}", action)
        inventory_file = data_dir / "inventory.json"
        inventory_file.write_text(json.dumps(inventory))
        runner = ansible_runner.run(
            private_data_dir=str(data_dir),
            ident="run",
            playbook=str(PACK_PLAYBOOK),
            inventory=str(inventory_file),
            extravars=variables,
            envvars=_envvars(data_dir, work_dir, target, binary, agent),
            quiet=True,
            suppress_env_files=True,
            event_handler=events.handle,
            # Given, so that ansible-runner does not install its own SIGINT/SIGTERM
            # handlers over the caller's (the watch loop's stop, apply's).
            cancel_callback=cancel,
            timeout=max(1, math.ceil(timeout_s)),
        )
        status = str(runner.status)
        stdout_tail = ansible_results.read_tail(Path(runner.config.artifact_dir) / "stdout")
    except ProviderError:
        raise
    except Exception as e:  # noqa: BLE001 - ansible-runner raises its own and OS errors alike
        raise ProviderError(f"pack/{pack.name}", f"{action} on {ansible_inputs.describe(target)}",
                            f"ansible-runner could not run: {e}") from e
    finally:
        stack.close()
        shutil.rmtree(data_dir, ignore_errors=True)
    return events.result(status, stdout_tail, time.monotonic() - started, timeout_s)


def _ssh_agent(stack: contextlib.ExitStack[bool | None], target: Target, data_dir: Path, address: str,
               action: str) -> SshAgent | None:
    """The run's ssh-agent holding the VM's key, stopped with `stack`; None for a container.
    Its socket is under `data_dir`, so `ansible_processes.end_interrupted_runs` also ends
    the agent of a run a killed apply left."""
    if not isinstance(target, SshTarget):
        return None
    try:
        return stack.enter_context(guest_access.ssh_agent(target.key, parent=data_dir))
    except SomnusError as e:
        raise as_provider_error(address, f"{action} on {ansible_inputs.describe(target)}", e) from e


def _envvars(data_dir: Path, work_dir: Path, target: Target, binary: str, agent: SshAgent | None) -> dict[str, str]:
    control_dir = ansible_inputs.control_path_dir(work_dir) if isinstance(target, SshTarget) else None
    return {
        **ansible_inputs.ansible_env(data_dir, control_dir=control_dir),
        # ansible-runner finds ansible-playbook on PATH (`binary=` would drop the playbook).
        "PATH": os.pathsep.join([str(Path(binary).parent), os.environ.get("PATH", os.defpath)]),
        **(agent.env if agent is not None else {}),  # SSH_AUTH_SOCK: the VM's key, in memory only
    }
