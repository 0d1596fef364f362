"""Read manifest files into validated kinds, each with the file and line it came from.

`load(paths)` is the first step of every command (`references.resolve` takes its
result). It never stops at the first problem: every YAML error, every document
that is not a manifest and every schema error of every file is collected, each
placed at the line of the offending field, and raised together as one
`InvalidInput` (`FILE:LINE: vm/coder-1: spec.diskSize: ...`).

Files that a CapabilityPack names as its `playbook` are Ansible playbooks, not
manifests: a directory scan skips them, so packs can keep playbooks beside them.

Any file at all ends in declared objects or in diagnostics, in bounded time and
memory, never in another exception. A file is refused above MAX_FILE_BYTES, or
when it is not UTF-8 or holds characters YAML forbids. A document is refused when
its aliases would expand it beyond MAX_NODES values (a file: MAX_FILE_NODES) or
its nesting goes deeper than MAX_DEPTH, which is measured while composing, before
any Python object exists. A value is refused when it is longer than
MAX_SCALAR_CHARS, brings in a control character or lone surrogate through an
escape, or is a number Python cannot convert or libvirt could not hold.
"""

from __future__ import annotations

import difflib
import re
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args

import pydantic
import yaml
from pydantic.alias_generators import to_camel

from somnus_reconciler import model
from somnus_reconciler.diagnostics import Diagnostic, Diagnostics, Source
from somnus_reconciler.quantity import format_bytes, format_bytes_rounded

AnyManifest = Union[
    model.ResourceProfile, model.CapabilityPack, model.VirtualMachine, model.Container, model.Pool
]
Loc = tuple[Union[str, int], ...]

# Limits no manifest comes near; each keeps a hostile file from costing more than a
# second or two and some tens of MB.
MAX_FILE_BYTES = 4 * 2**20
MAX_NODES = 100_000  # values per document, an alias counting as the copy it stands for
# ... and per file: a value costs about 15 us to compose, validate and place, and a
# 300-byte document of aliases can stand for 60,000 of them. 4 MiB of ordinary
# manifests hold some 200,000 values.
MAX_FILE_NODES = 250_000
MAX_DEPTH = 64  # mappings and lists inside each other, through aliases too
MAX_SCALAR_CHARS = 64 * 2**10  # one value; also keeps Quantity's Decimal arithmetic fast
MAX_NUMBER_CHARS = 100  # an int or float as written; a longer one is a mistake
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what libvirt and Docker can take
# The pure-Python parser, used again for its clearer message on a syntax error,
# reads about 300 KB a second; larger broken files keep libyaml's message.
_REPARSE_MAX_CHARS = 256 * 2**10
_SHOWN_CHARS = 80  # a user's value quoted in a message
_MESSAGE_CHARS = 500
# What YAML allows in a file (PyYAML's Reader.NON_PRINTABLE, negated). Values are held
# to it as well, so that an escape cannot bring in a NUL (which breaks every path,
# argument and environment variable) or a lone surrogate ("\ud800", which breaks
# every later encode(), the spec hash's among them).
_NOT_YAML_CHARACTER = re.compile("[^\t\n\r\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_DNS_HINT = "is not a DNS-1123 label (lowercase letters, digits and '-', at most 63 characters)"


@dataclass(frozen=True)
class Declared:
    """One validated manifest and where it was declared."""

    manifest: AnyManifest
    source: Source  # the document's first key
    # Line of every field in the document, by camelCase path ("spec.packs[1]"),
    # so later checks (references) can point at the offending field too.
    field_lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)

    @property
    def address(self) -> str:
        return f"{model.SHORT_KIND[self.manifest.kind]}/{self.manifest.metadata.name}"

    def source_of(self, path: str) -> Source:
        """Where the field at `path` was written; the document's start if unknown."""
        return Source(self.source.file, self.field_lines.get(path, self.source.line))


def find_manifest_files(paths: Sequence[Path]) -> list[Path]:
    """Files as given; directories searched recursively for *.yaml / *.yml."""
    diagnostics = Diagnostics()
    files = _find(paths, diagnostics)
    diagnostics.raise_if_any()
    return files


