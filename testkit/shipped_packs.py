"""The shipped capability packs (capability_packs/) in real containers: what
tests/integration/test_shipped_packs.py and bench/packs.py share.

Each pack goes into a `somnus/base:bookworm` container of its own with `network: host`,
the only way a container reaches the Debian mirror and PyPI here, and is applied
with the manifests of capability_packs/ as they ship.

research-browser gets the test pack `host-trust` first. On these machines TLS to
PyPI passes an egress proxy whose certificate authority the host trusts (its files
in /usr/local/share/ca-certificates); the guest's pip has to trust it too, as any
guest behind such a proxy does. host-trust copies those files into the guest and
rebuilds its certificate store; where the host has none it copies nothing. apt needs
none of it: the mirror is plain HTTP with signed indexes.

In a debian-12 VM research-browser also gets `pypi-hosts`: such a guest has no
nameserver and finds its Debian mirror in its /etc/hosts
(somnus_reconciler/images/rootfs.py), so this pack adds PyPI's two hosts there as
this host resolves them.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from somnus_reconciler.images import rootfs
from somnus_reconciler.journal import Journal

REPO = Path(__file__).resolve().parent.parent
CAPABILITY_PACKS = REPO / "capability_packs"
SHIPPED = ("base-tools", "web-development", "data-analysis", "ai-research", "research-browser")
IMAGE = "somnus/base:bookworm"
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
HOST_TRUST = "host-trust"
PYPI_HOSTS = "pypi-hosts"
PYPI_HOSTNAMES = ("pypi.org", "files.pythonhosted.org")
VM_BROWSER_PACKS = ["base-tools", HOST_TRUST, PYPI_HOSTS, "research-browser"]  # research-browser in a VM


def guest_packs(pack: str) -> list[str]:
    """What a container that proves `pack` declares (its `requires` come with it)."""
    return [HOST_TRUST, pack] if pack == "research-browser" else [pack]


def shipped_spec(pack: str) -> dict[str, Any]:
    """The `spec` of a shipped pack, as its manifest declares it."""
    spec: dict[str, Any] = yaml.safe_load((CAPABILITY_PACKS / f"{pack}.yaml").read_text())["spec"]
    return spec


def host_trust_pack(manifests: Path) -> dict[str, Any]:
    """Write host-trust's playbook under `manifests`/playbooks; its manifest document."""
    authorities = sorted(str(path) for path in HOST_CA_DIR.glob("*.crt"))
    tasks: list[dict[str, Any]] = [
        {"name": "Copy the host's own certificate authorities",
         "ansible.builtin.copy": {"src": "{{ item }}", "dest": f"{HOST_CA_DIR}/", "mode": "0644"},
         "loop": authorities, "register": "host_trust_copied"},
        {"name": "Rebuild the guest's certificate store",
         "ansible.builtin.command": "update-ca-certificates",
         "when": "host_trust_copied is changed", "changed_when": True},
    ]
    books = manifests / "playbooks"
    books.mkdir(parents=True, exist_ok=True)
    (books / f"{HOST_TRUST}.yml").write_text(yaml.safe_dump(
        [{"name": HOST_TRUST, "hosts": "all", "gather_facts": False, "tasks": tasks}], sort_keys=False))
    return {"apiVersion": "somnus/v1", "kind": "CapabilityPack", "metadata": {"name": HOST_TRUST},
            "spec": {"description": "the host's certificate authorities, for pip behind an egress proxy",
                     "requires": ["base-tools"], "playbook": f"playbooks/{HOST_TRUST}.yml",
                     "verify": ["test -s /etc/ssl/certs/ca-certificates.crt"]}}


