"""How the host gets into a debian-12 guest: a key pair and an agent token per VM, a seed disk, SSH.

The libvirt provider (and the integration tests) call `ensure_keypair` when a
VM is defined, put the public half on a seed disk made by `build_seed_disk`,
attach it read-only, and call `wait_for_ssh` after starting the guest; the
guest's `somnus-seed.service` (see `debian_image`) installs the seed's
`authorized_keys` for root before sshd starts. `remove_keypair` goes with the
VM's deletion. `ensure_agent_token` makes the in-guest agent's bearer token,
which goes on the same seed disk and which `agent_client` sends. `seed_files` is
everything the seed disk carries, with the identity the guest proves itself with
(`guest_identity`: its SSH host key, checked by every `ssh_command`, and its
agent's certificate).

Private keys and tokens live in the state directory, never under the guest
directory (QEMU does not need them), encrypted at rest by the host vault
(`host_vault`: `<name>.fernet`) and decrypted in memory when used; the seed disk
gets them in the clear. ssh never reads a key file: `ssh_agent` hands the key to
an ssh-agent of its own, and `ssh_command` points ssh at the public half. Nothing
here prints or logs a secret. SSH always goes to a loopback address: guests are
reached only through their 127.0.0.1 port forwards.
"""

from __future__ import annotations

import contextlib
import grp
import ipaddress
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from somnus_reconciler.images import vm_images
from somnus_reconciler.providers import guest_identity, host_vault, secret_files
from somnus_reconciler.providers import ssh_agent as ssh_agent_mod
from somnus_reconciler.values.errors import PermanentError, TemporaryError

KEYS_DIR = "keys"
PRIVATE_KEY_FILE = "id_ed25519"
PUBLIC_KEY_FILE = "id_ed25519.pub"
AGENT_TOKEN_FILE = "agent-token"
# What the host vault seals in a VM's key directory (each as `<name>.fernet`).
SECRET_FILES = (PRIVATE_KEY_FILE, AGENT_TOKEN_FILE, guest_identity.HOST_KEY_FILE, guest_identity.AGENT_KEY_FILE)
# The group QEMU runs in under qemu:///system on Debian (qemu.conf `group`).
QEMU_GROUP = "libvirt-qemu"

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SSH_ATTEMPT_TIMEOUT_S = 10.0
_SSH_RETRY_INTERVAL_S = 1.0
_SEED_SLACK_BYTES = 1024 * 1024  # inodes, directory and superblocks of a tiny ext4


@dataclass(frozen=True)
class GuestKey:
    sealed_key: Path  # `id_ed25519.fernet`: the private key, encrypted by the host vault
    public_key: Path  # `id_ed25519.pub`: what ssh is given; the private half comes from `ssh_agent`
    public_openssh: str  # "ssh-ed25519 AAAA... somnus@<vm>", as authorized_keys takes it
    identity: guest_identity.GuestIdentity  # what the guest must prove before ssh runs anything
    vault: host_vault.HostVault

    def private_openssh(self) -> bytes:
        """The private key (OpenSSH format), decrypted in memory: for an ssh-agent only."""
        return self.vault.unseal(self.sealed_key)


class GuestUnreachable(TemporaryError):
    """SSH into a guest did not succeed in time; the message says where, as whom and why.

    Temporary: a guest still booting, or whose sshd is not up yet, answers later.
    """


class SeedDiskError(PermanentError):
    """A seed disk cannot be made; the message says why."""


# --- keys -----------------------------------------------------------------------


