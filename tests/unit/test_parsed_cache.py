"""manifests.parsed_cache: an unchanged file is not read again, a changed one is, a file with
problems never comes from the cache, and an entry others could have written is not trusted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from somnus_reconciler.manifests import loader, parsed_cache
from somnus_reconciler.values.diagnostics import InvalidInput

BOX = """\
apiVersion: somnus/v1
kind: Container
metadata:
  name: box
spec:
  image: somnus/busybox:latest
  resources: {cpus: 0.5, memory: %s}
"""


@pytest.fixture
def parses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The files the loader really parsed (not taken from the cache), in a cache of this test's own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("SOMNUS_NO_MANIFEST_CACHE", raising=False)
    parsed: list[Path] = []
    real = loader._parse

    def counting(path: Path, *args: object) -> object:
        parsed.append(path)
        return real(path, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(loader, "_parse", counting)
    monkeypatch.setattr(parsed_cache, "_in_memory", {})
    return parsed


def another_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a new process remembers: nothing but the files."""
    monkeypatch.setattr(parsed_cache, "_in_memory", {})


def test_an_unchanged_file_comes_from_the_cache_and_a_changed_one_is_read_again(
        tmp_path: Path, parses: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "box.yaml"
    path.write_text(BOX % "64Mi")
    first = loader.load([path])
    assert loader.load([path]) == first  # this process remembers it
    another_process(monkeypatch)
    second = loader.load([path])  # from the file the first one stored
    assert parses == [path] and second == first
    assert (second[0].source, second[0].field_lines) == (first[0].source, first[0].field_lines)
    path.write_text(BOX % "128Mi")
    third = loader.load([path])
    assert parses == [path, path] and third[0].manifest.spec.resources.memory == 128 * 2**20  # type: ignore[union-attr]


def test_a_file_with_problems_is_read_every_time(tmp_path: Path, parses: list[Path]) -> None:
    path = tmp_path / "box.yaml"
    path.write_text(BOX % "lots")
    for _ in range(2):
        with pytest.raises(InvalidInput, match="spec.resources.memory"):
            loader.load([path])
    assert parses == [path, path]


def test_an_entry_others_may_write_is_not_trusted_and_the_cache_can_be_turned_off(
        tmp_path: Path, parses: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "box.yaml"
    path.write_text(BOX % "64Mi")
    loader.load([path])
    [entry] = parsed_cache.cache_dir().glob("*.pickle")
    assert entry.stat().st_mode & 0o777 == 0o600 and parsed_cache.cache_dir().stat().st_mode & 0o777 == 0o700
    os.chmod(entry, 0o666)
    another_process(monkeypatch)
    loader.load([path])
    assert parses == [path, path]  # read again, and stored again as the user's own
    monkeypatch.setenv("SOMNUS_NO_MANIFEST_CACHE", "1")
    loader.load([path])
    assert parses == [path, path, path]
