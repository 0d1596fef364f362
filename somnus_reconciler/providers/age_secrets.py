"""age (X25519) through pyrage: the host's identity, and a Secret's values, each on its own.

A value is age's ASCII-armored ciphertext (`-----BEGIN AGE ENCRYPTED FILE-----`), so
Debian's `age -d -i IDENTITY` decrypts any value as it stands in a manifest, and a
diff in git shows which key changed but nothing of its value. The identity (the
private key) is a file in age-keygen's format, 0600, outside any repository
(`Settings.age_key_file`). `passes.prepare.load_desired` decrypts with it;
`passes.secret_commands` makes it and encrypts with the recipients (public keys) a
Secret lists. Nothing here prints, logs or puts a value in an exception.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import pyrage

from somnus_reconciler.providers import secret_files
from somnus_reconciler.values.errors import PermanentError


class SecretError(PermanentError):
    """An identity that cannot be made or read, a recipient that is not age's, or a value
    that does not decrypt (wrong identity, tampered, not age); the message says which."""


class Identity:
    """The host's age identity, loaded from its file; its repr holds no key."""

    def __init__(self, path: Path) -> None:
        try:
            lines = [line.strip() for line in path.read_text().splitlines()]
        except FileNotFoundError:
            raise SecretError(f"no age identity at {path}: make one with `somnus secret keygen` "
                              "(or point SOMNUS_AGE_KEY_FILE at yours)") from None
        except OSError as e:
            raise SecretError(f"the age identity at {path} cannot be read: {e.strerror}") from None
        secret = next((line for line in lines if line.startswith("AGE-SECRET-KEY-")), None)
        try:
            self._identity = pyrage.x25519.Identity.from_str(secret or "")
        except pyrage.IdentityError:
            raise SecretError(f"{path} holds no age identity (a line AGE-SECRET-KEY-1...)") from None
        self.path = path
        self.public_key = str(self._identity.to_public())

    def __repr__(self) -> str:
        return f"Identity({self.path}, public key {self.public_key})"

    def decrypt(self, armored: str, what: str) -> str:
        """The clear text of one value; SecretError naming `what` (e.g. secret/hub key token)."""
        try:
            clear: bytes = pyrage.decrypt(armored.encode(), [self._identity])
            return clear.decode()
        except pyrage.DecryptError as e:
            raise SecretError(f"{what} cannot be decrypted with the identity in {self.path} "
                              f"(public key {self.public_key}): {_reason(e)}") from None
        except UnicodeDecodeError:
            raise SecretError(f"{what} is not UTF-8 text once decrypted") from None



def digest_key(key_file: Path) -> bytes:
    """The key of `keyed_digest`: a random file of the host's (made on first use, 0600), not
    the age identity, so that only this host can test a guess and a rotated identity
    changes no digest."""
    key_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not key_file.exists():
        secret_files.publish_secret(key_file, os.urandom(32))
    return key_file.read_bytes()


def keyed_digest(key: bytes, values: Iterable[tuple[str, str]]) -> str:
    """HMAC-SHA256 of (label, value) pairs: what a mark records instead of the values."""
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for label, value in values:
        mac.update(label.encode() + b"\0" + value.encode() + b"\0")
    return mac.hexdigest()[:32]


def _reason(error: Exception) -> str:
    text = str(error) or type(error).__name__
    return "it was not encrypted to this identity" if "No matching keys" in text else f"tampered with or not age ({text})"


def keygen(path: Path) -> str:
    """A new identity at `path` (0600, in age-keygen's format); its public key. Refuses to
    overwrite one: it decrypts every Secret encrypted to it."""
    if path.exists():
        raise SecretError(f"{path} exists: an identity is never overwritten (rotate with `somnus secret rotate`)")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    identity = pyrage.x25519.Identity.generate()
    public = str(identity.to_public())
    created = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
    text = f"# created: {created}\n# public key: {public}\n{identity}\n"
    secret_files.publish_secret(path, text.encode())
    os.chmod(path, 0o600)
    return public


def encrypt(value: str, recipients: Sequence[str], what: str) -> str:
    """`value` encrypted to every recipient, as age's ASCII armor."""
    try:
        keys = [pyrage.x25519.Recipient.from_str(r) for r in recipients]
    except pyrage.RecipientError:
        raise SecretError(f"{what}: a recipient is not an age public key (age1...)") from None
    if not keys:
        raise SecretError(f"{what}: no recipients to encrypt to")
    armored: bytes = pyrage.encrypt(value.encode(), keys, armored=True)
    return armored.decode()
