"""`somnus secret keygen|encrypt|edit|rotate`: the host's age identity and Secret manifests.

A manifest file is rewritten document by document: only its `kind: Secret` documents
are parsed and written again (their `data` values as age armor in literal blocks);
every other document keeps its text, comments included. Clear values exist only in
memory and, for `edit`, in a 0600 file in a 0700 directory that is removed however
the editor ends (Ctrl-C too). The encryption itself is `providers.age_secrets`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import yaml

from somnus_reconciler import settings as settings_mod
from somnus_reconciler.providers import age_secrets
from somnus_reconciler.values.fields import AGE_ARMOR_BEGIN

_SEPARATOR = re.compile(r"^---[ \t]*(#.*)?$", re.MULTILINE)
Doc = dict[str, object]  # one YAML document, as yaml.safe_load gives it


class SecretFileError(age_secrets.SecretError):
    """A file that cannot be read or rewritten as Secret manifests; the message says where."""


def key_file(state_dir: str | None) -> Path:
    return settings_mod.resolve(None, state_dir=state_dir).age_key_file


def keygen(state_dir: str | None) -> tuple[Path, str]:
    """A new host identity; its file and public key (refused when one exists)."""
    path = key_file(state_dir)
    return path, age_secrets.keygen(path)


class _Literal(yaml.SafeDumper):
    """Multi-line strings (age armor) as literal blocks, as a person writes them."""


_Literal.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def _documents(text: str) -> list[str]:
    """`text` cut before each `---` line; joined again, the pieces are `text`."""
    starts = [0, *(m.start() for m in _SEPARATOR.finditer(text) if m.start() > 0)]
    return [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)])]


def _rewrite(path: Path, change: Callable[[Doc], bool]) -> int:
    """Apply `change` to every Secret document of `path`; write the file when one changed."""
    try:
        pieces = _documents(path.read_text())
    except OSError as e:
        raise SecretFileError(f"{path}: {e.strerror}") from None
    changed = 0
    for index, piece in enumerate(pieces):
        header = _SEPARATOR.match(piece)
        body = piece[header.end():] if header else piece
        try:
            doc = yaml.safe_load(body)
        except yaml.YAMLError as e:
            raise SecretFileError(f"{path}: not YAML: {e}") from None
        if not (isinstance(doc, dict) and doc.get("kind") == "Secret" and change(doc)):
            continue
        text = yaml.dump(doc, Dumper=_Literal, sort_keys=False, allow_unicode=True)
        pieces[index] = (piece[:header.end()] + "\n" if header else "") + text
        changed += 1
    if changed:
        temporary = path.with_name(f".{path.name}.somnus")
        temporary.write_text("".join(pieces))
        os.chmod(temporary, path.stat().st_mode & 0o777)
        temporary.replace(path)
    return changed


def _name(doc: Doc) -> str:
    metadata = doc.get("metadata")
    return f"secret/{metadata.get('name', '?') if isinstance(metadata, dict) else '?'}"


def _data(doc: Doc) -> tuple[Doc, list[str]]:
    """The Secret's `data` (to change in place) and its recipients."""
    spec = doc.get("spec")
    data = spec.get("data") if isinstance(spec, dict) else None
    if not isinstance(spec, dict) or not isinstance(data, dict):
        raise SecretFileError(f"{_name(doc)}: spec.data is not a mapping of keys to values")
    recipients = spec.get("recipients")
    if not isinstance(recipients, list) or not recipients:
        raise SecretFileError(f"{_name(doc)}: spec.recipients lists no age public key (somnus secret keygen prints one)")
    return data, [str(r) for r in recipients]


def _encrypted(value: object) -> bool:
    return isinstance(value, str) and value.strip().startswith(AGE_ARMOR_BEGIN)


def encrypt_file(path: Path) -> int:
    """Encrypt every clear value of the file's Secrets in place; how many were encrypted."""
    count = 0

    def encrypt_clear(doc: Doc) -> bool:
        nonlocal count
        data, recipients = _data(doc)
        clear = [key for key, value in data.items() if not _encrypted(value)]
        for key in clear:
            data[key] = age_secrets.encrypt(str(data[key]), recipients, f"{_name(doc)} key {key}")
        count += len(clear)
        return bool(clear)

    _rewrite(path, encrypt_clear)
    return count


def edit_file(path: Path, editor: Sequence[str], state_dir: str | None) -> int:
    """Decrypt the file's Secrets into a private temporary file, run `editor` on it,
    encrypt what changed back into `path`; how many values were changed or added."""
    identity = age_secrets.Identity(key_file(state_dir))
    workdir = Path(tempfile.mkdtemp(prefix="somnus-secret-edit-"))  # 0700
    try:
        clear_file = workdir / path.name
        fd = os.open(clear_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(path.read_text())
        edits: dict[str, dict[str, tuple[str, str]]] = {}  # secret -> key -> (clear, armored as it was)

        def decrypt(doc: Doc) -> bool:
            data, _ = _data(doc)
            before: dict[str, tuple[str, str]] = {}
            for key, value in data.items():
                if _encrypted(value):
                    clear = identity.decrypt(str(value), f"{_name(doc)} key {key}")
                    data[key], before[key] = clear, (clear, str(value))
            edits[_name(doc)] = before
            return True

        _rewrite(clear_file, decrypt)
        subprocess.run([*editor, str(clear_file)], check=True)
        return _reencrypt(path, clear_file, edits)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _reencrypt(path: Path, clear_file: Path, edits: dict[str, dict[str, tuple[str, str]]]) -> int:
    """`clear_file` back into `path`, a value kept as its old ciphertext when unchanged."""
    count = 0

    def encrypt(doc: Doc) -> bool:
        nonlocal count
        data, recipients = _data(doc)
        before = edits.get(_name(doc), {})
        for key, value in data.items():
            if key in before and before[key][0] == value:
                data[key] = before[key][1]
            elif not _encrypted(value):
                data[key] = age_secrets.encrypt(str(value), recipients, f"{_name(doc)} key {key}")
                count += 1
        return True

    _rewrite(clear_file, encrypt)
    shutil.copyfile(clear_file, path)
    return count


def manifest_files(paths: Sequence[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
        else:
            yield path


def rotate(paths: Sequence[Path], state_dir: str | None) -> tuple[str, list[Path]]:
    """A new host identity: every Secret under `paths` that lists the old public key is
    decrypted with the old identity and encrypted to the new one in its stead. The old
    identity is kept beside, renamed; returns the new public key and the files changed."""
    current = key_file(state_dir)
    old = age_secrets.Identity(current)
    fresh = current.with_name(f".{current.name}.new")
    fresh.unlink(missing_ok=True)
    new_public = age_secrets.keygen(fresh)

    def reencrypt(doc: Doc) -> bool:
        data, recipients = _data(doc)
        if old.public_key not in recipients:
            return False
        recipients = [new_public if r == old.public_key else r for r in recipients]
        spec = doc["spec"]
        assert isinstance(spec, dict)  # _data checked it
        spec["recipients"] = recipients
        for key, value in data.items():
            clear = old.decrypt(str(value), f"{_name(doc)} key {key}") if _encrypted(value) else str(value)
            data[key] = age_secrets.encrypt(clear, recipients, f"{_name(doc)} key {key}")
        return True

    changed = [path for path in manifest_files(paths) if _rewrite(path, reencrypt)]
    current.replace(current.with_name(f"{current.name}.retired-{time.strftime('%Y%m%dT%H%M%S')}"))
    fresh.replace(current)
    return new_public, changed
