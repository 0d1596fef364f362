"""guest_access: per-VM key pairs, seed disks and the SSH wait, without a guest.

Seed images are read back with debugfs (e2fsprogs), the same package whose
mkfs.ext4 makes them. The SSH test only ever connects to a closed port on
127.0.0.1.
"""

from __future__ import annotations

import base64
import shlex
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from somnus_reconciler.images import vm_images
from somnus_reconciler.providers import ansible_inputs, guest_access, guest_identity
from somnus_reconciler.values.desired import DesiredPack
from somnus_reconciler.values.diagnostics import Source
from somnus_reconciler.values.model import CapabilityPackSpec
from testkit import impostors


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _debugfs(image: Path, request: str) -> str:
    result = subprocess.run(["debugfs", "-R", request, str(image)], capture_output=True, text=True, check=True)
    return result.stdout


def test_keypair_files_and_directories_are_private(tmp_path: Path) -> None:
    key = guest_access.ensure_keypair(tmp_path, "vm-a")

    assert key.sealed_key == tmp_path / "keys" / "vm-a" / "id_ed25519.fernet"
    assert _mode(key.sealed_key) == 0o600
    assert _mode(tmp_path / "keys") == 0o700
    assert _mode(tmp_path / "keys" / "vm-a") == 0o700
    assert not (tmp_path / "keys" / "vm-a" / "id_ed25519").exists()
    assert b"PRIVATE KEY" not in key.sealed_key.read_bytes()
    assert key.private_openssh().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----\n")


def test_keypair_is_made_once_and_reused(tmp_path: Path) -> None:
    first = guest_access.ensure_keypair(tmp_path, "vm-a")
    private_before = first.sealed_key.read_bytes()

    again = guest_access.ensure_keypair(tmp_path, "vm-a")

    assert again == first
    assert again.sealed_key.read_bytes() == private_before
    assert guest_access.ensure_keypair(tmp_path, "vm-b").public_openssh != first.public_openssh


def test_keypair_repairs_loosened_modes(tmp_path: Path) -> None:
    key = guest_access.ensure_keypair(tmp_path, "vm-a")
    key.sealed_key.chmod(0o644)
    (tmp_path / "keys").chmod(0o755)

    guest_access.ensure_keypair(tmp_path, "vm-a")

    assert _mode(key.sealed_key) == 0o600
    assert _mode(tmp_path / "keys") == 0o700


def test_public_key_is_in_openssh_format_and_matches_the_private_key(tmp_path: Path) -> None:
    key = guest_access.ensure_keypair(tmp_path, "vm-a")

    kind, blob, comment = key.public_openssh.split(" ")
    assert kind == "ssh-ed25519"
    assert comment == "somnus@vm-a"
    decoded = base64.b64decode(blob, validate=True)
    assert decoded[:4] == (11).to_bytes(4, "big") and decoded[4:15] == b"ssh-ed25519"
    assert len(decoded) == 4 + 11 + 4 + 32
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", "/dev/stdin"], input=key.private_openssh(), capture_output=True, check=True
    ).stdout.decode()
    assert derived.split()[:2] == [kind, blob]
    assert key.public_key == tmp_path / "keys" / "vm-a" / "id_ed25519.pub"
    assert key.public_key.read_text() == key.public_openssh + "\n"


def test_remove_keypair_forgets_the_key_and_tolerates_absence(tmp_path: Path) -> None:
    first = guest_access.ensure_keypair(tmp_path, "vm-a")

    guest_access.remove_keypair(tmp_path, "vm-a")
    guest_access.remove_keypair(tmp_path, "vm-a")

    assert not (tmp_path / "keys" / "vm-a").exists()
    assert guest_access.ensure_keypair(tmp_path, "vm-a").public_openssh != first.public_openssh


