"""Manifest files made to break the loader: hypothesis strategies.

The generators start from valid manifests of every kind (a few documents that refer
to each other: profiles, packs requiring packs, VMs, containers, a Pool), then
break them at three levels:

- values: wrong types, missing and unknown fields, keys that are not strings, huge
  numbers and strings, odd Unicode, dates, binary, sets, deep nesting, shared
  values (which YAML writes as anchors and aliases, recursive ones included) and
  alias bombs;
- text: duplicated lines (duplicate keys), hostile YAML snippets (tags such as
  `!!python/object/apply`, merge keys, escapes of NUL and lone surrogates),
  deleted lines, truncation, several documents in one file;
- bytes: flipped bits, invalid UTF-8, NUL, byte order marks, UTF-16.

`manifest_files()` mixes them all. `testkit.fuzz_check` loads what they make and
judges how it ended; tests/unit/test_fuzz_manifests.py runs them as property tests
and bench/reliability.py at larger counts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import yaml
from hypothesis import strategies as st

PLAYBOOK = "playbooks/site.yml"  # written beside every example, so packs may name it

Document = dict[str, Any]

# --- valid manifests -----------------------------------------------------------

# Made with text() and map() rather than from_regex(), which is ten times slower.
_LOWER = "abcdefghijklmnopqrstuvwxyz0123456789"
NAMES = st.text(_LOWER + "-", max_size=10).map("n{}0".format)
QUANTITIES = st.one_of(
    st.builds("{}{}".format, st.integers(1, 64), st.sampled_from(["Mi", "Gi", "M", "G"])),
    st.integers(2**20, 2**36),
)
PACKAGES = st.lists(st.text(_LOWER + ".+-", max_size=12).map("p{}".format), max_size=4)
PLAIN_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="{}%#"),
                     max_size=30)


@st.composite
def resources(draw: st.DrawFn) -> Document:
    vcpus = draw(st.integers(1, 8))
    spec: Document = {"vcpus": vcpus, "memory": draw(st.sampled_from(["512Mi", "1Gi", "2Gi", "4Gi"]))}
    if draw(st.booleans()):
        spec["maxVcpus"] = vcpus + draw(st.integers(0, 8))
    if draw(st.booleans()):
        spec["maxMemory"] = "8Gi"
    if draw(st.booleans()):
        spec["gpu"] = draw(st.booleans())
    return spec


def _document(kind: str, name: str, spec: Document, labels: dict[str, str] | None) -> Document:
    metadata: Document = {"name": name}
    if labels:
        metadata["labels"] = labels
    return {"apiVersion": "somnus/v1", "kind": kind, "metadata": metadata, "spec": spec}


LABELS = st.one_of(st.none(), st.fixed_dictionaries({"owner": NAMES}))


@st.composite
def valid_world(draw: st.DrawFn) -> list[Document]:
    """One to a dozen documents of every kind whose references all resolve."""
    profiles = draw(st.lists(NAMES, max_size=2, unique=True))
    packs = draw(st.lists(NAMES, max_size=3, unique=True))
    documents = [_document("ResourceProfile", name, draw(resources()), draw(LABELS)) for name in profiles]
    for index, name in enumerate(packs):
        spec: Document = {}
        if draw(st.booleans()):
            spec["description"] = draw(PLAIN_TEXT)
        if index and draw(st.booleans()):  # only earlier packs: no cycles
            spec["requires"] = draw(st.lists(st.sampled_from(packs[:index]), max_size=2, unique=True))
        if draw(st.booleans()):
            spec["packages"] = {"apt": draw(PACKAGES), "brew": draw(PACKAGES)}
        if draw(st.booleans()):
            spec["playbook"] = PLAYBOOK
        if draw(st.booleans()):
            spec["verify"] = ["true", "command -v git"]
        documents.append(_document("CapabilityPack", name, spec, draw(LABELS)))
    wanted_packs = st.lists(st.sampled_from(packs), max_size=3, unique=True) if packs else st.just([])
    for name in draw(st.lists(NAMES, max_size=2, unique=True)):
        vm: Document = {"image": "debian-12"}
        if draw(st.booleans()) and profiles:
            vm["profile"] = draw(st.sampled_from(profiles))
        else:
            vm["resources"] = draw(resources())
        vm.update(draw(st.fixed_dictionaries({}, optional={
            "diskSize": QUANTITIES,
            "osFamily": st.sampled_from(["debian", "windows", "macos"]),
            "running": st.booleans(),
            "packs": wanted_packs,
            "snapshots": st.fixed_dictionaries({"retain": st.integers(1, 100)}),
            "driftPolicy": st.sampled_from(["correct", "warn"]),
        })))
        documents.append(_document("VirtualMachine", name, vm, draw(LABELS)))
    for name in draw(st.lists(NAMES, max_size=2, unique=True)):
        container = draw(st.fixed_dictionaries({"image": st.just("somnus/base:bookworm")}, optional={
            "command": st.lists(PLAIN_TEXT, max_size=3),
            "resources": st.fixed_dictionaries({}, optional={
                "cpus": st.floats(0.1, 8), "memory": QUANTITIES}),
            "packs": wanted_packs,
            "network": st.sampled_from(["none", "host"]),
            "env": st.dictionaries(st.text(_LOWER.upper() + "_", max_size=8).map("E{}".format),
                                   PLAIN_TEXT, max_size=3),
        }))
        documents.append(_document("Container", name, container, draw(LABELS)))
    if draw(st.booleans()):
        pool = draw(st.fixed_dictionaries({}, optional={
            "libvirtUri": st.sampled_from(["qemu:///system", "qemu:///session"]),
            "domainType": st.sampled_from(["kvm", "qemu"]),
            "maxVms": st.integers(0, 50),
            "maxVmsPerOwner": st.integers(0, 50),
            "reserved": st.fixed_dictionaries({"vcpus": st.integers(0, 4), "memory": QUANTITIES}),
            "cpuOvercommit": st.floats(0.5, 16),
        }))
        documents.append(_document("Pool", draw(NAMES), pool, None))
    if not documents:
        documents.append(_document("ResourceProfile", "idle", {"vcpus": 1, "memory": "4Gi"}, None))
    return draw(st.permutations(documents))


@st.composite
def rendered(draw: st.DrawFn, documents: list[Any]) -> str:
    """The documents as a YAML stream in one of the styles people write (or JSON)."""
    style = draw(st.sampled_from(["block", "flow", "mixed", "json"]))
    if style == "json":
        try:
            if _is_tree(documents):  # JSON would write out every copy of a bomb
                return "\n---\n".join(json.dumps(d, allow_nan=True) for d in documents) + "\n"
        except (TypeError, ValueError):
            pass  # bytes, dates and sets have no JSON form
        style = "block"
    options: Document = {"default_flow_style": {"block": False, "flow": True, "mixed": None}[style],
                         "allow_unicode": draw(st.booleans()), "explicit_start": draw(st.booleans())}
    try:
        text = yaml.safe_dump_all(documents, sort_keys=draw(st.booleans()), **options)
    except TypeError:  # keys of several types cannot be sorted
        text = yaml.safe_dump_all(documents, sort_keys=False, **options)
    return str(text)


# --- broken values ---------------------------------------------------------------

ODD_STRINGS = [
    "", " ", "~", "null", "yes", "0x1F", "1e3", "-1", "-1Gi", "1.5", "0.5Ki", "1.000000001Gi",
    "999999999999Ei", "9" * 5000, "9" * 5000 + "Gi", "1e99999999", "nan", ".inf",
    "\u202eevil", "a\u200bb", "\ufeffbom", "😀", "名前", "e\u0301", "\u2028", "\x85",
    "\t", "\r\n", "\x7f", "\x00", "\x1b[31mred", "{{ lookup('pipe', 'id') }}", "$(id)", "a=b",
    "../../etc/passwd", "/etc/passwd", "/dev/zero", "~nosuchuser/x.qcow2", "a/" * 2100, "a" * 300,
    "x" * 70_000, "coder-1", "base-tools", "VirtualMachine", "somnus/v1", "somnus/v2",
]
ODD_KEYS = st.one_of(
    st.sampled_from(["kind", "spec", "metadata", "name", "image", "vcpus", "memory", "disk_size",
                     "max_vcpus", "requires", "packs", "profil", "<<", "? ", "-", "", "x" * 70_000]),
    st.integers(-2, 2**70), st.none(), st.booleans(), st.floats(), st.text(max_size=8),
)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 100), st.integers(), st.integers(-2**80, 2**80),
    st.sampled_from([10**100, 2**63, 2**64, -(2**63) - 1]),
    st.floats(), st.sampled_from(ODD_STRINGS), st.text(max_size=12),
    st.dates(), st.datetimes(), st.binary(max_size=8),
)
ODD_VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.one_of(st.text(max_size=6), st.integers()), children, max_size=3),
        st.sets(st.integers(), max_size=3),
    ),
    max_leaves=8,
)


def _is_tree(value: Any) -> bool:
    """Whether no mapping or list is found twice in `value` (so no anchors are needed)."""
    seen: set[int] = set()
    pending = [value]
    while pending:
        current = pending.pop()
        if isinstance(current, (dict, list)):
            if id(current) in seen:
                return False
            seen.add(id(current))
            pending += list(current.values()) if isinstance(current, dict) else current
    return True


def _containers(value: Any) -> Iterator[dict[Any, Any] | list[Any]]:
    """Every mapping and list inside `value`, `value` first; each once."""
    seen: set[int] = set()
    pending = [value]
    while pending:
        current = pending.pop()
        if isinstance(current, (dict, list)) and id(current) not in seen:
            seen.add(id(current))
            yield current
            pending += list(current.values()) if isinstance(current, dict) else current


def nested(value: Any, depth: int, mappings: bool) -> Any:
    for _ in range(depth):
        value = {"a": value} if mappings else [value]
    return value


def bomb(levels: int, fanout: int) -> list[Any]:
    """fanout ** levels strings that YAML writes in a few lines of anchors and aliases."""
    value: list[Any] = ["lol"] * fanout
    for _ in range(levels):
        value = [value] * fanout
    return value


@st.composite
def value_mutation(draw: st.DrawFn, documents: list[Document]) -> None:
    """Change one place in `documents` in place."""
    places = [c for d in documents for c in _containers(d)]
    container = draw(st.sampled_from(places))
    keys = list(container) if isinstance(container, dict) else list(range(len(container)))
    action = draw(st.sampled_from(["replace", "replace", "delete", "add", "share", "nest", "bomb"]))
    if action == "add" or not keys:
        if isinstance(container, dict):
            container[draw(ODD_KEYS)] = draw(ODD_VALUES)
        else:
            container.append(draw(ODD_VALUES))
        return
    key = draw(st.sampled_from(keys))
    if action == "delete":
        del container[key]
    elif action == "replace":
        container[key] = draw(ODD_VALUES)
    elif action == "share":  # an anchor and an alias; recursive when an ancestor is chosen
        container[key] = draw(st.sampled_from(places))
    elif action == "nest":
        container[key] = nested(container[key], draw(st.integers(1, 200)), draw(st.booleans()))
    else:
        container[key] = bomb(draw(st.integers(1, 8)), draw(st.integers(2, 12)))


@st.composite
def value_mutated_files(draw: st.DrawFn) -> bytes:
    documents = draw(valid_world())
    for _ in range(draw(st.integers(1, 3))):
        draw(value_mutation(documents))
    return draw(rendered(documents)).encode("utf-8", "surrogatepass")


@st.composite
def valid_files(draw: st.DrawFn) -> bytes:
    return draw(rendered(draw(valid_world()))).encode()


# --- broken text -----------------------------------------------------------------

SNIPPETS = [
    "kind: Pool", "metadata: {name: twice}", "name: twice", "spec: {}", "image: debian-12",
    "x: !!python/object/apply:os.system ['touch /tmp/somnus-fuzz-pwned']",
    "!!python/object/new:os.system [id]", "x: !!python/name:os.system", "x: !!binary '@@@'",
    "x: !!set {a, b}", "x: !!omap [a: 1, a: 2]", "x: !!timestamp 2001-02-30", "x: !!int 0x_",
    "x: !!float ._", "x: 0b_", "x: 1:2:3:4:5:6:7:8:9", "x: 2001-13-45", "x: 0000-01-01",
    'x: "\\ud800"', 'x: "\\udfff\\ud800"', 'x: "\\ud83d\\ude00"', 'x: "\\0"', 'x: "\\x07"',
    'x: "\\U0010FFFF"', 'x: "\\e[0m"', "x: '\u202e'", "x: \u200b", "<<: {image: other}",
    "<<: [*a, *b]", "<<: 5", "a: &a [*a]", "&a a: *a", "x: *undefined", "x: &dup 1", "y: &dup 2",
    "? [a, b]\n: c", "? {a: 1}\n: x", "1: one", "null: x", "[a]: b", "x: [", "x: {", "x: ]", "x: }",
    "x: |\n  literal\n   more", "x: >-\n folded", "- item", "--- !foo", "%YAML 1.1\n---", "%YAML 2.0",
    "%TAG ! tag:x,2000:\n---", "...", "\t- tab", "x: 'unterminated", 'x: "unterminated',
    "x: " + "[" * 500 + "]" * 500, "x: " + "{a: " * 300, "x: " + "9" * 5000, "x: " + "1_" * 3000 + "1",
    "x: " + "a" * 70_000, "vcpus: 1e400", "vcpus: .nan", "memory: -.inf", "cpus: 1e308",
]


@st.composite
def text_mutated_files(draw: st.DrawFn) -> bytes:
    documents = draw(valid_world())
    if draw(st.booleans()):
        draw(value_mutation(documents))
    lines = draw(rendered(documents)).split("\n")
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(lines)))
        action = draw(st.sampled_from(["duplicate", "insert", "insert", "delete", "indent", "truncate",
                                       "split", "character"]))
        if action == "duplicate" and at < len(lines):
            lines.insert(at, lines[at])
        elif action == "insert":
            lines.insert(at, " " * draw(st.integers(0, 6)) + draw(st.sampled_from(SNIPPETS)))
        elif action == "delete" and at < len(lines):
            del lines[at]
        elif action == "indent" and at < len(lines):
            lines[at] = " " * draw(st.integers(1, 5)) + lines[at]
        elif action == "truncate":
            text = "\n".join(lines)
            lines = text[:draw(st.integers(0, len(text)))].split("\n")
        elif action == "split":
            lines.insert(at, draw(st.sampled_from(["---", "--- |", "...", "---\n---", "--- &a"])))
        elif action == "character" and at < len(lines) and lines[at]:
            column = draw(st.integers(0, len(lines[at]) - 1))
            char = draw(st.sampled_from(list(":-[]{}&*!|>'\"#%@`\\,?\t ") + ["\u202e", "\u00a0", "\ufeff"]))
            lines[at] = lines[at][:column] + char + lines[at][column + 1:]
    return "\n".join(lines).encode("utf-8", "surrogatepass")


# --- broken bytes ----------------------------------------------------------------

ODD_BYTES = [b"\xff", b"\xfe", b"\xc3", b"\xc3(", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf",
             b"\x00", b"\xef\xbb\xbf", b"\xfe\xff", b"\xff\xfe", b"\r", b"\x1b", b"\x85", b"\xe2\x80\xa8"]


@st.composite
def byte_mutated_files(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.one_of(valid_files(), value_mutated_files())))
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-16", "utf-8-sig", "latin-1"]))
    if encoding != "utf-8":
        data = bytearray(data.decode("utf-8", "surrogatepass").encode(encoding, "replace"))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        if action == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "insert":
            data[at:at] = draw(st.sampled_from(ODD_BYTES))
        elif action == "delete" and at < len(data):
            del data[at]
        elif action == "cut":
            del data[at:]
    return bytes(data)


# --- hostile structures ----------------------------------------------------------

def _bomb_text(levels: int, fanout: int, field: str) -> str:
    anchors = [f"  l0: &l0 [{', '.join(['lol'] * fanout)}]"]
    anchors += [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * fanout)}]" for i in range(1, levels + 1)]
    return ("apiVersion: somnus/v1\nkind: Container\nmetadata: {name: bomb}\nspec:\n"
            f"  image: x\n  {field}: *l{levels}\nlols:\n" + "\n".join(anchors) + "\n")


@st.composite
def hostile_files(draw: st.DrawFn) -> bytes:
    """Alias bombs, deep nesting (syntax and aliases), long scalars, many documents, noise."""
    kind = draw(st.sampled_from(["bomb", "deep", "deep-alias", "long", "documents", "noise", "bytes"]))
    if kind == "bomb":
        text = _bomb_text(draw(st.integers(1, 12)), draw(st.integers(2, 12)),
                          draw(st.sampled_from(["command", "env", "packs", "image"])))
    elif kind == "deep":
        depth = draw(st.integers(1, 5000))
        opener, closer = draw(st.sampled_from([("[", "]"), ("{a: ", "}"), ("[{a: ", "}]")]))
        text = "x: " + opener * depth + "1" + closer * draw(st.integers(0, depth)) + draw(
            st.sampled_from(["", "\n", "]]", "\n: :"]))
    elif kind == "deep-alias":
        links = draw(st.integers(1, 300))
        text = "a0: &a0 [x]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, links + 1))
    elif kind == "long":
        text = f"apiVersion: somnus/v1\nkind: VirtualMachine\nmetadata:\n  name: {'a' * draw(st.integers(60, 100_000))}\n"
    elif kind == "documents":
        text = "---\n".join(draw(rendered(draw(valid_world()))) for _ in range(draw(st.integers(2, 5))))
    elif kind == "noise":
        text = draw(st.text(st.sampled_from(list(":-[]{}&*!|>'\"#%@`\\,? \n\tab1") + ["\u202e", "\ud800"]),
                            max_size=300))
    else:
        return draw(st.binary(max_size=300))
    return text.encode("utf-8", "surrogatepass")


def manifest_files() -> st.SearchStrategy[bytes]:
    """Every kind of example above, for a single mixed run."""
    return st.one_of(valid_files(), value_mutated_files(), text_mutated_files(), byte_mutated_files(),
                     hostile_files())
