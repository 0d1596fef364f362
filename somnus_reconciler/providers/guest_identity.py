"""Who a guest is: its SSH host key and its agent's certificate, made on the host and pinned.

A VM's loopback forwards are ordinary 127.0.0.1 ports: while the VM is stopped
any local process may listen on them. So nothing goes to a guest until it has
proved that it holds the keys made for it here, before its first boot:

- SSH: an ed25519 host key per VM. The guest gets the private key on its seed disk
  (`somnus-seed` installs it as sshd's only host key); the host keeps the public
  half in the VM's own known_hosts under the alias `somnus-<vm>`, and every ssh
  (`ssh_options`: Ansible's, `wait_for_ssh`, `somnus ssh`) checks it strictly.
- Agent: a self-signed certificate (ECDSA P-256) per VM, whose key goes on the
  seed disk; `agent_client` trusts that one certificate alone, so the token is sent
  only inside a TLS session with the VM's own agent.

Private keys are in `state_dir/keys/<vm>/`, encrypted by the host vault
(`host_vault`: `<name>.fernet`, 0600; `guest_access` makes the directory), and appear
in no message or log. A VM made before this has neither, and its disk's seed script
and agent could not take them: `pinned` refuses it, with how to make it anew (its
disk is backed up first and can be restored).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from somnus_reconciler.providers import host_vault, secret_files
from somnus_reconciler.values.errors import PermanentError

HOST_KEY_FILE = "ssh_host_ed25519_key"  # also its name on the seed disk
KNOWN_HOSTS_FILE = "known_hosts"
AGENT_CERT_FILE = "agent-cert.pem"  # also on the seed disk
AGENT_KEY_FILE = "agent-key.pem"  # also on the seed disk
# What ssh says when the server's host key is not the pinned one (or of another type).
_MISMATCH_MARKERS = ("Host key verification failed", "IDENTIFICATION HAS CHANGED", "no matching host key type")


class GuestIdentityError(PermanentError):
    """A guest did not prove who it is, or has nothing to prove it with; nothing was sent to it."""


@dataclass(frozen=True)
class GuestIdentity:
    vm: str
    known_hosts: Path  # "somnus-<vm> ssh-ed25519 AAAA..."
    agent_certificate: Path  # the one certificate the agent client trusts

    @property
    def host_key_alias(self) -> str:
        return f"somnus-{self.vm}"


def identity_of(key_dir: Path, vm: str) -> GuestIdentity:
    return GuestIdentity(vm, key_dir / KNOWN_HOSTS_FILE, key_dir / AGENT_CERT_FILE)


def pinned(identity: GuestIdentity) -> GuestIdentity:
    """`identity` when its files exist; GuestIdentityError (how to migrate) when not."""
    if not (identity.known_hosts.is_file() and identity.agent_certificate.is_file()):
        raise unpinned(identity.vm)
    return identity


def unpinned(vm: str) -> GuestIdentityError:
    return GuestIdentityError(
        f"vm/{vm} has no pinned identity (it was made before guests proved who they are), so nothing "
        f"is sent to it. To migrate, make it anew: apply --prune without it (a full backup is taken "
        f"first, `somnus backups vm/{vm}`), then apply with it again")


def ensure_identity(key_dir: Path, vm: str, vault: host_vault.HostVault) -> dict[str, bytes]:
    """The VM's host key and agent certificate, made on first call and kept (the private
    keys sealed by `vault`); returns the files its seed disk carries, in the clear (the
    private keys and the certificate)."""
    from cryptography.hazmat.primitives import serialization

    identity = identity_of(key_dir, vm)
    host_key = key_dir / HOST_KEY_FILE
    if not host_vault.exists(host_key):
        vault.seal(host_key, _new_host_key())
    host_key_pem = vault.unseal(host_key)
    loaded = serialization.load_ssh_private_key(host_key_pem, password=None)
    public = loaded.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    secret_files.write_public(identity.known_hosts, f"{identity.host_key_alias} {public.decode()}\n")
    agent_key = key_dir / AGENT_KEY_FILE
    if not host_vault.exists(agent_key) or not identity.agent_certificate.exists():
        key_pem, cert_pem = new_agent_certificate(vm)
        host_vault.remove(agent_key)
        vault.seal(agent_key, key_pem)
        secret_files.write_public(identity.agent_certificate, cert_pem.decode())
    return {HOST_KEY_FILE: host_key_pem, AGENT_KEY_FILE: vault.unseal(agent_key),
            AGENT_CERT_FILE: identity.agent_certificate.read_bytes()}


def _new_host_key() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())


def new_agent_certificate(vm: str) -> tuple[bytes, bytes]:
    """A new key (PEM, PKCS#8) and a self-signed certificate (PEM) for `vm`'s agent."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"somnus agent of vm/{vm}")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=36500))
        # Its own trust anchor: the client trusts this certificate and no other.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(f"{vm}.agent.somnus")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, certificate.public_bytes(serialization.Encoding.PEM)


def ssh_options(identity: GuestIdentity) -> list[str]:
    """ssh's options that accept only the VM's own host key (and never learn another)."""
    return [
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={identity.known_hosts}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", f"HostKeyAlias={identity.host_key_alias}",
        "-o", "HostKeyAlgorithms=ssh-ed25519",
        "-o", "UpdateHostKeys=no",
    ]


def refused_host_key(stderr: str) -> bool:
    """Whether ssh's stderr says the server's host key was not the pinned one."""
    return any(marker in stderr for marker in _MISMATCH_MARKERS)


def mismatch(vm: str, host: str, port: int) -> GuestIdentityError:
    return GuestIdentityError(
        f"vm/{vm}: the SSH server on {host}:{port} did not prove it is vm/{vm} (its host key is not the "
        "one made for it): nothing was run; is another process listening on that port?")
