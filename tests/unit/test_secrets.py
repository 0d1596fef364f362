"""Secrets stay in their 0600 sealed files: the agent client never shows its token, guest_access
never logs or prints a key, and the integration session's leak scan finds what it must
(also a key or token left in the clear under a state directory).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from somnus_reconciler.providers import guest_access
from somnus_reconciler.providers.agent_client import AgentClient, AgentRefused, AgentUnreachable
from testkit.agent_process import TOKEN, free_port, running_agent, write_certificate
from tests.integration import secret_scan


def _key_body_lines(private_key: bytes) -> list[str]:
    return [line for line in private_key.decode().splitlines()[1:-1] if len(line) >= 40]


# --- agent_client ---------------------------------------------------------------------


def test_the_token_is_in_no_repr_str_or_error_of_the_client(tmp_path: Path) -> None:
    token = guest_access.ensure_agent_token(tmp_path, "vm-a")
    client = AgentClient(free_port(), token, write_certificate(tmp_path)[0], timeout_s=1.0)
    assert token not in repr(client) and token not in str(client)
    with pytest.raises(AgentUnreachable) as unreachable:
        client.status()
    assert token not in str(unreachable.value) and token not in repr(unreachable.value)


def test_the_token_is_in_no_refusal_even_when_the_agent_answers(tmp_path: Path) -> None:
    with running_agent(tmp_path) as agent:
        wrong = "a-wrong-token-that-must-not-be-echoed"
        with pytest.raises(AgentRefused) as refused:
            AgentClient(agent.port, wrong, agent.certificate).execute(["true"])
        assert wrong not in str(refused.value)
        answer = AgentClient(agent.port, TOKEN, agent.certificate).status()
        assert TOKEN not in str(answer)


# --- guest_access -----------------------------------------------------------------------


def test_making_keys_tokens_and_seed_disks_logs_and_prints_nothing_secret(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    key = guest_access.ensure_keypair(tmp_path, "vm-a")
    token = guest_access.ensure_agent_token(tmp_path, "vm-a")
    guest_access.build_seed_disk(tmp_path / "seed.img", guest_access.seed_files(tmp_path, "vm-a"), group=None)
    with pytest.raises(guest_access.GuestUnreachable) as unreachable:
        guest_access.wait_for_ssh(free_port(), key, timeout_s=1.0)

    captured = capfd.readouterr()
    shown = captured.out + captured.err + caplog.text + str(unreachable.value) + repr(key)
    assert token not in shown
    assert all(line not in shown for line in _key_body_lines(key.private_openssh()))
    assert "PRIVATE KEY" not in shown


# --- the integration session's scan -------------------------------------------------------


def _scan_of(state_dir: Path) -> secret_scan.SecretScan:
    scan = secret_scan.SecretScan()
    scan.register(state_dir)
    return scan


def test_the_scan_is_clean_when_secrets_stay_in_their_files(tmp_path: Path) -> None:
    guest_access.ensure_keypair(tmp_path, "vm-a")
    guest_access.ensure_agent_token(tmp_path, "vm-a")
    (tmp_path / "journal.sqlite").write_bytes(b"vm/vm-a create ok")
    scan = _scan_of(tmp_path)
    scan.record_output("stdout of somnus get", "vm/vm-a running")
    assert scan.scan() == []
    assert sorted(path.name for path in scan.secrets) == ["agent-token.fernet", "host-vault.key", "id_ed25519.fernet"]


def test_the_scan_finds_a_token_in_a_file_and_a_key_line_in_an_output_without_showing_them(
        tmp_path: Path) -> None:
    key = guest_access.ensure_keypair(tmp_path, "vm-a")
    token = guest_access.ensure_agent_token(tmp_path, "vm-a")
    (tmp_path / "runs" / "x").mkdir(parents=True)
    (tmp_path / "runs" / "x" / "stdout").write_text(f"header: Bearer {token}\n")
    scan = _scan_of(tmp_path)
    scan.record_output("stderr of somnus apply", f"oops {_key_body_lines(key.private_openssh())[1]}")

    findings = scan.scan()

    assert sorted(findings) == sorted([
        f"the secret of {tmp_path}/keys/vm-a/agent-token.fernet is in {tmp_path}/runs/x/stdout",
        f"the secret of {tmp_path}/keys/vm-a/id_ed25519.fernet is in stderr of somnus apply",
    ])
    assert token not in "".join(findings)


def test_the_scan_remembers_secrets_deleted_before_the_end_and_flags_loose_modes(tmp_path: Path) -> None:
    scan = _scan_of(tmp_path)
    token = guest_access.ensure_agent_token(tmp_path, "vm-a")
    scan.harvest()
    guest_access.remove_keypair(tmp_path, "vm-a")  # as `apply --prune` does
    scan.record_output("stdout of somnus describe vm/vm-a", token)
    key = guest_access.ensure_keypair(tmp_path, "vm-b")
    key.sealed_key.chmod(0o644)

    assert sorted(scan.scan()) == sorted([
        f"the secret of {tmp_path}/keys/vm-a/agent-token.fernet is in stdout of somnus describe vm/vm-a",
        f"{key.sealed_key} has mode 644, not 600",
    ])


def test_the_scan_covers_the_guests_host_key_and_agent_key(tmp_path: Path) -> None:
    files = guest_access.seed_files(tmp_path, "vm-a")
    scan = _scan_of(tmp_path)
    host_key_line = _key_body_lines(files["ssh_host_ed25519_key"])[1]
    agent_key_line = files["agent-key.pem"].splitlines()[1].decode()
    scan.record_output("stdout of somnus ssh", f"{host_key_line}\n{agent_key_line}")
    assert sorted(scan.scan()) == sorted([
        f"the secret of {tmp_path}/keys/vm-a/ssh_host_ed25519_key.fernet is in stdout of somnus ssh",
        f"the secret of {tmp_path}/keys/vm-a/agent-key.pem.fernet is in stdout of somnus ssh",
    ])
    assert len(scan.secrets) == 5  # the four sealed files and the host-vault key


def test_the_scan_finds_keys_and_tokens_in_the_clear_and_the_host_vault_key(tmp_path: Path) -> None:
    files = guest_access.seed_files(tmp_path, "vm-a")
    key_dir = tmp_path / "keys" / "vm-a"
    (key_dir / "agent-token").write_bytes(files["agent-token"])  # as an earlier version kept it
    (tmp_path / "consoles").mkdir()
    (tmp_path / "consoles" / "vm-a.log").write_bytes(files["agent-key.pem"])
    scan = _scan_of(tmp_path)
    material = (tmp_path / "keys" / "host-vault.key").read_text().split()[0]
    scan.record_output("stderr of somnus get", f"key {material}")

    findings = scan.scan()

    assert sorted(findings) == sorted([
        f"{key_dir}/agent-token is a key or token in the clear, not sealed by the host vault",
        f"the secret of {key_dir}/agent-token.fernet is in {key_dir}/agent-token",
        f"a private key block is in {tmp_path}/consoles/vm-a.log",
        f"the secret of {key_dir}/agent-key.pem.fernet is in {tmp_path}/consoles/vm-a.log",
        f"the secret of {tmp_path}/keys/host-vault.key is in stderr of somnus get",
    ])
    assert material not in "".join(findings)