def ensure_keypair(state_dir: Path, vm_name: str) -> GuestKey:
    """The VM's key pair, made on first call and reused after.

    The private key (OpenSSH format, no passphrase) is sealed by the host vault in
    `state_dir/keys/<vm_name>/id_ed25519.fernet`, mode 0600, in directories of mode
    0700 (see `secret_files.publish_secret`); a clear `id_ed25519` of an earlier
    version is sealed and removed. A PermanentError when it holds another kind of key.
    """
    # Imported here: every `somnus diff` imports this module (through the libvirt
    # provider), and only creating a VM or reaching a guest needs a key.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key_dir = _secret_dir(state_dir, vm_name)
    vault = host_vault.of(state_dir)
    private_path = key_dir / PRIVATE_KEY_FILE
    comment = f"somnus@{vm_name}"
    if not host_vault.exists(private_path):
        vault.seal(private_path, ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ))
    key = serialization.load_ssh_private_key(vault.unseal(private_path), password=None)
    sealed_path = host_vault.sealed(private_path)
    os.chmod(sealed_path, 0o600)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise PermanentError(f"{sealed_path} does not hold an ed25519 key; remove it to get a new one")
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    public_openssh = f"{public.decode()} {comment}"
    secret_files.write_public(key_dir / PUBLIC_KEY_FILE, public_openssh + "\n")
    return GuestKey(sealed_key=sealed_path, public_key=key_dir / PUBLIC_KEY_FILE, public_openssh=public_openssh,
                    identity=guest_identity.identity_of(key_dir, vm_name), vault=vault)


def ensure_agent_token(state_dir: Path, vm_name: str) -> str:
    """The bearer token of the VM's agent, made on first call and reused after.

    32 random bytes from cryptography (Fernet's key generator: os.urandom,
    URL-safe base64), sealed in `state_dir/keys/<vm_name>/agent-token.fernet`, mode
    0600. The guest gets it on the seed disk; the host sends it with every request.
    """
    from cryptography.fernet import Fernet

    path = _secret_dir(state_dir, vm_name) / AGENT_TOKEN_FILE
    if not host_vault.exists(path):
        host_vault.of(state_dir).seal(path, Fernet.generate_key() + b"\n")
    return read_agent_token(state_dir, vm_name)


def seed_files(state_dir: Path, vm_name: str) -> dict[str, bytes]:
    """What the VM's seed disk carries, in the clear: root's authorized_keys, the agent token,
    and the identity it proves itself with (`guest_identity`), each made on first use and kept."""
    key = ensure_keypair(state_dir, vm_name)
    token = ensure_agent_token(state_dir, vm_name)
    return {"authorized_keys": (key.public_openssh + "\n").encode(), AGENT_TOKEN_FILE: (token + "\n").encode(),
            **guest_identity.ensure_identity(_secret_dir(state_dir, vm_name), vm_name, key.vault)}


def agent_certificate(state_dir: Path, vm_name: str) -> Path:
    """Where the VM's agent certificate is pinned (it may not exist: a VM made before pinning)."""
    return guest_identity.identity_of(_key_dir(state_dir, vm_name), vm_name).agent_certificate


def read_agent_token(state_dir: Path, vm_name: str) -> str:
    """The VM's agent token, decrypted in memory; FileNotFoundError when the VM was made without
    one, `host_vault.VaultError` when it cannot be decrypted."""
    return host_vault.of(state_dir).unseal(_key_dir(state_dir, vm_name) / AGENT_TOKEN_FILE).decode().strip()


def remove_keypair(state_dir: Path, vm_name: str) -> None:
    """Forget the VM's key pair and agent token; nothing happens when it has none."""
    shutil.rmtree(_key_dir(state_dir, vm_name), ignore_errors=True)


def save_keys(state_dir: Path, vm_name: str, dest: Path) -> None:
    """Copy the VM's key directory into `dest` (a backup's; made 0700, the files keep their
    0600); nothing when the VM has none. Its secrets go sealed (a clear one is sealed first);
    the host-vault key stays where it is, so only this host opens them."""
    source = _key_dir(state_dir, vm_name)
    if source.is_dir():
        _seal_clear_files(state_dir, source)
        shutil.copytree(source, dest, dirs_exist_ok=True)
        os.chmod(dest, 0o700)


