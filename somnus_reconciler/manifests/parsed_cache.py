"""Validated manifests of files that did not change, kept between runs.

Reading and validating a manifest file is a pure function of its path, its text and
this package's parsing code; for 150 manifests it is ~70 ms of every `somnus diff`
(composing the YAML under `guarded_yaml`'s limits, building the validators of the
kinds it holds, validating). `manifests.loader` asks here first and stores what it
read without a problem; a file with problems is always read again, so its
diagnostics are always fresh.

An entry is found by the file's resolved path and used only when the digest of
the text and of the parsing code (the modules below, pydantic's version) matches.
Entries are pickles, in a directory of the user's cache (`$XDG_CACHE_HOME/somnus`)
that only the user may write, and one is read only if the user owns it and no one
else may write it. The cache holds what the files hold, never a Secret in clear:
Secrets are decrypted later, by `passes.reveal`. Set SOMNUS_NO_MANIFEST_CACHE=1 to
do without it.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import stat
import tempfile
from pathlib import Path
from typing import TypeVar

# The code whose change changes what a file reads as.
_PARSING_CODE = ("values/model.py", "values/fields.py", "values/gpu.py", "values/quantity.py",
                 "values/diagnostics.py", "manifests/loader.py", "manifests/guarded_yaml.py")
_MAX_ENTRIES = 512  # then the older half goes
_code_digest: str | None = None
# What this process read or stored already (entry -> (digest, value)): a watch loop reads
# the same files at every pass. Nothing changes a value once read, so it is shared.
_in_memory: dict[Path, tuple[str, object]] = {}

T = TypeVar("T")


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "somnus" / "manifests"


def get(path: Path, text: str, kind: type[T]) -> T | None:
    """What `put` stored for `path` with this `text`, if it is there, safe and current."""
    if os.environ.get("SOMNUS_NO_MANIFEST_CACHE"):
        return None
    entry, digest = _entry(path), _digest(text)
    remembered = _in_memory.get(entry)
    if remembered is not None and remembered[0] == digest and isinstance(remembered[1], kind):
        return remembered[1]
    try:
        with entry.open("rb") as stream:
            info = os.fstat(stream.fileno())
            if info.st_uid != os.geteuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                return None
            stored, value = pickle.load(stream)
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, TypeError, ValueError):
        return None
    if stored != digest or not isinstance(value, kind):
        return None
    _in_memory[entry] = (digest, value)
    return value


def put(path: Path, text: str, value: object) -> None:
    """Keep `value`, read from `path` holding `text`; a cache that cannot be written is skipped."""
    if os.environ.get("SOMNUS_NO_MANIFEST_CACHE"):
        return
    entry, digest = _entry(path), _digest(text)
    _in_memory[entry] = (digest, value)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with tempfile.NamedTemporaryFile(dir=entry.parent, delete=False) as stream:  # mode 0600
            pickle.dump((digest, value), stream, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(stream.name, entry)
        _trim(entry.parent)
    except OSError:
        return


def _entry(path: Path) -> Path:
    """One entry per file, and per spelling of its path: diagnostics name it as it was given."""
    name = hashlib.sha256(f"{path.resolve()}\0{path}".encode()).hexdigest()[:32]
    return cache_dir() / f"{name}.pickle"


def _digest(text: str) -> str:
    global _code_digest
    if _code_digest is None:
        import pydantic.version

        package = Path(__file__).resolve().parent.parent
        code = hashlib.sha256(pydantic.version.VERSION.encode())
        for module in _PARSING_CODE:
            code.update((package / module).read_bytes())
        _code_digest = code.hexdigest()
    return hashlib.sha256(f"{_code_digest}\0{text}".encode()).hexdigest()


def _trim(directory: Path) -> None:
    entries = list(directory.glob("*.pickle"))
    if len(entries) <= _MAX_ENTRIES:
        return
    by_age = sorted(entries, key=lambda p: p.stat().st_mtime)
    for old in by_age[: len(by_age) // 2]:
        old.unlink(missing_ok=True)
