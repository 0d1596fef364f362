"""Do the secrets made during a test session stay in their 0600 files?

conftest.py registers every `Workspace`'s state directory (`SESSION.register`), records
the output of every `somnus` call it makes (`SESSION.record_output`; event_stream.py
adds the JSON events and stderr of every `watch` and `gitops`) and harvests the
secrets after each call (`SESSION.harvest`: a delete or prune removes a VM's keys, so
they are read while they exist). A VM's secrets are sealed by the host vault
(`<name>.fernet`): they are read decrypted, through `host_vault`, with the state
directory's own key. At the end of the session `SESSION.scan()` looks for
each secret (an agent token; the base64 body lines of a private key: the VM's SSH key,
its guest's host key, its agent's TLS key; the host's age identity and host-vault key;
the clear values of Secrets that tests register with `register_value`) in every
recorded output and in every other file under every registered state directory: the
journal and its WAL, console logs, `runs/` (Ansible artifacts), `history-index/`,
`gitops/`. It also finds every private key block in the clear and every clear key or
token file (a `<name>` not sealed) under a state directory. A finding names the secret
by its file and where it was found, never the secret itself.

test_debian_image.py, which makes its key outside a Workspace, registers its state
directory and its guest's console log itself.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from somnus_reconciler.providers import host_vault

KEY_FILE = "id_ed25519"
TOKEN_FILE = "agent-token"
HOST_KEY_FILE = "ssh_host_ed25519_key"  # the guest's, made on the host (guest_identity)
AGENT_KEY_FILE = "agent-key.pem"  # PKCS#8: every body line holds key bytes
AGE_KEY_FILE = "age.key"  # the host's age identity (Settings.age_key_file), in the state directory
SERVE_TOKEN_FILE = "serve-token"  # somnus serve's login token (web.security.TOKEN_FILE), 0600
VAULT_KEY_FILE = host_vault.VAULT_KEY_FILE  # in keys/: its first line is the key material
SEALED = (KEY_FILE, TOKEN_FILE, HOST_KEY_FILE, AGENT_KEY_FILE)  # each kept as <name>.fernet
PRIVATE_KEY_BEGINS = (b"-----BEGIN OPENSSH PRIVATE KEY-----", b"-----BEGIN PRIVATE KEY-----")
# The first body line of every unencrypted ed25519 key is the same header; short lines
# (the comment and padding at the end) are not secret either.
_MIN_KEY_LINE = 40


@dataclass(frozen=True)
class Secret:
    source: Path  # the 0600 file it lives in
    needles: tuple[bytes, ...]  # any of them found elsewhere is a leak


def read_secret(path: Path, state_dir: Path) -> Secret | None:
    """The secret in a key or token file (None when it is gone or empty); a sealed one
    (`<name>.fernet`) decrypted with `state_dir`'s host-vault key."""
    try:
        if path.name.endswith(host_vault.SEALED_SUFFIX):
            data = host_vault.of(state_dir).unseal(path)
        else:
            data = path.read_bytes()
    except FileNotFoundError:
        return None
    name = host_vault.clear(path).name
    if name in (TOKEN_FILE, SERVE_TOKEN_FILE):
        token = data.strip()
        return Secret(path, (token,)) if token else None
    if name == AGE_KEY_FILE:
        keys = tuple(line.strip() for line in data.splitlines() if line.startswith(b"AGE-SECRET-KEY-"))
        return Secret(path, keys) if keys else None
    if name == VAULT_KEY_FILE:
        material = data.split()[:1]  # the salt, its second line, is not secret
        return Secret(path, tuple(material)) if material else None
    body = [line.strip() for line in data.splitlines()[1:] if not line.startswith(b"-----")]
    needles = tuple(line for line in body[0 if name == AGENT_KEY_FILE else 1:] if len(line) >= _MIN_KEY_LINE)
    return Secret(path, needles) if needles else None


def secret_files(state_dir: Path) -> Iterator[Path]:
    for path in (state_dir / AGE_KEY_FILE, state_dir / "keys" / VAULT_KEY_FILE, state_dir / SERVE_TOKEN_FILE):
        if path.is_file():
            yield path
    keys = state_dir / "keys"
    if keys.is_dir():
        for name in SEALED:
            yield from sorted(keys.glob(f"*/{name}{host_vault.SEALED_SUFFIX}"))


def clear_secret_files(state_dir: Path) -> Iterator[Path]:
    """Key and token files in the clear (not sealed by the host vault)."""
    keys = state_dir / "keys"
    if keys.is_dir():
        for name in SEALED:
            yield from sorted(keys.glob(f"*/{name}"))


@dataclass
class SecretScan:
    state_dirs: list[Path] = field(default_factory=list)
    outputs: list[tuple[str, str]] = field(default_factory=list)  # (what, text)
    secrets: dict[Path, Secret] = field(default_factory=dict)
    loose: dict[Path, str] = field(default_factory=dict)  # secret files not 0600, or in the clear

    def register(self, state_dir: Path) -> None:
        if state_dir not in self.state_dirs:
            self.state_dirs.append(state_dir)

    def record_output(self, what: str, text: str) -> None:
        if text:
            self.outputs.append((what, text))

    def register_value(self, label: str, value: str) -> None:
        """A Secret's clear value a test put in a manifest: it must turn up nowhere."""
        self.secrets[Path(f"<{label}>")] = Secret(Path(label), (value.encode(),))

    def harvest(self) -> None:
        for state_dir in self.state_dirs:
            for path in clear_secret_files(state_dir):
                self.loose.setdefault(path, f"{path} is a key or token in the clear, not sealed by the host vault")
            for path in secret_files(state_dir):
                secret = read_secret(path, state_dir)
                if secret is None:
                    continue
                self.secrets.setdefault(path, secret)
                try:
                    mode = stat.S_IMODE(path.stat().st_mode)
                except FileNotFoundError:
                    continue
                if mode != 0o600:
                    self.loose.setdefault(path, f"{path} has mode {mode:o}, not 600")

    def scan(self) -> list[str]:
        """One line per leak: which secret (by its file), and where it was found."""
        self.harvest()
        findings = list(self.loose.values())
        places = [(what, text.encode()) for what, text in self.outputs]
        places += [(str(path), data) for path, data in self._other_files()]
        for where, data in places:
            if any(begin in data for begin in PRIVATE_KEY_BEGINS):
                findings.append(f"a private key block is in {where}")
            for secret in self.secrets.values():
                if any(needle in data for needle in secret.needles):
                    findings.append(f"the secret of {secret.source} is in {where}")
        return findings

    def _other_files(self) -> Iterator[tuple[Path, bytes]]:
        own = set(self.secrets)
        for state_dir in self.state_dirs:
            if not state_dir.is_dir():
                continue  # removed with its temporary directory
            for path in sorted(state_dir.rglob("*")):
                if path in own:
                    continue
                try:
                    if not path.is_symlink() and path.is_file():
                        yield path, path.read_bytes()
                except OSError:
                    continue  # gone meanwhile, or a socket


# The one registry of the session; conftest.py feeds it.
SESSION = SecretScan()