def load(paths: Sequence[Path]) -> list[Declared]:
    """Every manifest in `paths`, in file and document order; InvalidInput lists all problems."""
    diagnostics = Diagnostics()
    results = [_load_file(path) for path in _find(paths, diagnostics)]
    playbooks = {playbook for result in results for playbook in result.playbooks}
    declared: list[Declared] = []
    for result in results:
        if result.path.resolve() in playbooks:
            continue
        declared += result.declared
        diagnostics.items += [_tidy(d) for d in result.diagnostics]
    diagnostics.raise_if_any()
    return declared


def _find(paths: Sequence[Path], diagnostics: Diagnostics) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            # Hidden entries (.git, .github workflows) are never manifests.
            found += sorted(
                p for p in path.rglob("*")
                if p.suffix in (".yaml", ".yml") and p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        elif path.exists():
            found.append(path)
        else:
            diagnostics.add(None, None, f"{path}: no such file or directory")
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


@dataclass
class _FileResult:
    path: Path
    declared: list[Declared] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    playbooks: set[Path] = field(default_factory=set)  # resolved paths named by packs here
    syntax_error: bool = False


def _load_file(path: Path) -> _FileResult:
    text = _read_text(path)
    if isinstance(text, Diagnostic):
        return _FileResult(path, diagnostics=[text])
    result = _parse(path, text, _Loader)
    if _Loader is not _PureLoader and result.syntax_error and len(text) <= _REPARSE_MAX_CHARS:
        # libyaml's messages are terser; a broken file is rare, so read it again
        # with the pure-Python parser for the clearer one.
        result = _parse(path, text, _PureLoader)
    return result


def _read_text(path: Path) -> str | Diagnostic:
    """The file's text, or why it cannot be a manifest file."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # a FIFO or device would block or never end
            return Diagnostic(None, None, f"{path}: not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            return _too_large(path, info.st_size)
        with path.open("rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)  # the file may have grown since stat
    except OSError as e:
        return Diagnostic(None, None, f"{path}: cannot read: {e.strerror or e}")
    if len(data) > MAX_FILE_BYTES:
        return _too_large(path, len(data))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line_start = data.rfind(b"\n", 0, e.start) + 1
        return Diagnostic(
            Source(path, data.count(b"\n", 0, e.start) + 1), None,
            f"not UTF-8: byte 0x{data[e.start]:02x} at column {e.start - line_start + 1} "
            f"cannot be decoded (save the file as UTF-8)",
        )
    forbidden = _NOT_YAML_CHARACTER.search(text)
    if forbidden is not None:
        return Diagnostic(
            Source(path, text.count("\n", 0, forbidden.start()) + 1), None,
            f"{_character(forbidden.group())} is not allowed in a YAML file",
        )
    return text


def _too_large(path: Path, size: int) -> Diagnostic:
    return Diagnostic(None, None, (
        f"{path}: {format_bytes_rounded(size)}B ({size:,} bytes) is larger than a manifest "
        f"file may be ({format_bytes(MAX_FILE_BYTES)}B)"
    ))


def _character(char: str) -> str:
    if "\ud800" <= char <= "\udfff":
        kind = "a lone surrogate"
    elif char <= "\x9f":
        kind = "a control character"
    else:
        kind = "a noncharacter"  # U+FFFE, U+FFFF
    return f"character U+{ord(char):04X} ({kind})"


class _Refused(yaml.YAMLError):
    """Input the loader does not go on with, at a 1-based line."""

    def __init__(self, mark: Any, message: str) -> None:
        super().__init__(message)
        self.line: int = mark.line + 1 if mark is not None else 1
        self.message = message

    def diagnostic(self, path: Path) -> Diagnostic:
        return Diagnostic(Source(path, self.line), None, self.message)


class _GuardedComposer(yaml.composer.Composer):
    """PyYAML's composer, measuring what each document would expand to.

    Aliases share nodes, so a small file can stand for an exponential ("billion
    laughs") or infinite (`&a [*a]`) structure, which construction, pydantic and the
    walks over nodes below would all expand. Each node's expanded size and depth
    are memoised when it is complete, so measuring stays linear in the file, and
    composing stops at the first node beyond MAX_NODES (MAX_FILE_NODES across the
    file's documents) or MAX_DEPTH. Depth is also checked on the way down, since
    composing recurses: libyaml's composer, in C, would overflow the C stack on
    100,000 nested brackets, so only libyaml's parser is used.

    Values too long or holding forbidden characters go to `refusals` instead:
    composing goes on, and the caller skips that document.
    """

    peek_event: Callable[[], yaml.Event]  # from the parser it is mixed with

    def __init__(self) -> None:
        yaml.composer.Composer.__init__(self)
        self.refusals: list[_Refused] = []
        self._measured: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded values, depth)
        self._expanded = 0  # values in the document so far, aliases expanded
        self._file_expanded = 0  # the same, in the file
        self._open = 0  # collections being composed

    def compose_document(self) -> yaml.Node | None:
        self._measured, self._expanded, self._open = {}, 0, 0
        node = super().compose_document()
        self._measured = {}
        return node

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)
            if isinstance(target, yaml.CollectionNode) and id(target) not in self._measured:
                raise _Refused(event.start_mark, (
                    f"alias *{event.anchor} is inside its own anchor &{event.anchor}: "
                    f"a structure cannot contain itself"
                ))
            node = super().compose_node(parent, index)  # an undefined alias is a ComposerError
            self._count(self._measured.get(id(node), _SCALAR)[0], event)
            return node
        self._count(1, event)
        if isinstance(event, yaml.ScalarEvent):
            node = super().compose_node(parent, index)
            assert isinstance(node, yaml.ScalarNode)
            self._check_scalar(node)
            return node  # not in _measured: scalars measure _SCALAR
        if self._open >= MAX_DEPTH:
            raise _Refused(event.start_mark, f"nested deeper than {MAX_DEPTH} levels")
        self._open += 1
        node = super().compose_node(parent, index)
        self._open -= 1
        assert isinstance(node, yaml.CollectionNode)
        self._measured[id(node)] = self._measure(node)
        return node

    def _count(self, values: int, event: yaml.Event) -> None:
        self._expanded += values
        self._file_expanded += values
        if self._expanded > MAX_NODES or self._file_expanded > MAX_FILE_NODES:
            where, limit = (("the document", MAX_NODES) if self._expanded > MAX_NODES
                            else ("the file", MAX_FILE_NODES))
            raise _Refused(event.start_mark, (
                f"{where} would expand to more than {limit:,} values "
                f"(each alias counts as a copy of its anchor)"
            ))

    def _measure(self, node: yaml.CollectionNode) -> tuple[int, int]:
        children = node.value if isinstance(node, yaml.SequenceNode) else [
            child for pair in node.value for child in pair
        ]
        measured = [self._measured.get(id(child), _SCALAR) for child in children]
        size = 1 + sum(size for size, _ in measured)
        depth = 1 + max((depth for _, depth in measured), default=0)
        if depth > MAX_DEPTH:  # only aliases get here: plain nesting was refused on the way down
            raise _Refused(node.start_mark, f"nested deeper than {MAX_DEPTH} levels through aliases")
        return size, depth

    def _check_scalar(self, node: yaml.ScalarNode) -> None:
        value: str = node.value
        if value.isprintable() and len(value) <= MAX_SCALAR_CHARS:
            return  # the common case, and faster than the search below
        if len(value) > MAX_SCALAR_CHARS:
            self.refusals.append(_Refused(node.start_mark, (
                f"a value of {len(value):,} characters is longer than the "
                f"{MAX_SCALAR_CHARS:,} allowed"
            )))
            return
        forbidden = _NOT_YAML_CHARACTER.search(value)
        if forbidden is not None and "\ud800" <= forbidden.group() <= "\udfff":
            # JSON writes a character beyond U+FFFF as a pair of escapes ("\ud83d\ude00"),
            # which PyYAML leaves as two surrogates: join such pairs into one character.
            try:
                node.value = value = value.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
            except UnicodeDecodeError:
                pass  # a lone one
            forbidden = _NOT_YAML_CHARACTER.search(value)
        if forbidden is not None:
            self.refusals.append(_Refused(node.start_mark, (
                f"{_character(forbidden.group())} in a value: YAML forbids it, "
                f"written as an escape too"
            )))


_SCALAR = (1, 0)  # a scalar's expanded size and depth


class _GuardedConstructor(yaml.constructor.SafeConstructor):
    """SafeConstructor whose every failure is a YAML error at a line.

    PyYAML lets ValueError escape from scalars its resolver took for numbers or
    dates but Python cannot convert (`0x_`, `0b_`, `2001-02-30`, an integer of 5,000
    digits); they are refused at the scalar's line. Numbers written with more than
    MAX_NUMBER_CHARS characters are refused unread (sexagesimal `1:2:3...` is
    quadratic to convert), and integers must fit in 64 bits: a larger one only
    fails later, where it is harder to place or cannot even be printed.
    """

    def construct_document(self, node: yaml.Node) -> Any:
        try:
            return super().construct_document(node)
        except (ValueError, TypeError, OverflowError) as e:
            self._forget()
            raise _Refused(node.start_mark, f"cannot read this document: {e}") from e
        except _Refused:
            self._forget()
            raise

    def _forget(self) -> None:
        """Drop what a failed document left behind, so the next one starts clean."""
        self.constructed_objects, self.recursive_objects, self.state_generators = {}, {}, []
        self.deep_construct = False

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as e:
            what = _shown(node.value) if isinstance(node, yaml.ScalarNode) else "this value"
            raise _Refused(node.start_mark, f"cannot read {what} as {_tag_name(node)}: {e}") from e

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        self._check_length(node)
        value = super().construct_yaml_int(node)
        if not _INT_MIN <= value <= _INT_MAX:
            raise _Refused(node.start_mark, f"integer {_shown(node.value)} does not fit in 64 bits")
        return value

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
        self._check_length(node)
        return super().construct_yaml_float(node)

    @staticmethod
    def _check_length(node: yaml.ScalarNode) -> None:
        if len(node.value) > MAX_NUMBER_CHARS:
            raise _Refused(node.start_mark, (
                f"a number written with {len(node.value):,} characters "
                f"(at most {MAX_NUMBER_CHARS} make sense)"
            ))

    yaml_constructors = {
        **yaml.constructor.SafeConstructor.yaml_constructors,
        "tag:yaml.org,2002:int": construct_yaml_int,
        "tag:yaml.org,2002:float": construct_yaml_float,
    }


def _tag_name(node: yaml.Node) -> str:
    tag: str = node.tag
    return tag.removeprefix("tag:yaml.org,2002:")


class _PureLoader(
    yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser, _GuardedComposer,
    _GuardedConstructor, yaml.resolver.Resolver,
):
    def __init__(self, text: str) -> None:
        yaml.reader.Reader.__init__(self, text)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        _GuardedComposer.__init__(self)
        _GuardedConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)


_Loader: Callable[[str], _GuardedComposer] = _PureLoader
if getattr(yaml, "__with_libyaml__", False):
    from yaml._yaml import CParser

    class _LibyamlLoader(_GuardedComposer, CParser, _GuardedConstructor, yaml.resolver.Resolver):
        """libyaml's parser (about 7x faster than PyYAML's, with the same events and
        line marks) under the guarded composer and constructor."""

        def __init__(self, text: str) -> None:
            CParser.__init__(self, text)
            _GuardedComposer.__init__(self)
            _GuardedConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)

    _Loader = _LibyamlLoader


def _parse(path: Path, text: str, loader_class: Callable[[str], _GuardedComposer]) -> _FileResult:
    result = _FileResult(path)
    yaml_loader: Any = loader_class(text)
    try:
        while yaml_loader.check_node():
            node = yaml_loader.get_node()
            refusals, yaml_loader.refusals = yaml_loader.refusals, []
            result.diagnostics += [refusal.diagnostic(path) for refusal in refusals]
            if node is None or refusals:
                continue
            try:
                data = yaml_loader.construct_document(node)
            except _Refused as e:  # this document only: the next one is read on
                result.diagnostics.append(e.diagnostic(path))
                continue
            _load_document(path, node, data, result)
    except _Refused as e:  # composing cannot go on past it
        result.diagnostics.append(e.diagnostic(path))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(e, "problem", None) or str(e)
        context, context_mark = getattr(e, "context", None), getattr(e, "context_mark", None)
        if context and context_mark is not None and context_mark.line + 1 != line:
            context += f" started at line {context_mark.line + 1}"
        detail = f"{problem} ({context})" if context else problem
        result.diagnostics.append(Diagnostic(Source(path, line), None, f"invalid YAML: {detail}"))
        result.syntax_error = True
    finally:
        yaml_loader.dispose()
    return result


def _load_document(path: Path, node: yaml.Node, data: Any, result: _FileResult) -> None:
    if data is None:
        return  # an empty document
    start = Source(path, node.start_mark.line + 1)
    if not isinstance(data, dict):
        result.diagnostics.append(Diagnostic(start, None, (
            f"a manifest must be a mapping with apiVersion, kind, metadata and spec, "
            f"not {_describe_type(data)}"
        )))
        return
    lines = dict(_field_lines(node, ()))
    kind = data.get("kind")
    if not isinstance(kind, str) or kind not in model.KINDS:
        result.diagnostics.append(Diagnostic(
            Source(path, lines.get("kind", start.line)), None, _kind_problem(kind)
        ))
        return
    name = _raw_name(data)
    address = f"{model.SHORT_KIND[kind]}/{name if name is not None else '?'}"
    problems = [
        Diagnostic(Source(path, line), address, message) for line, message in _duplicate_keys(node, ())
    ]
    spec = data.get("spec")
    if kind == "CapabilityPack" and isinstance(spec, dict) and isinstance(spec.get("playbook"), str):
        try:
            result.playbooks.add((path.parent / spec["playbook"]).resolve())
        except (OSError, RuntimeError, ValueError):  # references.resolve says why
            pass
    try:
        manifest = model.MANIFEST_ADAPTER.validate_python(data, by_alias=True, by_name=False)
    except pydantic.ValidationError as e:
        for error in e.errors(include_url=False):
            loc: Loc = tuple(error["loc"][1:])  # [0] is the discriminator tag
            line, message = _explain(kind, loc, error, lines)
            problems.append(Diagnostic(Source(path, line or start.line), address, message))
    else:
        result.declared.append(Declared(manifest, start, lines))
    result.diagnostics += sorted(problems, key=lambda d: d.source or start)


def _kind_problem(kind: object) -> str:
    kinds = ", ".join(model.KINDS)
    if kind is None:
        return f"missing kind (one of {kinds})"
    hint = ""
    if isinstance(kind, str):
        close = difflib.get_close_matches(kind, list(model.KINDS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown kind {_shown(kind)}{hint}; expected one of {kinds}"


def _raw_name(data: dict[Any, Any]) -> str | None:
    metadata = data.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return _printable(name) if isinstance(name, str) and name else None


def _describe_type(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"{type(value).__name__} {_shown(value)}"


def _shown(value: object) -> str:
    """repr() of a user's value for a message, cut short: a value may be 64K long."""
    try:
        text = repr(value)
    except ValueError:  # an int beyond sys.get_int_max_str_digits()
        text = f"<{type(value).__name__} too large to print>"
    return text if len(text) <= _SHOWN_CHARS else f"{text[:_SHOWN_CHARS - 3]}..."


def _printable(text: str) -> str:
    """`text` with what a terminal would act on (RTL overrides, escapes) escaped."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def _tidy(diagnostic: Diagnostic) -> Diagnostic:
    """Every message printable and of a readable length, whatever the input held."""
    message = _printable(diagnostic.message)
    if len(message) > _MESSAGE_CHARS:
        message = f"{message[:_MESSAGE_CHARS - 3]}..."
    address = diagnostic.address
    if address is not None and len(address) > _SHOWN_CHARS:
        address = f"{address[:_SHOWN_CHARS - 3]}..."
    return Diagnostic(diagnostic.source, address, message)


def _path(loc: Loc) -> str:
    text = ""
    for part in loc:
        part = part if isinstance(part, int) else _printable(str(part))
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _field_lines(node: yaml.Node, loc: Loc) -> Iterator[tuple[str, int]]:
    """(camelCase path, 1-based line) of every key and list item under `node`."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                sub = (*loc, key.value)
                yield _path(sub), key.start_mark.line + 1
                yield from _field_lines(value, sub)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            sub = (*loc, index)
            yield _path(sub), item.start_mark.line + 1
            yield from _field_lines(item, sub)


def _duplicate_keys(node: yaml.Node, loc: Loc) -> Iterator[tuple[int, str]]:
    """(line, message) for each key written twice in one mapping: YAML keeps the last silently."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                if key.value in seen:
                    where = f"{_path(loc)}: " if loc else ""
                    message = f"{where}duplicate key {_shown(key.value)} (only the last would count)"
                    yield key.start_mark.line + 1, message
                seen.add(key.value)
                yield from _duplicate_keys(value, (*loc, key.value))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _duplicate_keys(item, (*loc, index))


def _line_of(lines: Mapping[str, int], loc: Loc) -> int | None:
    """Line of the field at `loc`, or of its nearest ancestor that was written."""
    for end in range(len(loc), 0, -1):
        line = lines.get(_path(loc[:end]))
        if line is not None:
            return line
    return None


def _explain(kind: str, loc: Loc, error: Any, lines: Mapping[str, int]) -> tuple[int | None, str]:
    """Line and human message for one pydantic error."""
    error_type, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    path, line = _path(loc), _line_of(lines, loc)
    parent = f"{_path(loc[:-1])}: " if len(loc) > 1 else ""
    if error_type == "extra_forbidden":
        return line, f"{parent}{_unknown_field(kind, loc)}"
    if error_type == "missing":
        return line, f"{parent}missing required field {_shown(loc[-1])}"
    if loc == ("apiVersion",) and error_type == "literal_error":
        return line, f"apiVersion {_shown(value)} is not supported (use {model.API_VERSION})"
    if (error_type == "string_pattern_mismatch" and ctx.get("pattern") == model.DNS1123_LABEL) or (
        error_type == "string_too_long" and ctx.get("max_length") == 63
    ):
        prefix = "" if loc == ("metadata", "name") else f"{path}: "
        return line, f"{prefix}name {_shown(value)} {_DNS_HINT}"
    if error_type == "value_error":
        message = str(ctx.get("error", error["msg"]))
        # A check across fields ("maxMemory (4Gi) is below memory (8Gi)") points at the first one.
        first_word = message.split(" ", 1)[0]
        if isinstance(value, dict) and first_word in value:
            line = lines.get(_path((*loc, first_word)), line)
        return line, f"{path}: {message}"
    if error_type == "literal_error":
        return line, f"{path}: {_shown(value)} is not one of {ctx.get('expected')}"
    if error_type == "string_too_short":
        return line, f"{path}: must not be empty"
    if error_type == "string_type":
        return line, f"{path}: expected a string, got {_shown(value)} (quote it in YAML)"
    if error_type in ("model_type", "model_attributes_type", "dict_type"):
        return line, f"{path}: expected a mapping, got {_describe_type(value)}"
    if error_type == "list_type":
        return line, f"{path}: expected a list, got {_describe_type(value)}"
    message = str(error["msg"]).removeprefix("Input ")
    return line, f"{path}: {message[0].lower()}{message[1:]} (got {_shown(value)})"


def _unknown_field(kind: str, loc: Loc) -> str:
    unknown = str(loc[-1])
    allowed = _allowed_fields(model.KINDS[kind], loc[:-1])
    if to_camel(unknown) in allowed and to_camel(unknown) != unknown:
        close = [to_camel(unknown)]  # snake_case written for a camelCase field
    else:
        close = difflib.get_close_matches(unknown, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown field {_shown(unknown)}{hint}"


def _allowed_fields(root: type[pydantic.BaseModel], loc: Loc) -> list[str]:
    """camelCase field names of the model found by following `loc` from `root`."""
    current: type[pydantic.BaseModel] | None = root
    for part in loc:
        if current is None:
            return []
        if isinstance(part, int):
            continue  # an index into a list of models
        fields = {info.alias or name: info for name, info in current.model_fields.items()}
        info = fields.get(part)
        current = _model_in(info.annotation) if info is not None else None
    return [info.alias or name for name, info in current.model_fields.items()] if current else []


def _model_in(annotation: object) -> type[pydantic.BaseModel] | None:
    """The pydantic model inside `X | None`, `list[X]` or `Annotated[X, ...]`."""
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
