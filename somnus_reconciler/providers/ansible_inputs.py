"""What a pack run is given: its target, extra vars, inventory and environment.

`ansible_provider.run_pack` and `render_tasks` build their ansible-playbook runs
from these; `bench/packs.py` and the integration tests call `extra_vars` to run
the same playbook by hand. Nothing here runs a process or reaches a guest.

What the caller or the host gets wrong (an unknown family or action, a missing
playbook, a non-loopback address, no `ansible-playbook`) raises `ProviderError`.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from somnus_reconciler.manifests.pack_files import PLAYBOOKS_DIR, pack_playbook_path
from somnus_reconciler.providers.guest_access import GuestKey
from somnus_reconciler.providers.guest_identity import GuestIdentity, pinned, ssh_options
from somnus_reconciler.providers.protocols import ProviderError
from somnus_reconciler.values.desired import DesiredPack

PACK_PLAYBOOK = PLAYBOOKS_DIR / "pack.yml"

OS_FAMILIES = ("debian", "windows", "macos")
ACTIONS = ("install", "uninstall")
GUEST_GROUP = "guest"


@dataclass(frozen=True)
class SshTarget:
    """A VM reached over SSH on a loopback port forward (never a bridge address).

    Ansible's ssh is given the key's public half; `ansible_provider.run_pack` runs it
    with an ssh-agent holding the private one (`guest_access.ssh_agent`).
    """

    host: str
    port: int
    user: str
    key: GuestKey

    @property
    def identity(self) -> GuestIdentity:
        """Its host key, checked strictly by every connection."""
        return self.key.identity


@dataclass(frozen=True)
class DockerTarget:
    """A container reached through `docker exec` (it may have no network at all)."""

    container: str


Target = SshTarget | DockerTarget


class PackVars(TypedDict):
    """The extra vars of playbooks/pack.yml."""

    pack_name: str
    pack_action: str  # install | uninstall
    os_family: str
    pack_packages: list[str]  # for the guest's family's package manager
    pack_playbook: str  # the pack's own playbook, "" for none
    pack_verify: list[str]  # shell commands that must exit 0 after an install


HostVars = dict[str, str | int | bool]
Inventory = dict[str, dict[str, dict[str, HostVars]]]  # group -> "hosts" -> host -> vars


def extra_vars(pack: DesiredPack, os_family: str, action: str) -> PackVars:
    """The extra vars that drive playbooks/pack.yml for this pack."""
    _check_call(pack, os_family, action)
    own = pack_playbook_path(pack) if action == "install" else None
    if own is not None and not own.is_file():
        raise ProviderError(f"pack/{pack.name}", action, f"its playbook {own} does not exist")
    packages = {"debian": pack.spec.packages.apt, "windows": pack.spec.packages.winget,
                "macos": pack.spec.packages.brew}[os_family]
    return {
        "pack_name": pack.name,
        "pack_action": action,
        "os_family": os_family,
        "pack_packages": list(packages),
        "pack_playbook": str(own) if own is not None else "",
        "pack_verify": list(pack.spec.verify) if action == "install" else [],
    }


def _check_call(pack: DesiredPack, os_family: str, action: str) -> None:
    if os_family not in OS_FAMILIES:
        raise ProviderError(f"pack/{pack.name}", action,
                            f"unknown OS family {os_family!r}; expected one of {', '.join(OS_FAMILIES)}")
    if action not in ACTIONS:
        raise ProviderError(f"pack/{pack.name}", action,
                            f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")


def ansible_playbook(pack: DesiredPack) -> str:
    """`ansible-playbook` of this Python environment first: a venv need not be on PATH."""
    beside = Path(sys.executable).parent / "ansible-playbook"
    if beside.is_file():
        return str(beside)
    found = shutil.which("ansible-playbook")
    if found is None:
        raise ProviderError(f"pack/{pack.name}", "run ansible",
                            "ansible-playbook is not installed (pip install 'ansible>=9')")
    return found


def inventory(target: Target, os_family: str, pack: DesiredPack) -> Inventory:
    """One host in the group `guest`, with everything needed to reach it."""
    if isinstance(target, SshTarget):
        name, hostvars = f"vm-{target.host}-{target.port}", _ssh_hostvars(target, os_family, pack)
    else:
        if os_family != "debian":
            raise ProviderError(f"pack/{pack.name}", "reach the guest",
                                f"containers are Debian guests; os family {os_family!r} needs a VM")
        name, hostvars = target.container, _docker_hostvars(target)
    return {GUEST_GROUP: {"hosts": {name: hostvars}}}


def _ssh_hostvars(target: SshTarget, os_family: str, pack: DesiredPack) -> HostVars:
    if not _is_loopback(target.host):
        raise ProviderError(f"pack/{pack.name}", "reach the guest",
                            f"{target.host} is not a loopback address; VMs are reached "
                            "only through port forwards on 127.0.0.1")
    hostvars: HostVars = {
        "ansible_host": target.host,
        "ansible_port": target.port,
        "ansible_user": target.user,
        # The public half: ssh signs with the private one through the run's ssh-agent.
        "ansible_ssh_private_key_file": str(target.key.public_key),
        "ansible_ssh_common_args": shlex.join(ssh_options(pinned(target.identity))),
    }
    if os_family == "windows":
        hostvars["ansible_shell_type"] = "powershell"
    elif os_family == "macos":
        # Homebrew refuses root: run as the SSH user itself.
        hostvars["ansible_python_interpreter"] = "auto_silent"
    else:
        hostvars["ansible_python_interpreter"] = "/usr/bin/python3"
        hostvars["ansible_become"] = target.user != "root"
    return hostvars


def _docker_hostvars(target: DockerTarget) -> HostVars:
    hostvars: HostVars = {
        "ansible_connection": "community.docker.docker",
        "ansible_host": target.container,
        # docker exec as root: no sudo needed (and images often lack it).
        "ansible_user": "root",
        "ansible_become": False,
        "ansible_python_interpreter": "/usr/bin/python3",
    }
    docker_host = os.environ.get("DOCKER_HOST")
    if docker_host:
        hostvars["ansible_docker_extra_args"] = f"--host {docker_host}"
    return hostvars


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def describe(target: Target) -> str:
    if isinstance(target, SshTarget):
        return f"ssh {target.user}@{target.host}:{target.port}"
    return f"container {target.container}"


def control_path_dir(work_dir: Path) -> Path:
    # SSH control sockets must fit a unix socket path (108 bytes) with a
    # 40-character hash; a long work_dir falls back to a short private path.
    candidate = work_dir / "ssh-cp"
    if len(str(candidate)) > 60:
        candidate = Path(tempfile.gettempdir()) / f"somnus-ssh-cp-{os.getuid()}"
    candidate.mkdir(mode=0o700, parents=True, exist_ok=True)
    return candidate


def ansible_env(data_dir: Path, *, control_dir: Path | None = None) -> dict[str, str]:
    """Settings that make a run independent of the user's Ansible configuration.

    Writes an empty `data_dir/ansible.cfg` and names it in ANSIBLE_CONFIG, so neither ./ansible.cfg nor
    ~/.ansible.cfg applies; collections come from the `ansible` package only.
    Facts are gathered only by plays that ask for them (`gather_facts: true`).
    """
    env = {
        "ANSIBLE_CONFIG": str(data_dir / "ansible.cfg"),
        "ANSIBLE_HOME": str(data_dir / "home"),
        "ANSIBLE_LOCAL_TEMP": str(data_dir / "tmp"),
        "ANSIBLE_COLLECTIONS_PATH": str(data_dir / "collections"),
        "ANSIBLE_ROLES_PATH": str(data_dir / "roles"),
        "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "True",
        "ANSIBLE_GATHERING": "explicit",
        # False would put StrictHostKeyChecking=no before the inventory's pinned-key options.
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_TIMEOUT": "30",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        "ANSIBLE_LOCALHOST_WARNING": "False",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False",
    }
    if control_dir is not None:
        env["ANSIBLE_SSH_CONTROL_PATH_DIR"] = str(control_dir)
    if not (data_dir / "ansible.cfg").exists():
        (data_dir / "ansible.cfg").write_text("[defaults]\n")
    return env