def load_keys(source: Path, state_dir: Path, vm_name: str) -> None:
    """Put keys saved by `save_keys` back as the VM's own; nothing when `source` is missing.
    Each saved secret replaces the VM's, sealed or clear (a backup of an earlier version)."""
    if source.is_dir():
        dest = _secret_dir(state_dir, vm_name)
        for saved in source.iterdir():
            if host_vault.clear(saved).name in SECRET_FILES:
                host_vault.remove(dest / saved.name)
        shutil.copytree(source, dest, dirs_exist_ok=True)
        _seal_clear_files(state_dir, dest)


def _seal_clear_files(state_dir: Path, key_dir: Path) -> None:
    vault = host_vault.of(state_dir)
    for name in SECRET_FILES:
        if (key_dir / name).exists():
            vault.unseal(key_dir / name)  # seals and removes a clear file without a sealed one


def _key_dir(state_dir: Path, vm_name: str) -> Path:
    if not _SAFE_NAME.fullmatch(vm_name):
        raise ValueError(f"VM name {vm_name!r} cannot name a key directory")
    return state_dir / KEYS_DIR / vm_name


def _secret_dir(state_dir: Path, vm_name: str) -> Path:
    """`state_dir/keys/<vm_name>`, made with mode 0700 (and its parent)."""
    key_dir = _key_dir(state_dir, vm_name)
    for directory in (key_dir.parent, key_dir):
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
    return key_dir


# --- the seed disk ------------------------------------------------------------------


