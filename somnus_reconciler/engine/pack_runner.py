"""Reaching guests for pack steps: the engine's `PackRunner` (see pack_step).

A VM is reached over SSH on its 127.0.0.1 forward with its own key (made by
guest_access at creation, delivered on the seed disk); a container with
`docker exec`. The pack itself runs through ansible_provider. passes.converge
hands it to the engine, which sees only the `PackRunner` protocol. A VM whose SSH
does not answer in time is a temporary failure ("reach guest"), tried again.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from somnus_reconciler.providers import ansible_processes, ansible_provider, guest_access
from somnus_reconciler.providers.ansible_inputs import DockerTarget, SshTarget
from somnus_reconciler.providers.ansible_results import PackRunResult
from somnus_reconciler.providers.protocols import ProviderError, VmProvider, as_provider_error
from somnus_reconciler.values.desired import DesiredContainer, DesiredPack, DesiredVm
from somnus_reconciler.values.errors import SomnusError


class AnsiblePackRunner:
    def __init__(self, vms: VmProvider, state_dir: Path, work_dir: Path, *, ssh_timeout_s: float = 300.0,
                 run_timeout_s: float = 1800.0, cancel: Callable[[], bool] = lambda: False) -> None:
        self._cancel = cancel  # asked while a playbook runs: True cancels it (then rolled back)
        self._vms = vms
        self._state_dir = state_dir
        self._work_dir = work_dir  # each run's private data directory lives here (Settings.runs_dir)
        self._ssh_timeout_s = ssh_timeout_s
        self._run_timeout_s = run_timeout_s

    def run(self, guest: DesiredVm | DesiredContainer, pack: DesiredPack, action: str,
            on_event: Callable[[str], None]) -> PackRunResult:
        target: SshTarget | DockerTarget
        if isinstance(guest, DesiredContainer):
            target = DockerTarget(guest.name)
            os_family = "debian"
        else:
            target = self._ssh_target(guest)
            os_family = guest.os_family
        self._work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return ansible_provider.run_pack(
            target, pack, os_family=os_family, action=action, work_dir=self._work_dir,
            timeout_s=self._run_timeout_s, on_event=on_event, cancel=self._cancel,
        )

    def end_interrupted_runs(self) -> list[str]:
        """End playbooks a killed apply left running (see ansible_processes); under the apply lock."""
        return ansible_processes.end_interrupted_runs(self._work_dir)

    def _ssh_target(self, vm: DesiredVm) -> SshTarget:
        actual = self._vms.observe_one(vm.name)
        ports = {f.name: f.host_port for f in actual.mark.forwards} if actual and actual.mark else {}
        if "ssh" not in ports:
            raise ProviderError(vm.address, "reach guest", "the domain has no SSH forward")
        try:
            key = guest_access.ensure_keypair(self._state_dir, vm.name)  # VaultError: sealed with another key
            guest_access.wait_for_ssh(ports["ssh"], key, self._ssh_timeout_s)
        except SomnusError as e:  # unreachable (temporary), not the guest, or no ssh client on the host
            raise as_provider_error(vm.address, "reach guest", e) from e
        return SshTarget("127.0.0.1", ports["ssh"], "root", key)
