"""Manifest files read as YAML under limits: the first layer of `manifests.loader`.

`read_text` refuses what cannot be a manifest file (too large, not UTF-8, characters
YAML forbids). `Loader` (libyaml's parser when PyYAML has it, else `PureLoader`)
composes under `GuardedComposer`, which measures each document as it is composed,
before any Python object exists: aliases that would expand beyond MAX_NODES values
(a file: MAX_FILE_NODES), nesting deeper than MAX_DEPTH, values longer than
MAX_SCALAR_CHARS or holding forbidden characters. `GuardedConstructor` turns every
failure to convert a value into a `Refused` at its line. `manifests.loader` places
what is refused in its diagnostics.
"""

from __future__ import annotations

import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import yaml

from somnus_reconciler.values.diagnostics import Diagnostic, Source
from somnus_reconciler.values.errors import PermanentError
from somnus_reconciler.values.quantity import format_bytes, format_bytes_rounded

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
SHOWN_CHARS = 80  # a user's value quoted in a message
# What YAML allows in a file (PyYAML's Reader.NON_PRINTABLE, negated). Values are held
# to it as well, so that an escape cannot bring in a NUL (which breaks every path,
# argument and environment variable) or a lone surrogate ("\ud800", which breaks
# every later encode(), the spec hash's among them).
_NOT_YAML_CHARACTER = re.compile("[^\t\n\r\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def read_text(path: Path) -> str | Diagnostic:
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


class _Mark(Protocol):
    """Where an event or node starts: PyYAML's Mark, or libyaml's."""

    @property
    def line(self) -> int: ...  # 0-based


class Refused(yaml.YAMLError, PermanentError):
    """Input the loader does not go on with, at a 1-based line (a YAMLError too, for
    code that catches PyYAML's errors)."""

    def __init__(self, mark: _Mark | None, message: str) -> None:
        super().__init__(message)
        self.line: int = mark.line + 1 if mark is not None else 1
        self.message = message

    def diagnostic(self, path: Path) -> Diagnostic:
        return Diagnostic(Source(path, self.line), None, self.message)


class GuardedComposer(yaml.composer.Composer):
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
        self.refusals: list[Refused] = []
        self._measured: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded values, depth)
        self._expanded = 0  # values in the document so far, aliases expanded
        self._file_expanded = 0  # the same, in the file
        self._open = 0  # collections being composed

    def compose_document(self) -> yaml.Node | None:
        self._measured, self._expanded, self._open = {}, 0, 0
        node = super().compose_document()
        self._measured = {}
        return node

    # `index` only passes through (the stubs say int; for a mapping's value it is the key node).
    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)
            if isinstance(target, yaml.CollectionNode) and id(target) not in self._measured:
                raise Refused(event.start_mark, (
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
            raise Refused(event.start_mark, f"nested deeper than {MAX_DEPTH} levels")
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
            raise Refused(event.start_mark, (
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
            raise Refused(node.start_mark, f"nested deeper than {MAX_DEPTH} levels through aliases")
        return size, depth

    def _check_scalar(self, node: yaml.ScalarNode) -> None:
        value: str = node.value
        if value.isprintable() and len(value) <= MAX_SCALAR_CHARS:
            return  # the common case, and faster than the search below
        if len(value) > MAX_SCALAR_CHARS:
            self.refusals.append(Refused(node.start_mark, (
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
            self.refusals.append(Refused(node.start_mark, (
                f"{_character(forbidden.group())} in a value: YAML forbids it, "
                f"written as an escape too"
            )))


_SCALAR = (1, 0)  # a scalar's expanded size and depth


class GuardedConstructor(yaml.constructor.SafeConstructor):
    """SafeConstructor whose every failure is a YAML error at a line.

    PyYAML lets ValueError escape from scalars its resolver took for numbers or
    dates but Python cannot convert (`0x_`, `0b_`, `2001-02-30`, an integer of 5,000
    digits); they are refused at the scalar's line. Numbers written with more than
    MAX_NUMBER_CHARS characters are refused unread (sexagesimal `1:2:3...` is
    quadratic to convert), and integers must fit in 64 bits: a larger one only
    fails later, where it is harder to place or cannot even be printed.
    """

    def construct_document(self, node: yaml.Node) -> object:
        try:
            return super().construct_document(node)
        except (ValueError, TypeError, OverflowError) as e:
            self._forget()
            raise Refused(node.start_mark, f"cannot read this document: {e}") from e
        except Refused:
            self._forget()
            raise

    def _forget(self) -> None:
        """Drop what a failed document left behind, so the next one starts clean."""
        self.constructed_objects, self.recursive_objects, self.state_generators = {}, {}, []
        self.deep_construct = False

    def construct_object(self, node: yaml.Node, deep: bool = False) -> object:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as e:
            what = shown(node.value) if isinstance(node, yaml.ScalarNode) else "this value"
            raise Refused(node.start_mark, f"cannot read {what} as {_tag_name(node)}: {e}") from e

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        self._check_length(node)
        value = super().construct_yaml_int(node)
        if not _INT_MIN <= value <= _INT_MAX:
            raise Refused(node.start_mark, f"integer {shown(node.value)} does not fit in 64 bits")
        return value

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
        self._check_length(node)
        return super().construct_yaml_float(node)

    @staticmethod
    def _check_length(node: yaml.ScalarNode) -> None:
        if len(node.value) > MAX_NUMBER_CHARS:
            raise Refused(node.start_mark, (
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


class PureLoader(
    yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser, GuardedComposer,
    GuardedConstructor, yaml.resolver.Resolver,
):
    def __init__(self, text: str) -> None:
        yaml.reader.Reader.__init__(self, text)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        GuardedComposer.__init__(self)
        GuardedConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)


class ManifestLoader(Protocol):
    """What the loader uses of `Loader`: documents as nodes, then as Python values."""

    refusals: list[Refused]

    def check_node(self) -> bool: ...

    def get_node(self) -> yaml.Node | None: ...

    def construct_document(self, node: yaml.Node) -> object: ...

    def dispose(self) -> None: ...


Loader: Callable[[str], ManifestLoader] = PureLoader
if getattr(yaml, "__with_libyaml__", False):
    from yaml._yaml import CParser

    class LibyamlLoader(GuardedComposer, CParser, GuardedConstructor, yaml.resolver.Resolver):
        """libyaml's parser (about 7x faster than PyYAML's, with the same events and
        line marks) under the guarded composer and constructor."""

        def __init__(self, text: str) -> None:
            CParser.__init__(self, text)
            GuardedComposer.__init__(self)
            GuardedConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)

    Loader = LibyamlLoader


def shown(value: object) -> str:
    """repr() of a user's value for a message, cut short: a value may be 64K long."""
    try:
        text = repr(value)
    except ValueError:  # an int beyond sys.get_int_max_str_digits()
        text = f"<{type(value).__name__} too large to print>"
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS - 3]}..."