@pytest.mark.parametrize("name", ["", "../escape", "a/b", ".hidden", "with space"])
def test_vm_names_that_are_not_plain_file_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="cannot name a key directory"):
        guest_access.ensure_keypair(tmp_path, name)
    assert not (tmp_path / "keys").exists() or not any((tmp_path / "keys").iterdir())


def test_seed_disk_holds_the_files_under_its_label(tmp_path: Path) -> None:
    key = guest_access.ensure_keypair(tmp_path, "vm-a")
    seed = tmp_path / "vm" / "seed.img"
    authorized = f"{key.public_openssh}\n".encode()

    guest_access.build_seed_disk(seed, {"authorized_keys": authorized, "agent-token": b"s3cret"}, group=None)

    assert _debugfs(seed, "cat /authorized_keys").encode() == authorized
    assert _debugfs(seed, "cat /agent-token") == "s3cret"
    label = subprocess.run(["e2label", str(seed)], capture_output=True, text=True, check=True).stdout.strip()
    assert label == vm_images.SEED_LABEL
    listing = _debugfs(seed, "ls -l /")
    assert "100600" in listing and "authorized_keys" in listing
    assert _mode(seed) == 0o600
    assert [p.name for p in seed.parent.iterdir()] == ["seed.img"]  # no temporary content left


def test_seed_disk_is_group_readable_by_the_given_group_only(tmp_path: Path) -> None:
    seed = tmp_path / "seed.img"

    guest_access.build_seed_disk(seed, {"authorized_keys": b"k\n"}, group="root")

    assert _mode(seed) == 0o640
    assert seed.stat().st_gid == 0


def test_seed_disk_replaces_an_older_one(tmp_path: Path) -> None:
    seed = tmp_path / "seed.img"
    guest_access.build_seed_disk(seed, {"authorized_keys": b"old\n"}, group=None)

    guest_access.build_seed_disk(seed, {"authorized_keys": b"new\n"}, group=None)

    assert _debugfs(seed, "cat /authorized_keys") == "new\n"


@pytest.mark.parametrize("name", ["a/b", "../x", "lost+found", ".hidden", ""])
def test_seed_file_names_must_be_plain(tmp_path: Path, name: str) -> None:
    with pytest.raises(guest_access.SeedDiskError, match="not a plain file name"):
        guest_access.build_seed_disk(tmp_path / "seed.img", {name: b"x"}, group=None)
    assert not (tmp_path / "seed.img").exists()


def test_seed_disk_needs_an_existing_group(tmp_path: Path) -> None:
    with pytest.raises(guest_access.SeedDiskError, match="does not exist"):
        guest_access.build_seed_disk(tmp_path / "seed.img", {"authorized_keys": b"k"}, group="no-such-group-x")


def test_wait_for_ssh_gives_up_naming_where_and_why(tmp_path: Path) -> None:
    guest_access.seed_files(tmp_path, "vm-a")  # the host key it is checked against
    key = guest_access.ensure_keypair(tmp_path, "vm-a")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    started = time.monotonic()
    with pytest.raises(guest_access.GuestUnreachable) as caught:
        guest_access.wait_for_ssh(port, key, timeout_s=2.0)

    assert time.monotonic() - started < 15
    message = str(caught.value)
    assert f"SSH on 127.0.0.1:{port} as root with key {key.public_key}" in message
    assert "refused" in message.lower()
    assert "PRIVATE KEY" not in message


def test_ssh_goes_to_loopback_only(tmp_path: Path) -> None:
    guest_access.seed_files(tmp_path, "vm-a")  # the host key it is checked against
    key = guest_access.ensure_keypair(tmp_path, "vm-a")

    assert "root@127.0.0.1" in guest_access.ssh_command(2222, key, "true")
    assert "root@127.0.0.5" in guest_access.ssh_command(2222, key, "true", host="127.0.0.5")
    for host in ("10.0.2.15", "192.168.122.10", "example.org"):
        with pytest.raises(ValueError, match="loopback"):
            guest_access.wait_for_ssh(2222, key, 1.0, host=host)


