"""The host vault: secrets under the state directory, encrypted at rest with a key of the host's own.

A VM's SSH private key and agent token (`guest_access`), its guest's SSH host key and
agent TLS key (`guest_identity`) are kept as `<name>.fernet` beside their public halves,
each written once (`secret_files.publish_secret`, 0600) and decrypted only in memory
when used. The Fernet key (AES-128-CBC with HMAC-SHA256) is derived with scrypt from the
host-vault key file, `state_dir/keys/host-vault.key` (0600 in a 0700 directory): random
key material and a random salt, two base64 lines, made on first use. The derivation is
done once per process and key file: `somnus get` reads the tokens of many VMs.

What it protects: a copy of a key directory (a backup's `<backup>.keys/`, a state
directory copied off the host) holds no key without that file. Root on the host reads
it; root on the host is trusted (docs/architecture.md, threat model).

A clear `<name>` left by an earlier version is encrypted on first use and removed. A
sealed file that the key file cannot open (another host's, altered, or the key file
gone) is a `VaultError` naming the file, never its content; nothing here prints or logs
a secret.
"""

from __future__ import annotations

import base64
import binascii
import errno
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from somnus_reconciler.providers import secret_files
from somnus_reconciler.values.errors import PermanentError

if TYPE_CHECKING:
    from cryptography.fernet import Fernet

KEYS_DIR = "keys"
VAULT_KEY_FILE = "host-vault.key"  # in state_dir/keys/, beside the VMs' key directories
SEALED_SUFFIX = ".fernet"
_KEY_BYTES = 32
_SALT_BYTES = 16
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1  # about 40 ms, once per process


class VaultError(PermanentError):
    """A sealed secret that cannot be opened, or a key file that is not one; the message
    names the file and why, never a secret."""


@dataclass(frozen=True)
class HostVault:
    """The vault of one state directory, named by its key file (its repr holds no key)."""

    key_file: Path

    def seal(self, path: Path, data: bytes) -> Path:
        """Encrypt `data` to `<path>.fernet` (0600) unless that exists; returns its path.

        Concurrent first calls agree on one file (link(2)): read it back with `unseal`.
        The host-vault key is made when there is none.
        """
        target = sealed(path)
        secret_files.publish_secret(target, self._fernet(target, create=True).encrypt(data))
        return target

    def unseal(self, path: Path) -> bytes:
        """The clear bytes of the secret `path` (its clear name or its `.fernet` file).

        A clear file with no sealed one is sealed and removed first (migration). Raises
        FileNotFoundError when there is neither, VaultError when it cannot be decrypted.
        """
        from cryptography.fernet import InvalidToken

        target = sealed(path)
        try:
            token = target.read_bytes()
        except FileNotFoundError:
            return self._migrate(clear(path), target)
        try:
            return self._fernet(target, create=False).decrypt(token)
        except InvalidToken:
            raise VaultError(
                f"{target} cannot be decrypted with the host-vault key {self.key_file}: it was sealed "
                "with another key (another host's, or a key file made anew) or was altered") from None

    def _migrate(self, clear_path: Path, target: Path) -> bytes:
        try:
            data = clear_path.read_bytes()
        except FileNotFoundError:
            if target.exists():  # another process migrated it meanwhile
                return self.unseal(target)
            raise FileNotFoundError(errno.ENOENT, "no such secret", str(target)) from None
        self.seal(clear_path, data)
        clear_path.unlink(missing_ok=True)
        return data

    def _fernet(self, target: Path, *, create: bool) -> Fernet:
        try:
            content = self.key_file.read_bytes()
        except FileNotFoundError:
            if not create:
                raise VaultError(f"{target} is sealed, but the host-vault key {self.key_file} is missing: "
                                 "restore that file, or remove the VM's keys to make new ones") from None
            self.key_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.key_file.parent, 0o700)
            secret_files.publish_secret(self.key_file, _new_key_file())
            content = self.key_file.read_bytes()
        try:
            return _derive(content)
        except ValueError:
            raise VaultError(f"{self.key_file} is not a host-vault key (two base64 lines: "
                             "key material and salt)") from None


def of(state_dir: Path) -> HostVault:
    """The vault of `state_dir`: its key file is `state_dir/keys/host-vault.key`."""
    return HostVault(state_dir / KEYS_DIR / VAULT_KEY_FILE)


def sealed(path: Path) -> Path:
    """`<name>.fernet` of the secret `path` (`path` itself when it is already that)."""
    return path if path.name.endswith(SEALED_SUFFIX) else path.with_name(path.name + SEALED_SUFFIX)


def clear(path: Path) -> Path:
    """The clear name of the secret `path` (where an earlier version kept it)."""
    return path.with_name(path.name.removesuffix(SEALED_SUFFIX))


def exists(path: Path) -> bool:
    """Whether the secret `path` is there, sealed or (not yet migrated) clear."""
    return sealed(path).exists() or clear(path).exists()


def remove(path: Path) -> None:
    """Remove the secret `path`, sealed and clear; nothing when it is not there."""
    sealed(path).unlink(missing_ok=True)
    clear(path).unlink(missing_ok=True)


def _new_key_file() -> bytes:
    material, salt = os.urandom(_KEY_BYTES), os.urandom(_SALT_BYTES)
    return base64.b64encode(material) + b"\n" + base64.b64encode(salt) + b"\n"


@functools.lru_cache(maxsize=16)
def _derive(content: bytes) -> Fernet:
    """The Fernet of a key file's content (scrypt: once per process and key); ValueError
    when `content` is not two base64 lines of at least 32 and 16 bytes."""
    from cryptography.fernet import Fernet
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    lines = content.split()
    if len(lines) != 2:
        raise ValueError("not two lines")
    try:
        material, salt = (base64.b64decode(line, validate=True) for line in lines)
    except binascii.Error:
        raise ValueError("not base64") from None
    if len(material) < _KEY_BYTES or len(salt) < _SALT_BYTES:
        raise ValueError("too short")
    key = Scrypt(salt=salt, length=32, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P).derive(material)
    return Fernet(base64.urlsafe_b64encode(key))
