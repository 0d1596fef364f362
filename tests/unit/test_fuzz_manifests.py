"""Loading any file ends in objects or in diagnostics that name the file and line, quickly.

The generated examples come from testkit/fuzz_manifests.py and are judged by
testkit/fuzz_check.py (bench/reliability.py runs the same generators at larger
counts): SOMNUS_FUZZ_EXAMPLES of them in all (default 10,000), shared among the
property tests below, derandomized so that a failure comes back on the next run. The explicit tests after them are the attacks that
generators would find only by luck: alias bombs, recursive aliases, deep nesting,
a 50 MB file, bytes that are not UTF-8, lone surrogates, Python tags.
"""

from __future__ import annotations

import os
import resource
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from somnus_reconciler.manifests import guarded_yaml
from somnus_reconciler.passes import prepare
from somnus_reconciler.values.diagnostics import Diagnostic, InvalidInput
from testkit import fuzz_check
from testkit import fuzz_manifests as fuzz

F = TypeVar("F", bound=Callable[..., Any])
EXAMPLES = fuzz_check.example_budget()
BOUND = fuzz_check.TIME_BOUND_SECONDS


def _share(fraction: float) -> Callable[[F], F]:
    """Settings for a property test that runs `fraction` of the examples."""
    return settings(
        max_examples=max(1, round(EXAMPLES * fraction)), derandomize=True, database=None,
        deadline=None,  # each example is timed by check_file, against TIME_BOUND_SECONDS
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.large_base_example, HealthCheck.filter_too_much],
    )


@pytest.fixture(scope="module")
def example_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fuzz_check.example_directory(tmp_path_factory.mktemp("fuzz"))


def _assert_acceptable(outcome: fuzz_check.Outcome, data: bytes) -> None:
    assert outcome.acceptable, f"{outcome.kind} after {outcome.seconds:.2f} s: {outcome.detail}\n{data[:500]!r}"


# --- generated examples: 15 + 30 + 25 + 15 + 15 = 100 % of EXAMPLES --------------


@_share(0.15)
@given(data=fuzz.valid_files())
def test_valid_manifests_of_every_kind_are_accepted(example_dir: Path, data: bytes) -> None:
    outcome = fuzz_check.check_file(example_dir, data)
    assert outcome.kind == "valid", f"{outcome.kind}: {outcome.detail}\n{data.decode()}"
    assert outcome.seconds < BOUND


def _property(files: st.SearchStrategy[bytes], fraction: float) -> Callable[[Path, bytes], None]:
    """A test that loads `fraction` of the examples from `files`; each must be acceptable."""
    @_share(fraction)
    @given(data=files)
    def test(example_dir: Path, data: bytes) -> None:
        _assert_acceptable(fuzz_check.check_file(example_dir, data), data)
    return test


test_broken_values_end_in_objects_or_placed_diagnostics = _property(fuzz.value_mutated_files(), 0.30)
test_broken_text_ends_in_objects_or_placed_diagnostics = _property(fuzz.text_mutated_files(), 0.25)
test_broken_bytes_end_in_objects_or_placed_diagnostics = _property(fuzz.byte_mutated_files(), 0.15)
test_hostile_structures_end_in_placed_diagnostics = _property(fuzz.hostile_files(), 0.15)


def test_the_runner_counts_every_example_and_repeats_with_its_seed() -> None:
    first, again = fuzz_check.run_fuzz(40, seed=7), fuzz_check.run_fuzz(40, seed=7)
    counted = ("valid", "invalid_with_diagnostics", "invalid_without_place", "crashes", "hangs")
    assert first["generated"] == 40 == sum(first[k] for k in counted)  # type: ignore[literal-required]
    assert first["crashes"] == first["hangs"] == first["invalid_without_place"] == 0, first["failures"]
    assert [first[k] for k in counted] == [again[k] for k in counted]  # type: ignore[literal-required]


# --- explicit attacks -------------------------------------------------------------

CONTAINER = "apiVersion: somnus/v1\nkind: Container\nmetadata: {name: box}\nspec:\n  image: x\n"


def _refused(path: Path, text: str | bytes) -> tuple[list[str], float]:
    """The messages (FILE:LINE: ... with the directory cut) and the seconds taken."""
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    start = time.monotonic()
    with pytest.raises(InvalidInput) as caught:
        prepare.load_desired([path])
    seconds = time.monotonic() - start
    assert all(_placed(d, path) for d in caught.value.diagnostics), caught.value.diagnostics
    return [str(d).replace(f"{path.parent}/", "") for d in caught.value.diagnostics], seconds


def _placed(d: Diagnostic, path: Path) -> bool:
    return (d.source is not None and d.source.file == path and d.source.line >= 1) or str(path) in d.message


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    return tmp_path / "m.yaml"