def pypi_hosts_pack(manifests: Path) -> dict[str, Any]:
    """Write pypi-hosts' playbook under `manifests`/playbooks; its manifest document."""
    lines = rootfs.host_address_lines(PYPI_HOSTNAMES)
    assert len(lines) == len(PYPI_HOSTNAMES), f"this host resolves only {lines} of {PYPI_HOSTNAMES}"
    entries = [{"address": line.split("\t")[0], "name": line.split("\t")[1]} for line in lines]
    task = {"name": "Put PyPI's hosts in /etc/hosts as the host resolves them",
            "ansible.builtin.lineinfile": {"path": "/etc/hosts", "regexp": r"\s{{ item.name | regex_escape }}$",
                                           "line": "{{ item.address }}\t{{ item.name }}"},
            "loop": entries}
    books = manifests / "playbooks"
    books.mkdir(parents=True, exist_ok=True)
    (books / f"{PYPI_HOSTS}.yml").write_text(yaml.safe_dump(
        [{"name": PYPI_HOSTS, "hosts": "all", "gather_facts": False, "tasks": [task]}], sort_keys=False))
    return {"apiVersion": "somnus/v1", "kind": "CapabilityPack", "metadata": {"name": PYPI_HOSTS},
            "spec": {"description": "PyPI's hosts in /etc/hosts: debian-12 guests have no nameserver",
                     "playbook": f"playbooks/{PYPI_HOSTS}.yml",
                     "verify": [f"getent hosts {name}" for name in PYPI_HOSTNAMES]}}


def vm_doc(name: str, packs: list[str]) -> dict[str, Any]:
    """A debian-12 VM for the shipped packs: room for chromium and pip's wheels."""
    return {"apiVersion": "somnus/v1", "kind": "VirtualMachine", "metadata": {"name": name},
            "spec": {"resources": {"vcpus": 2, "memory": "2Gi"}, "image": "debian-12", "diskSize": "10Gi",
                     "packs": packs}}


def container_doc(name: str, packs: list[str]) -> dict[str, Any]:
    return {"apiVersion": "somnus/v1", "kind": "Container", "metadata": {"name": name},
            "spec": {"image": IMAGE, "command": ["sleep", "infinity"], "network": "host",
                     "resources": {"cpus": 1, "memory": "1536Mi"}, "packs": packs}}


def installed(container: str, packages: list[str]) -> list[str]:
    """Which of `packages` dpkg has installed in `container`, in the order given."""
    query = subprocess.run(["docker", "exec", container, "dpkg-query", "-W", "-f", "${Package} ${Status}\n",
                            *packages], capture_output=True, text=True, timeout=60)
    present = {line.split()[0] for line in query.stdout.splitlines() if line.endswith(" install ok installed")}
    return [package for package in packages if package in present]


def failing_checks(container: str, commands: list[str], timeout_s: float = 300) -> list[str]:
    """The commands that exit non-zero in `container`, each run by `sh -c` as a pack's verify is."""
    return [command for command in commands
            if subprocess.run(["docker", "exec", container, "sh", "-c", command], capture_output=True,
                              timeout=timeout_s).returncode != 0]


@dataclass(frozen=True)
class Step:
    """One step the journal recorded: `create`, `pack install base-tools`, ..."""

    action: str
    outcome: str
    started_at: float
    ended_at: float

    @property
    def seconds(self) -> float:
        return self.ended_at - self.started_at


def steps_since(state_dir: Path, address: str, since: float) -> list[Step]:
    """The steps of `address` that ended at or after `since`, oldest first."""
    with Journal(state_dir / "journal.sqlite") as journal:
        events = journal.history(address=address, since=since)
    return [Step(e.action, str(e.outcome), e.started_at, e.at) for e in events if e.started_at is not None]


def converge_line(pack: str, steps: list[Step]) -> str:
    """`ai-research        412.3 s  (create 0.2 s, pack install base-tools 21.0 s, ...)`."""
    if not steps:
        return f"{pack:<18} no step recorded"
    span = max(s.ended_at for s in steps) - min(s.started_at for s in steps)
    parts = ", ".join(f"{s.action} {s.seconds:.1f} s" for s in steps)
    return f"{pack:<18} {span:7.1f} s  ({parts})"
