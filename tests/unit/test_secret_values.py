"""Secrets as code (issue 13): age identities and values (pyrage, and Debian's `age` CLI
reading and writing the same armor), `somnus secret encrypt|edit|rotate` on real files,
and what `load_desired` makes of a container's `env` taken from a Secret."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from somnus_reconciler.cli.commands import cli
from somnus_reconciler.manifests import loader, references
from somnus_reconciler.passes import prepare, secret_commands
from somnus_reconciler.providers import age_secrets
from somnus_reconciler.values.diagnostics import InvalidInput

CLEAR = "hf_s3cr3t-value-that-must-not-leak"


@pytest.fixture
def identity(tmp_path: Path) -> age_secrets.Identity:
    age_secrets.keygen(tmp_path / "age.key")
    return age_secrets.Identity(tmp_path / "age.key")


def test_keygen_writes_a_private_identity_and_never_overwrites_it(tmp_path: Path) -> None:
    key = tmp_path / "state" / "age.key"
    public = age_secrets.keygen(key)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and public.startswith("age1")
    assert f"# public key: {public}" in key.read_text()
    with pytest.raises(age_secrets.SecretError, match="never overwritten"):
        age_secrets.keygen(key)
    assert age_secrets.Identity(key).public_key == public
    assert "AGE-SECRET-KEY" not in repr(age_secrets.Identity(key))


def test_a_value_round_trips_and_any_tampered_byte_is_detected(identity: age_secrets.Identity) -> None:
    armored = age_secrets.encrypt(CLEAR, [identity.public_key], "secret/hub key token")
    assert armored.startswith("-----BEGIN AGE ENCRYPTED FILE-----") and CLEAR not in armored
    assert identity.decrypt(armored, "secret/hub key token") == CLEAR
    lines = armored.splitlines()
    body = [i for i, line in enumerate(lines) if not line.startswith("-----")]
    for index in (body[0], body[len(body) // 2], body[-1]):
        line = lines[index]
        position = len(line) // 2
        flipped = line[:position] + ("A" if line[position] != "A" else "B") + line[position + 1:]
        tampered = "\n".join(lines[:index] + [flipped] + lines[index + 1:]) + "\n"
        with pytest.raises(age_secrets.SecretError, match="secret/hub key token cannot be decrypted"):
            identity.decrypt(tampered, "secret/hub key token")


def test_a_value_for_another_recipient_says_so(identity: age_secrets.Identity, tmp_path: Path) -> None:
    other = age_secrets.keygen(tmp_path / "other.key")
    armored = age_secrets.encrypt(CLEAR, [other], "secret/hub key token")
    with pytest.raises(age_secrets.SecretError, match="not encrypted to this identity"):
        identity.decrypt(armored, "secret/hub key token")


def test_debians_age_reads_our_values_and_we_read_its(identity: age_secrets.Identity, tmp_path: Path) -> None:
    ours = age_secrets.encrypt(CLEAR, [identity.public_key], "x")
    decrypted = subprocess.run(["age", "-d", "-i", str(identity.path)], input=ours, capture_output=True, text=True,
                               check=True)
    assert decrypted.stdout == CLEAR
    theirs = subprocess.run(["age", "-a", "-r", identity.public_key], input="from the age CLI",
                            capture_output=True, text=True, check=True).stdout
    assert identity.decrypt(theirs, "x") == "from the age CLI"


def _secret_file(root: Path, public: str, token: str = CLEAR) -> Path:
    path = root / "secrets.yaml"
    path.write_text(textwrap.dedent(f"""\
        # the box and its token
        apiVersion: somnus/v1
        kind: Container
        metadata: {{name: box}}   # kept as written
        spec:
          image: somnus/busybox:latest
          env:
            PLAIN: visible
            HF_TOKEN: {{secretRef: {{name: hub, key: token}}}}
        ---
        apiVersion: somnus/v1
        kind: Secret
        metadata: {{name: hub}}
        spec:
          recipients: [{public}]
          data:
            token: {token}
            other: second-value
        """))
    return path


def _run(*args: str, state: Path) -> str:
    result = CliRunner().invoke(cli, list(args), env={"SOMNUS_STATE_DIR": str(state)}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_encrypt_in_place_keeps_other_documents_and_is_idempotent(tmp_path: Path) -> None:
    public = _run("secret", "keygen", state=tmp_path).splitlines()[0]
    path = _secret_file(tmp_path, public)
    assert "2 value(s) encrypted" in _run("secret", "encrypt", str(path), state=tmp_path)
    text = path.read_text()
    assert CLEAR not in text and "second-value" not in text
    assert text.startswith("# the box and its token\n") and "metadata: {name: box}   # kept as written" in text
    assert "1 problem" not in text
    assert "0 value(s) encrypted" in _run("secret", "encrypt", str(path), state=tmp_path)
    assert path.read_text() == text
    assert [d.manifest.kind for d in loader.load([path])] == ["Container", "Secret"]


def test_a_clear_value_in_a_manifest_is_refused_at_its_line(tmp_path: Path) -> None:
    path = _secret_file(tmp_path, age_secrets.keygen(tmp_path / "age.key"))
    with pytest.raises(InvalidInput) as caught:
        loader.load([path])
    problems = [str(d) for d in caught.value.diagnostics]
    assert any("secrets.yaml:17: secret/hub: spec.data.token" in p and "is not encrypted" in p for p in problems), problems
    assert all(CLEAR not in p for p in problems)


def test_load_desired_decrypts_only_in_memory_and_a_new_value_changes_the_hash(tmp_path: Path) -> None:
    state = tmp_path / "state"
    public = _run("secret", "keygen", state=state).splitlines()[0]
    path = _secret_file(tmp_path, public)
    secret_commands.encrypt_file(path)
    desired = prepare.load_desired([path], state_dir=str(state))
    box = desired.containers["box"]
    assert box.env == (("PLAIN", "visible"),)
    assert [(v, r.reveal()) for v, r in box.revealed_env] == [("HF_TOKEN", CLEAR)]
    assert CLEAR not in repr(desired) and CLEAR not in str(box.revealed_env) and CLEAR not in box.spec_hash

    changed = _secret_file(tmp_path, public, token="another-value")
    secret_commands.encrypt_file(changed)
    again = prepare.load_desired([changed], state_dir=str(state)).containers["box"]
    assert again.spec_hash != box.spec_hash and again.secret_digest != box.secret_digest


def test_a_value_the_host_cannot_decrypt_is_an_error_at_its_line_and_validate_needs_no_identity(
        tmp_path: Path) -> None:
    stranger = age_secrets.keygen(tmp_path / "stranger.key")
    path = _secret_file(tmp_path, stranger)
    secret_commands.encrypt_file(path)
    age_secrets.keygen(tmp_path / "state" / "age.key")
    with pytest.raises(InvalidInput) as caught:
        prepare.load_desired([path], state_dir=str(tmp_path / "state"))
    [problem] = [str(d) for d in caught.value.diagnostics]
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if text.strip().startswith("token:"))
    assert problem.startswith(f"{path}:{line}: secret/hub: spec.data.token: secret/hub key token cannot be decrypted")
    assert "not encrypted to this identity" in problem
    references.resolve(loader.load([path]))  # validate's half: structure and references, no identity
    assert prepare.load_desired([path], decrypt=False).containers["box"].secret_digest == ""


def test_edit_changes_only_what_the_editor_changed_and_leaves_no_clear_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    public = _run("secret", "keygen", state=state).splitlines()[0]
    path = _secret_file(tmp_path, public)
    secret_commands.encrypt_file(path)
    before = path.read_text()
    editor = tmp_path / "editor.py"
    editor.write_text("import sys, pathlib, os\n"
                      "p = pathlib.Path(sys.argv[1])\n"
                      "assert os.stat(p).st_mode & 0o077 == 0\n"
                      "pathlib.Path(sys.argv[0]).with_name('seen').write_text(str(p))\n"
                      "p.write_text(p.read_text().replace('second-value', 'edited-value'))\n")
    count = secret_commands.edit_file(path, [sys.executable, str(editor)], str(state))
    assert count == 1
    after = path.read_text()
    token_block = before.split("token: |")[1].split("other:")[0]
    assert token_block in after  # unchanged values keep their ciphertext: a quiet diff
    assert "edited-value" not in after and not Path((tmp_path / "seen").read_text()).exists()
    identity = age_secrets.Identity(state / "age.key")
    desired = references.resolve(loader.load([path]))
    assert identity.decrypt(dict(desired.secrets["hub"].data)["other"], "x") == "edited-value"


def test_rotate_encrypts_to_a_new_identity_and_keeps_the_old_one_aside(tmp_path: Path) -> None:
    state = tmp_path / "state"
    old = _run("secret", "keygen", state=state).splitlines()[0]
    path = _secret_file(tmp_path, old)
    secret_commands.encrypt_file(path)
    digest = prepare.load_desired([path], state_dir=str(state)).containers["box"].secret_digest
    new = _run("secret", "rotate", str(tmp_path), state=state).splitlines()[0]
    # Same values, same digest: a rotation recreates no container.
    assert prepare.load_desired([path], state_dir=str(state)).containers["box"].secret_digest == digest
    assert new != old and new in path.read_text() and old not in path.read_text()
    identity = age_secrets.Identity(state / "age.key")
    assert identity.public_key == new
    desired = references.resolve(loader.load([path]))
    assert identity.decrypt(dict(desired.secrets["hub"].data)["token"], "x") == CLEAR
    [retired] = state.glob("age.key.retired-*")
    assert age_secrets.Identity(retired).public_key == old and stat.S_IMODE(os.stat(retired).st_mode) == 0o600