def build_seed_disk(path: Path, files: Mapping[str, bytes], *, group: str | None = QEMU_GROUP) -> None:
    """Write a small ext4 image labelled `vm_images.SEED_LABEL` holding `files` at its root.

    `files` maps plain file names to contents, e.g. {"authorized_keys": ...};
    a guest installs `authorized_keys` for root and every other file (such as
    the agent's token) in /etc/somnus/, all mode 0600. The image replaces
    `path` atomically.

    Permissions: a token makes the image secret, so it is never world-readable.
    It is mode 0640, owner root, group `group` (QEMU's group under
    qemu:///system). That works whether or not libvirt relabels: with
    `dynamic_ownership` (the default) libvirt chowns the disk to
    libvirt-qemu:libvirt-qemu when the domain starts, and does not chown a
    read-only disk back when it stops, so the file stays readable by QEMU and
    root only; without it QEMU reads the file through its group. With
    `group=None` the image is 0600 root-only, for hosts where libvirt relabels.
    """
    for name in files:
        if not _SAFE_NAME.fullmatch(name) or name == "lost+found":
            raise SeedDiskError(f"seed file name {name!r} is not a plain file name")
    gid = _group_id(group) if group is not None else None
    size = sum(len(data) for data in files.values()) + 4096 * len(files) + _SEED_SLACK_BYTES
    size = -(-size // _SEED_SLACK_BYTES) * _SEED_SLACK_BYTES  # whole MiB
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".seed-", dir=path.parent) as tmp:  # mode 0700
        content = Path(tmp) / "content"
        content.mkdir(mode=0o700)
        for name, data in files.items():
            fd = os.open(content / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        image = Path(tmp) / "seed.img"
        with image.open("wb") as f:
            f.truncate(size)
        argv = [
            "mkfs.ext4", "-q", "-F", "-L", vm_images.SEED_LABEL,
            "-O", "^has_journal",  # read-only in the guest: a journal is dead weight
            "-N", str(len(files) + 16),
            "-d", str(content), str(image),
        ]
        try:
            result = subprocess.run(argv, capture_output=True, text=True, check=False, env=_c_locale())
        except FileNotFoundError as e:
            raise SeedDiskError("mkfs.ext4 is not installed (apt-get install e2fsprogs)") from e
        if result.returncode != 0:
            raise SeedDiskError(f"mkfs.ext4 failed making {path}: {result.stderr.strip()}")
        os.chmod(image, 0o640 if gid is not None else 0o600)
        if gid is not None:
            os.chown(image, 0, gid)
        os.replace(image, path)


def _group_id(group: str) -> int:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise SeedDiskError(
            f"group {group!r} does not exist: is libvirt installed (scripts/setup-host.sh)?"
        ) from None


# --- SSH -------------------------------------------------------------------------


@contextlib.contextmanager
def ssh_agent(key: GuestKey, *, parent: Path | None = None) -> Iterator[ssh_agent_mod.SshAgent]:
    """An ssh-agent of its own holding the VM's private key in memory while the block runs
    (`ssh_agent.holding`; its socket directory under `parent` when given). Give its `env`
    to every `ssh_command` and Ansible run; it is stopped when the block ends."""
    with ssh_agent_mod.holding(key.private_openssh(), f"the key of vm/{key.identity.vm}", parent=parent) as agent:
        yield agent


def ssh_command(port: int, key: GuestKey, *remote: str, host: str = "127.0.0.1") -> list[str]:
    """argv of `ssh` as root into the guest forwarded at host:port, running `remote`.

    Run it with the `env` of an `ssh_agent` holding the key: ssh is given the public half
    only and signs through that agent. The server must hold the VM's own host key
    (`guest_identity.ssh_options`); a VM without a pinned one is refused
    (GuestIdentityError). `-F none` keeps the user's own ssh configuration (proxies,
    other keys) out of it.
    """
    _require_loopback(host)
    return [
        "ssh", "-F", "none",
        "-i", str(key.public_key),
        "-p", str(port),
        "-o", "BatchMode=yes",
        "-o", "IdentitiesOnly=yes",
        *guest_identity.ssh_options(guest_identity.pinned(key.identity)),
        "-o", "LogLevel=ERROR",
        "-o", f"ConnectTimeout={int(_SSH_ATTEMPT_TIMEOUT_S)}",
        f"root@{host}",
        *remote,
    ]


def wait_for_ssh(port: int, key: GuestKey, timeout_s: float, *, host: str = "127.0.0.1",
                 agent: ssh_agent_mod.SshAgent | None = None) -> None:
    """Poll `ssh ... root@host true` until it succeeds; GuestUnreachable after `timeout_s`
    (a PermanentError when the host has no ssh client, a GuestIdentityError at once when
    the server is not the guest). Through `agent`, or an `ssh_agent` of its own."""
    argv = ssh_command(port, key, "true", host=host)
    if agent is None:
        with ssh_agent(key) as own:
            return _poll_ssh(argv, key, own, timeout_s, (host, port))
    return _poll_ssh(argv, key, agent, timeout_s, (host, port))


def _poll_ssh(argv: list[str], key: GuestKey, agent: ssh_agent_mod.SshAgent, timeout_s: float,
              where: tuple[str, int]) -> None:
    host, port = where
    env = {**_c_locale(), **agent.env}
    started = time.monotonic()
    deadline = started + timeout_s
    last_error = "no attempt made"
    while True:
        remaining = deadline - time.monotonic()
        try:
            result = subprocess.run(
                argv, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
                timeout=max(1.0, min(_SSH_ATTEMPT_TIMEOUT_S + 5, remaining)), env=env,
            )
            if result.returncode == 0:
                return
            if guest_identity.refused_host_key(result.stderr):
                raise guest_identity.mismatch(key.identity.vm, host, port)
            last_error = _last_line(result.stderr) or f"ssh exited {result.returncode}"
        except subprocess.TimeoutExpired:
            last_error = "ssh did not finish"
        except FileNotFoundError as e:
            raise PermanentError("ssh is not installed (apt-get install openssh-client)") from e
        if time.monotonic() + _SSH_RETRY_INTERVAL_S > deadline:
            raise GuestUnreachable(
                f"waited {time.monotonic() - started:.0f}s for SSH on {host}:{port} as root "
                f"with key {key.public_key}: {last_error}"
            )
        time.sleep(_SSH_RETRY_INTERVAL_S)


def _require_loopback(host: str) -> None:
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"guests are reached on loopback addresses only, not {host!r}")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _c_locale() -> dict[str, str]:
    return {**os.environ, "LC_ALL": "C"}

