"""host_vault and the ssh-agent: secrets under the state directory are sealed at rest, clear
ones are migrated on first use, a wrong host key is a clear error, and ssh gets the key from
an agent of its own that is gone after use.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from somnus_reconciler.providers import guest_access, host_vault

SECRET = b"a-secret-value-that-must-not-be-on-disk\n"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _all_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def test_a_sealed_secret_round_trips_and_is_neither_clear_nor_readable_by_others(tmp_path: Path) -> None:
    vault = host_vault.of(tmp_path)
    (tmp_path / "keys" / "vm-a").mkdir(parents=True)
    path = tmp_path / "keys" / "vm-a" / "agent-token"

    sealed = vault.seal(path, SECRET)

    assert sealed == tmp_path / "keys" / "vm-a" / "agent-token.fernet"
    assert vault.unseal(path) == vault.unseal(sealed) == SECRET
    assert SECRET.strip() not in _all_bytes(tmp_path) and not path.exists()
    assert _mode(sealed) == 0o600 and _mode(vault.key_file) == 0o600 and _mode(vault.key_file.parent) == 0o700
    assert vault.key_file == tmp_path / "keys" / "host-vault.key"
    assert len(vault.key_file.read_bytes().split()) == 2  # key material and salt, base64
    assert "host-vault.key" in repr(vault) and vault.key_file.read_text().split()[0] not in repr(vault)


def test_a_secret_is_written_once(tmp_path: Path) -> None:
    vault = host_vault.of(tmp_path)
    vault.seal(tmp_path / "token", SECRET)
    vault.seal(tmp_path / "token", b"another")
    assert vault.unseal(tmp_path / "token") == SECRET


def test_the_guests_secrets_are_all_sealed_and_nothing_clear_is_left(tmp_path: Path) -> None:
    files = guest_access.seed_files(tmp_path, "vm-a")
    on_disk = _all_bytes(tmp_path / "keys")
    for name in ("ssh_host_ed25519_key", "agent-key.pem", "agent-token"):
        assert files[name].strip() not in on_disk, name
    assert guest_access.ensure_keypair(tmp_path, "vm-a").private_openssh() not in on_disk
    assert b"PRIVATE KEY" not in on_disk
    assert sorted(p.name for p in (tmp_path / "keys" / "vm-a").iterdir()) == [
        "agent-cert.pem", "agent-key.pem.fernet", "agent-token.fernet", "id_ed25519.fernet", "id_ed25519.pub",
        "known_hosts", "ssh_host_ed25519_key.fernet"]


def test_clear_files_of_an_earlier_version_are_sealed_on_first_use(tmp_path: Path) -> None:
    before = guest_access.seed_files(tmp_path, "vm-a")
    public_before = guest_access.ensure_keypair(tmp_path, "vm-a").public_openssh
    key_dir = tmp_path / "keys" / "vm-a"
    vault = host_vault.of(tmp_path)
    for name in guest_access.SECRET_FILES:  # back to the clear layout of an earlier version
        clear = vault.unseal(key_dir / name)
        host_vault.remove(key_dir / name)
        fd = os.open(key_dir / name, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, clear)
        os.close(fd)

    assert guest_access.read_agent_token(tmp_path, "vm-a") == before["agent-token"].decode().strip()
    assert not (key_dir / "agent-token").exists() and (key_dir / "agent-token.fernet").exists()
    assert guest_access.ensure_keypair(tmp_path, "vm-a").public_openssh == public_before
    assert guest_access.seed_files(tmp_path, "vm-a") == before
    assert sorted(p.name for p in key_dir.iterdir() if p.name in guest_access.SECRET_FILES) == []
    assert all(_mode(key_dir / f"{name}.fernet") == 0o600 for name in guest_access.SECRET_FILES)


def test_a_secret_sealed_with_another_host_key_is_a_clear_error(tmp_path: Path) -> None:
    token = guest_access.ensure_agent_token(tmp_path, "vm-a")
    key_file = tmp_path / "keys" / "host-vault.key"
    key_file.unlink()
    host_vault.of(tmp_path / "other").seal(tmp_path / "other-secret", b"x")  # another host's key
    os.link(tmp_path / "other" / "keys" / "host-vault.key", key_file)

    with pytest.raises(host_vault.VaultError) as wrong:
        guest_access.read_agent_token(tmp_path, "vm-a")
    sealed = tmp_path / "keys" / "vm-a" / "agent-token.fernet"
    assert f"{sealed} cannot be decrypted with the host-vault key {key_file}" in str(wrong.value)
    assert token not in str(wrong.value)


def test_a_missing_or_malformed_host_key_is_a_clear_error(tmp_path: Path) -> None:
    guest_access.ensure_agent_token(tmp_path, "vm-a")
    key_file = tmp_path / "keys" / "host-vault.key"
    key_file.unlink()
    with pytest.raises(host_vault.VaultError, match=r"agent-token\.fernet is sealed, but the host-vault key .* is missing"):
        guest_access.read_agent_token(tmp_path, "vm-a")
    assert not key_file.exists()  # not made anew under a sealed secret
    key_file.write_text("not a key\n")
    with pytest.raises(host_vault.VaultError, match="is not a host-vault key"):
        guest_access.read_agent_token(tmp_path, "vm-a")


def test_a_vm_without_a_token_has_none(tmp_path: Path) -> None:
    guest_access.ensure_keypair(tmp_path, "vm-a")
    with pytest.raises(FileNotFoundError):
        guest_access.read_agent_token(tmp_path, "vm-a")
    with pytest.raises(FileNotFoundError):
        guest_access.read_agent_token(tmp_path, "never-made")


def test_the_key_is_derived_once_per_process_and_key_file(tmp_path: Path) -> None:
    guest_access.seed_files(tmp_path, "vm-a")
    before = host_vault._derive.cache_info()
    for vm in ("vm-b", "vm-c", "vm-d"):
        guest_access.seed_files(tmp_path, vm)
        guest_access.read_agent_token(tmp_path, vm)
    after = host_vault._derive.cache_info()
    assert after.misses == before.misses and after.hits > before.hits


def test_backups_hold_sealed_keys_and_an_old_clear_backup_is_sealed_when_loaded(tmp_path: Path) -> None:
    state = tmp_path / "state"
    token = guest_access.ensure_agent_token(state, "vm-a")
    guest_access.save_keys(state, "vm-a", tmp_path / "backup.keys")
    assert sorted(p.name for p in (tmp_path / "backup.keys").iterdir()) == ["agent-token.fernet"]
    assert _mode(tmp_path / "backup.keys") == 0o700

    old = tmp_path / "old.keys"  # a backup made before the vault
    old.mkdir()
    (old / "agent-token").write_text("old-token\n")
    guest_access.load_keys(old, state, "vm-a")
    assert guest_access.read_agent_token(state, "vm-a") == "old-token"
    assert not (state / "keys" / "vm-a" / "agent-token").exists()

    guest_access.load_keys(tmp_path / "backup.keys", state, "vm-a")
    assert guest_access.read_agent_token(state, "vm-a") == token


# --- the ssh-agent ------------------------------------------------------------------------


def test_the_ssh_agent_holds_the_key_in_memory_and_is_gone_afterwards(tmp_path: Path) -> None:
    key = guest_access.ensure_keypair(tmp_path, "vm-a")
    with guest_access.ssh_agent(key, parent=tmp_path) as agent:
        assert agent.socket.parent.parent == tmp_path and _mode(agent.socket.parent) == 0o700
        assert os.listdir(agent.socket.parent) == ["agent.sock"]  # no key file beside it
        listed = subprocess.run(["ssh-add", "-L"], env={**os.environ, **agent.env}, capture_output=True, text=True,
                                check=True).stdout
        assert listed.split()[:2] == key.public_openssh.split()[:2]
        assert agent.env == {"SSH_AUTH_SOCK": str(agent.socket)}
    assert not Path(f"/proc/{agent.pid}").exists()
    assert not agent.socket.parent.exists()


def test_the_ssh_agent_is_stopped_when_its_block_fails(tmp_path: Path) -> None:
    key = guest_access.ensure_keypair(tmp_path, "vm-a")
    with pytest.raises(RuntimeError), guest_access.ssh_agent(key) as agent:
        raise RuntimeError("the ssh that used it failed")
    assert not Path(f"/proc/{agent.pid}").exists() and not agent.socket.parent.exists()


def test_a_key_the_agent_does_not_take_is_a_clear_error_and_leaves_nothing(tmp_path: Path) -> None:
    from somnus_reconciler.providers import ssh_agent
    from somnus_reconciler.values.errors import PermanentError

    before = set(Path("/tmp").glob("somnus-agent-*"))
    with pytest.raises(PermanentError, match="ssh-agent did not take the test key"), \
            ssh_agent.holding(b"not a key\n", "the test key"):
        pass
    assert set(Path("/tmp").glob("somnus-agent-*")) == before


def test_ssh_is_given_the_public_key_only(tmp_path: Path) -> None:
    guest_access.seed_files(tmp_path, "vm-a")
    key = guest_access.ensure_keypair(tmp_path, "vm-a")
    argv = guest_access.ssh_command(2222, key, "true")
    assert argv[argv.index("-i") + 1] == str(key.public_key)
    assert "IdentitiesOnly=yes" in argv
    assert not any("id_ed25519.fernet" in arg for arg in argv)