@pytest.fixture
def peak_memory() -> Iterator[Callable[[], int]]:
    """Peak bytes allocated through Python while the test runs."""
    tracemalloc.start()
    yield lambda: tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()


LAUGHS = "lols:\n  l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 10))


@pytest.mark.parametrize("text", [
    LAUGHS,  # the classic: 10**10 strings in 600 bytes
    LAUGHS + CONTAINER + "  command: *l9\n",
    # anchors of 11,111 values each, which pass; 20 uses of them do not
    "".join(LAUGHS.splitlines(keepends=True)[:5]) + CONTAINER + "  env: {"
    + ", ".join(f"K{i}: *l3" for i in range(20)) + "}\n",
], ids=["classic", "in-a-field", "many-uses"])
def test_billion_laughs_are_refused_quickly_in_little_memory(
    manifest: Path, text: str, peak_memory: Callable[[], int],
) -> None:
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    problems, seconds = _refused(manifest, text)
    assert any("would expand to more than 100,000 values" in p for p in problems), problems
    assert seconds < BOUND
    assert peak_memory() < 200 * 2**20
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 200 * 2**10  # KiB


def test_many_small_bombs_in_one_file_are_refused_by_the_file_budget(manifest: Path) -> None:
    bomb = ("b:\n  - &b0 [x, x, x, x, x, x, x, x, x, x]\n"
            + "".join(f"  - &b{i} [{', '.join([f'*b{i - 1}'] * 10)}]\n" for i in range(1, 4))
            + CONTAINER + "  command: *b3\n")
    problems, seconds = _refused(manifest, "---\n".join([bomb] * 10_000))  # 3 MB, 23,500 values each
    assert "the file would expand to more than 250,000 values" in "\n".join(problems)
    assert seconds < 5 * BOUND


@pytest.mark.parametrize("text, line", [
    ("&a [*a]\n", 1),
    (CONTAINER + "  command: &c [sleep, *c]\n", 6),
    (CONTAINER + "  env: &e {A: *e}\n", 6),
    ("apiVersion: somnus/v1\nkind: &k {a: {b: *k}}\n", 2),
], ids=["bare", "list", "mapping", "nested"])
def test_an_alias_inside_its_own_anchor_is_refused(manifest: Path, text: str, line: int) -> None:
    problems, _ = _refused(manifest, text)
    assert any(p.startswith(f"m.yaml:{line}: alias ") and "cannot contain itself" in p for p in problems)


