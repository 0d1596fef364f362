"""Where things live and which daemons to talk to: the Pool spec plus environment.

Precedence (highest first): command-line option, environment variable
(`SOMNUS_LIBVIRT_URI`, `DOCKER_HOST`, `SOMNUS_STATE_DIR`, `SOMNUS_GUEST_DIR`,
`SOMNUS_AGE_KEY_FILE`),
the manifests' Pool, the defaults of `model.PoolSpec`.

The state directory holds the journal and console logs. Guest disks and base
images live in the guest directory (default /var/lib/somnus) because
qemu:///system runs QEMU as libvirt-qemu, which cannot enter /root.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from somnus_reconciler.values.model import PoolSpec

DEFAULT_GUEST_DIR = Path("/var/lib/somnus")


@dataclass(frozen=True)
class Settings:
    libvirt_uri: str
    domain_type: str  # "qemu" (TCG) or "kvm"
    state_dir: Path
    guest_dir: Path
    docker_host: str | None
    shutdown_timeout_s: float = 30.0
    age_key_file_override: Path | None = None  # SOMNUS_AGE_KEY_FILE

    @property
    def age_key_file(self) -> Path:
        """The host's age identity, which decrypts Secrets (outside any repository, 0600)."""
        return self.age_key_file_override or self.state_dir / "age.key"

    @property
    def secret_digest_key_file(self) -> Path:
        """The key of the keyed hashes marks hold instead of Secret values (age_secrets.keyed_digest)."""
        return self.state_dir / "keys" / "secret-digest.key"

    @property
    def runs_dir(self) -> Path:
        """Each pack run's private data directory (engine.pack_runner), removed when the run ends."""
        return self.state_dir / "runs"

    @property
    def images_dir(self) -> Path:
        return self.guest_dir / "images"

    @property
    def vms_dir(self) -> Path:
        return self.guest_dir / "vms"

    @property
    def backups_dir(self) -> Path:
        """VM backups (engine.backups), unless a VM's backup.dir says otherwise."""
        return self.guest_dir / "backups"

    @property
    def container_backups_dir(self) -> Path:
        """Container backups (engine.container_backups)."""
        return self.guest_dir / "container-backups"

    @property
    def console_dir(self) -> Path:
        return self.state_dir / "consoles"

    @property
    def journal_path(self) -> Path:
        return self.state_dir / "journal.sqlite"


def resolve(
    pool: PoolSpec | None = None,
    *,
    libvirt_uri: str | None = None,
    state_dir: str | None = None,
) -> Settings:
    pool = pool or PoolSpec()
    env = os.environ
    return Settings(
        libvirt_uri=libvirt_uri or env.get("SOMNUS_LIBVIRT_URI") or pool.libvirt_uri,
        domain_type=pool.domain_type,
        state_dir=Path(state_dir or env.get("SOMNUS_STATE_DIR") or pool.state_dir).expanduser(),
        guest_dir=Path(env.get("SOMNUS_GUEST_DIR") or DEFAULT_GUEST_DIR),
        docker_host=env.get("DOCKER_HOST"),
        shutdown_timeout_s=float(env.get("SOMNUS_SHUTDOWN_TIMEOUT", "30")),
        age_key_file_override=Path(env["SOMNUS_AGE_KEY_FILE"]).expanduser() if env.get("SOMNUS_AGE_KEY_FILE") else None,
    )