# --- the guest's identity -------------------------------------------------------------


def test_the_seed_carries_an_identity_made_once_and_pinned_on_the_host(tmp_path: Path) -> None:
    files = guest_access.seed_files(tmp_path, "vm-a")
    assert set(files) == {"authorized_keys", "agent-token", "ssh_host_ed25519_key", "agent-key.pem", "agent-cert.pem"}
    assert guest_access.seed_files(tmp_path, "vm-a") == files  # kept, not made anew
    key_dir = tmp_path / "keys" / "vm-a"
    for secret in ("ssh_host_ed25519_key", "agent-key.pem", "id_ed25519", "agent-token"):
        assert _mode(key_dir / f"{secret}.fernet") == 0o600, secret
        assert not (key_dir / secret).exists(), secret
    public = subprocess.run(["ssh-keygen", "-y", "-f", "/dev/stdin"], input=files["ssh_host_ed25519_key"],
                            capture_output=True, check=True).stdout.decode().split()[:2]
    assert (key_dir / "known_hosts").read_text().split() == ["somnus-vm-a", *public]
    assert (key_dir / "agent-cert.pem").read_bytes() == files["agent-cert.pem"]


def test_ssh_checks_the_pinned_host_key_strictly(tmp_path: Path) -> None:
    guest_access.seed_files(tmp_path, "vm-a")
    argv = guest_access.ssh_command(2222, guest_access.ensure_keypair(tmp_path, "vm-a"), "true")
    options = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-o"]
    assert {"StrictHostKeyChecking=yes", f"UserKnownHostsFile={tmp_path}/keys/vm-a/known_hosts",
            "GlobalKnownHostsFile=/dev/null", "HostKeyAlias=somnus-vm-a"} <= set(options)
    assert "StrictHostKeyChecking=no" not in options


def test_a_vm_without_a_pinned_host_key_is_refused_before_ssh_runs(tmp_path: Path) -> None:
    key = guest_access.ensure_keypair(tmp_path, "old-vm")  # as a VM made before identities
    with pytest.raises(guest_identity.GuestIdentityError, match="vm/old-vm has no pinned identity"):
        guest_access.ssh_command(2222, key, "true")


def test_an_ssh_server_with_another_host_key_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    guest_access.seed_files(tmp_path, "vm-a")
    key = guest_access.ensure_keypair(tmp_path, "vm-a")
    with impostors.ssh_impostor() as impostor:
        started = time.monotonic()
        with pytest.raises(guest_identity.GuestIdentityError) as refused:
            guest_access.wait_for_ssh(impostor.port, key, timeout_s=60.0)
    assert time.monotonic() - started < 20  # refused at once, not retried until the timeout
    assert f"vm/vm-a: the SSH server on 127.0.0.1:{impostor.port} did not prove it is vm/vm-a" in str(refused.value)
    assert impostor.log == []  # no login, no command


def test_ansible_connects_with_the_pinned_host_key_only(tmp_path: Path) -> None:
    guest_access.seed_files(tmp_path, "vm-a")
    key = guest_access.ensure_keypair(tmp_path, "vm-a")
    pack = DesiredPack("tools", CapabilityPackSpec(), Source(tmp_path / "pack.yaml", 1))
    target = ansible_inputs.SshTarget("127.0.0.1", 2222, "root", key)
    [host] = ansible_inputs.inventory(target, "debian", pack)["guest"]["hosts"].values()
    assert host["ansible_ssh_private_key_file"] == str(key.public_key)  # the private half is in an ssh-agent
    args = shlex.split(str(host["ansible_ssh_common_args"]))
    assert "StrictHostKeyChecking=yes" in args and f"UserKnownHostsFile={key.identity.known_hosts}" in args
    assert ansible_inputs.ansible_env(tmp_path)["ANSIBLE_HOST_KEY_CHECKING"] == "True"