@pytest.fixture(params=["libyaml", "pure-python"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both parsers: libyaml first, PyYAML's again for the message of a syntax error."""
    if request.param == "pure-python":
        monkeypatch.setattr(guarded_yaml, "Loader", guarded_yaml.PureLoader)
    else:  # PyYAML from PyPI ships libyaml; without it the guarded C path would go untested
        assert guarded_yaml.Loader is not guarded_yaml.PureLoader, "PyYAML was built without libyaml"
    return str(request.param)


@pytest.mark.parametrize("text", [
    "[" * 100_000,
    "[" * 100_000 + "]" * 100_000,
    "{a: " * 100_000,
    "x: " + "[{a: " * 50_000 + "1" + "}]" * 50_000,
    "".join(" " * i + "- \n" for i in range(1000)),  # block style, 500 KB
    "a0: &a0 [x]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 100)),  # through aliases
], ids=["open-lists", "closed-lists", "open-mappings", "mixed", "block", "alias-chain"])
def test_deep_nesting_is_refused_by_both_parsers(manifest: Path, parser: str, text: str) -> None:
    problems, seconds = _refused(manifest, text)
    assert len(problems) == 1 and "nested deeper than 64 levels" in problems[0], problems
    assert seconds < BOUND


def test_a_syntax_error_inside_allowed_nesting_is_read_again_for_its_message(manifest: Path) -> None:
    problems, seconds = _refused(manifest, "x: " + "[" * 60 + "1" + "]" * 59 + "}\n")
    assert problems[0].startswith("m.yaml:1: invalid YAML: ") and seconds < BOUND


def test_a_50_mb_file_is_refused_unread(manifest: Path, peak_memory: Callable[[], int]) -> None:
    with manifest.open("w") as out:
        lines = ("- " + "x" * 1021 + "\n") * 100  # 100 KiB
        for _ in range(512):
            out.write(lines)
    problems, seconds = _refused_as_is(manifest)
    assert problems == ["m.yaml: 50.0MiB (52,428,800 bytes) is larger than a manifest file may be (4MiB)"]
    assert seconds < BOUND and peak_memory() < 10 * 2**20


def _refused_as_is(path: Path) -> tuple[list[str], float]:
    start = time.monotonic()
    with pytest.raises(InvalidInput) as caught:
        prepare.load_desired([path])
    return [str(d).replace(f"{path.parent}/", "") for d in caught.value.diagnostics], time.monotonic() - start


@pytest.mark.parametrize("data, expected", [
    (b"apiVersion: somnus/v1\nkind: \xff\xfe\n",
     "m.yaml:2: not UTF-8: byte 0xff at column 7 cannot be decoded (save the file as UTF-8)"),
    ("kind: Pool\n".encode("utf-16"),
     "m.yaml:1: not UTF-8: byte 0xff at column 1 cannot be decoded (save the file as UTF-8)"),
    (b"kind: Pool\nmetadata: {name: \xed\xa0\x80}\n",  # a surrogate, encoded
     "m.yaml:2: not UTF-8: byte 0xed at column 18 cannot be decoded (save the file as UTF-8)"),
    (b"kind: Pool\n\nname: a\x00b\n",
     "m.yaml:3: character U+0000 (a control character) is not allowed in a YAML file"),
    (b"kind: Pool\x1b[2J\n", "m.yaml:1: character U+001B (a control character) is not allowed in a YAML file"),
], ids=["latin-1", "utf-16", "encoded-surrogate", "nul", "escape"])
def test_bytes_that_are_not_yaml_text_are_refused_at_their_line(
    manifest: Path, data: bytes, expected: str,
) -> None:
    assert _refused(manifest, data)[0] == [expected]


def test_a_fifo_is_refused_unopened(manifest: Path) -> None:
    os.mkfifo(manifest)  # opening it would wait for a writer for ever
    problems, seconds = _refused_as_is(manifest)
    assert problems == ["m.yaml: not a regular file"] and seconds < BOUND


def test_a_byte_order_mark_is_fine(manifest: Path) -> None:
    manifest.write_bytes(b"\xef\xbb\xbf" + CONTAINER.encode())
    assert list(prepare.load_desired([manifest]).containers) == ["box"]


@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "\\ud83d", "\\ude00\\ud83d", "\\0", "\\x07", "\\e"])
def test_escapes_of_lone_surrogates_and_control_characters_are_refused(manifest: Path, escape: str) -> None:
    problems, _ = _refused(manifest, CONTAINER + f'  env: {{A: "a{escape}"}}\n')
    assert len(problems) == 1 and problems[0].startswith("m.yaml:6: character U+"), problems
    assert "in a value: YAML forbids it, written as an escape too" in problems[0]


def test_a_surrogate_pair_as_json_writes_it_is_one_character(manifest: Path) -> None:
    manifest.write_text(CONTAINER + '  env: {SMILE: "\\ud83d\\ude00"}\n')
    assert prepare.load_desired([manifest]).containers["box"].env == (("SMILE", "\U0001F600"),)


def test_duplicate_keys_are_reported_where_they_are(manifest: Path) -> None:
    problems, _ = _refused(manifest, CONTAINER + "  network: host\n  network: none\n")
    assert problems == ["m.yaml:7: container/box: spec: duplicate key 'network' (only the last would count)"]


@pytest.mark.parametrize("tagged", [
    "!!python/object/apply:os.system ['touch {marker}']",
    "!!python/object/new:os.system ['touch {marker}']",
    "!!python/name:os.system",
    "!!python/module:os",
])
def test_python_tags_are_refused_and_never_run(manifest: Path, tagged: str) -> None:
    marker = manifest.parent / "pwned"
    problems, _ = _refused(manifest, CONTAINER + f"  command: {tagged.format(marker=marker)}\n")
    assert len(problems) == 1 and problems[0].startswith("m.yaml:6: invalid YAML: could not determine a "
                                                         "constructor for the tag 'tag:yaml.org,2002:python/")
    assert not marker.exists()


@pytest.mark.parametrize("value, message", [
    ("0x_", "cannot read '0x_' as int: invalid literal for int() with base 16: ''"),
    ("0b_", "cannot read '0b_' as int: invalid literal for int() with base 2: ''"),
    ("2001-02-30", "cannot read '2001-02-30' as timestamp: day is out of range for month"),
    ("0000-01-01", "cannot read '0000-01-01' as timestamp: year 0 is out of range"),
    (str(2**64), "integer '18446744073709551616' does not fit in 64 bits"),
    ("9" * 5000, "a number written with 5,000 characters (at most 100 make sense)"),
    ("0x" + "f" * 1000, "a number written with 1,002 characters (at most 100 make sense)"),
    ("1" + ":59" * 2000, "a number written with 6,001 characters (at most 100 make sense)"),
], ids=["hex", "binary", "feb-30", "year-0", "2**64", "5000-digits", "long-hex", "sexagesimal"])
def test_numbers_python_cannot_hold_are_refused_at_their_line(manifest: Path, value: str, message: str) -> None:
    assert _refused(manifest, CONTAINER + f"  resources: {{cpus: {value}}}\n")[0] == [f"m.yaml:6: {message}"]


@pytest.mark.parametrize("memory", ["999999999999Ei", "'" + "9" * 5000 + "'", "9" * 5000 + "Gi"],
                         ids=["Ei", "digits", "digits-Gi"])
def test_a_quantity_beyond_64_bits_is_refused_at_its_line(manifest: Path, memory: str) -> None:
    problems, _ = _refused(manifest, CONTAINER + f"  resources: {{memory: {memory}}}\n")
    assert problems == ["m.yaml:6: container/box: spec.resources.memory: is more than 8Ei "
                        "(9223372036854775807 bytes), the most libvirt and Docker take"]


@pytest.mark.parametrize("field, value", [
    ("metadata", "{name: " + "a" * 1_000_000 + "}"),
    ("spec", "{image: " + "x" * 70_000 + "}"),
], ids=["name", "image"])
def test_a_megabyte_value_is_refused_with_a_short_message(manifest: Path, field: str, value: str) -> None:
    text = CONTAINER.replace("metadata: {name: box}\nspec:\n  image: x\n", f"{field}: {value}\n")
    problems, seconds = _refused(manifest, text)
    assert problems[0].startswith("m.yaml:3: a value of ") and "characters is longer than the 65,536" in problems[0]
    assert max(len(p) for p in problems) < 600 and seconds < BOUND


def test_a_right_to_left_override_is_escaped_in_messages(manifest: Path) -> None:
    problems, _ = _refused(manifest, CONTAINER.replace("name: box", "name: \"b\\u202eox\""))
    assert problems == ["m.yaml:3: container/b\\u202eox: name 'b\\u202eox' is not a DNS-1123 label "
                        "(lowercase letters, digits and '-', at most 63 characters)"]


@pytest.mark.parametrize("key", ["1", "null", "true", "1.5", "2001-01-01", "[a]", "{a: 1}", "? [a, b]\n  "])
def test_keys_that_are_not_strings_are_diagnostics(manifest: Path, key: str) -> None:
    _refused(manifest, CONTAINER + f"  {key}: x\n")


def test_a_playbook_path_too_long_for_the_file_system_is_a_diagnostic(manifest: Path) -> None:
    problems, _ = _refused(manifest, "apiVersion: somnus/v1\nkind: CapabilityPack\nmetadata: {name: p}\n"
                                     f"spec: {{playbook: {'a' * 3000}}}\n")
    assert len(problems) == 1 and problems[0].startswith("m.yaml:4: pack/p: spec.playbook: 'aaa")
    assert "cannot be resolved: [Errno 36] File name too long" in problems[0]


def test_an_image_under_the_home_of_nobody_is_a_diagnostic(manifest: Path) -> None:
    problems, _ = _refused(manifest, (
        "apiVersion: somnus/v1\nkind: VirtualMachine\nmetadata: {name: vm}\n"
        "spec: {image: ~nosuchuser/x.qcow2, resources: {vcpus: 1, memory: 1Gi}}\n"))
    assert problems == ["m.yaml:4: vm/vm: spec.image: cannot be resolved: Could not determine home directory."]


def _chain(length: int, closed: bool) -> str:
    packs = [f"apiVersion: somnus/v1\nkind: CapabilityPack\nmetadata: {{name: p{i}}}\n"
             f"spec: {{requires: [p{i + 1}]}}\n" for i in range(length)]
    last = "requires: [p0]" if closed else ""
    packs.append(f"apiVersion: somnus/v1\nkind: CapabilityPack\nmetadata: {{name: p{length}}}\nspec: {{{last}}}\n")
    return "---\n".join(packs) + "---\n" + CONTAINER.replace("  image: x\n", "  image: x\n  packs: [p0]\n")


def test_a_long_chain_of_requirements_resolves_without_recursion(manifest: Path) -> None:
    manifest.write_text(_chain(3000, closed=False))
    packs = prepare.load_desired([manifest]).containers["box"].packs
    assert packs == tuple(f"p{i}" for i in range(3000, -1, -1))


def test_a_long_cycle_of_requirements_is_reported_once(manifest: Path) -> None:
    problems, _ = _refused(manifest, _chain(3000, closed=True))
    assert len(problems) == 1 and problems[0].startswith("m.yaml:4: pack/p0: spec.requires: requirements "
                                                         "form a cycle: pack/p0 -> pack/p1 -> ")


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(data=st.binary(max_size=64))
def test_any_few_bytes_end_in_placed_diagnostics_or_objects(example_dir: Path, data: bytes) -> None:
    _assert_acceptable(fuzz_check.check_file(example_dir, data), data)
