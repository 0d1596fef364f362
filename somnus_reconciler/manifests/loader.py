"""Read manifest files into validated kinds, each with the file and line it came from.

`load(paths)` is the first step of every command (`manifests.references.resolve`
takes its result; `passes.prepare.load_desired` calls both). It never stops at
the first problem: every YAML error, every document that is not a manifest and
every schema error of every file is collected, each placed at the line of the
offending field, and raised together as one `InvalidInput`
(`FILE:LINE: vm/coder-1: spec.diskSize: ...`).

Files that a CapabilityPack names as its `playbook` are Ansible playbooks, not
manifests: a directory scan skips them, so packs can keep playbooks beside them.

Any file at all ends in declared objects or in diagnostics, in bounded time and
memory, never in another exception: `guarded_yaml` reads and composes it under
limits (size, encoding, alias expansion, depth, value length, numbers).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Union, get_args

import pydantic
import yaml
from pydantic.alias_generators import to_camel

from somnus_reconciler.manifests import guarded_yaml, parsed_cache
from somnus_reconciler.manifests.guarded_yaml import SHOWN_CHARS, shown
from somnus_reconciler.values import fields, model
from somnus_reconciler.values.diagnostics import Diagnostic, Diagnostics, Source

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails  # what pydantic.ValidationError.errors() lists

AnyManifest = Union[
    model.ResourceProfile, model.CapabilityPack, model.VirtualMachine, model.Container, model.Secret, model.Pool
]
Loc = tuple[Union[str, int], ...]

# The pure-Python parser, used again for its clearer message on a syntax error,
# reads about 300 KB a second; larger broken files keep libyaml's message.
_REPARSE_MAX_CHARS = 256 * 2**10
_MESSAGE_CHARS = 500
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
    """Files as given; directories searched recursively for *.yaml / *.yml, each file once."""
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
    text = guarded_yaml.read_text(path)
    if isinstance(text, Diagnostic):
        return _FileResult(path, diagnostics=[text])
    cached = parsed_cache.get(path, text, _FileResult)
    if cached is not None:
        return cached
    result = _parse(path, text, guarded_yaml.Loader)
    if (guarded_yaml.Loader is not guarded_yaml.PureLoader and result.syntax_error
            and len(text) <= _REPARSE_MAX_CHARS):
        # libyaml's messages are terser; a broken file is rare, so read it again
        # with the pure-Python parser for the clearer one.
        result = _parse(path, text, guarded_yaml.PureLoader)
    if not result.diagnostics:  # a file with problems is read again each time: its messages stay fresh
        parsed_cache.put(path, text, result)
    return result


def _parse(path: Path, text: str, loader_class: Callable[[str], guarded_yaml.ManifestLoader]) -> _FileResult:
    result = _FileResult(path)
    yaml_loader = loader_class(text)
    try:
        while yaml_loader.check_node():
            node = yaml_loader.get_node()
            refusals, yaml_loader.refusals = yaml_loader.refusals, []
            result.diagnostics += [refusal.diagnostic(path) for refusal in refusals]
            if node is None or refusals:
                continue
            try:
                data = yaml_loader.construct_document(node)
            except guarded_yaml.Refused as e:  # this document only: the next one is read on
                result.diagnostics.append(e.diagnostic(path))
                continue
            _load_document(path, node, data, result)
    except guarded_yaml.Refused as e:  # composing cannot go on past it
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


def _load_document(path: Path, node: yaml.Node, data: object, result: _FileResult) -> None:
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
        # The kind's own model: only the kinds a run uses have their validators built.
        manifest = model.KINDS[kind].model_validate(data, by_alias=True, by_name=False)
    except pydantic.ValidationError as e:
        for error in e.errors(include_url=False):
            loc: Loc = tuple(part for part in error["loc"] if part not in model.UNION_TAGS)
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
    return f"unknown kind {shown(kind)}{hint}; expected one of {kinds}"


def _raw_name(data: Mapping[object, object]) -> str | None:
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
    return f"{type(value).__name__} {shown(value)}"


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
    if address is not None and len(address) > SHOWN_CHARS:
        address = f"{address[:SHOWN_CHARS - 3]}..."
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
                    message = f"{where}duplicate key {shown(key.value)} (only the last would count)"
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


def _explain(kind: str, loc: Loc, error: ErrorDetails, lines: Mapping[str, int]) -> tuple[int | None, str]:
    """Line and human message for one pydantic error."""
    error_type, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    path, line = _path(loc), _line_of(lines, loc)
    parent = f"{_path(loc[:-1])}: " if len(loc) > 1 else ""
    if error_type == "extra_forbidden":
        return line, f"{parent}{_unknown_field(kind, loc)}"
    if error_type == "missing":
        return line, f"{parent}missing required field {shown(loc[-1])}"
    if loc == ("apiVersion",) and error_type == "literal_error":
        return line, f"apiVersion {shown(value)} is not supported (use {model.API_VERSION})"
    if (error_type == "string_pattern_mismatch" and ctx.get("pattern") == fields.DNS1123_LABEL) or (
        error_type == "string_too_long" and ctx.get("max_length") == 63
    ):
        prefix = "" if loc == ("metadata", "name") else f"{path}: "
        return line, f"{prefix}name {shown(value)} {_DNS_HINT}"
    if error_type == "value_error":
        message = str(ctx.get("error", error["msg"]))
        # A check across fields ("maxMemory (4Gi) is below memory (8Gi)") points at the first one.
        first_word = message.split(" ", 1)[0]
        if isinstance(value, dict) and first_word in value:
            line = lines.get(_path((*loc, first_word)), line)
        return line, f"{path}: {message}"
    if error_type == "literal_error":
        return line, f"{path}: {shown(value)} is not one of {ctx.get('expected')}"
    if error_type == "string_too_short":
        return line, f"{path}: must not be empty"
    if error_type == "string_type":
        return line, f"{path}: expected a string, got {shown(value)} (quote it in YAML)"
    if error_type in ("model_type", "model_attributes_type", "dict_type"):
        return line, f"{path}: expected a mapping, got {_describe_type(value)}"
    if error_type == "list_type":
        return line, f"{path}: expected a list, got {_describe_type(value)}"
    message = str(error["msg"]).removeprefix("Input ")
    return line, f"{path}: {message[0].lower()}{message[1:]} (got {shown(value)})"


def _unknown_field(kind: str, loc: Loc) -> str:
    unknown = str(loc[-1])
    allowed = _allowed_fields(model.KINDS[kind], loc[:-1])
    if to_camel(unknown) in allowed and to_camel(unknown) != unknown:
        close = [to_camel(unknown)]  # snake_case written for a camelCase field
    else:
        close = difflib.get_close_matches(unknown, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown field {shown(unknown)}{hint}"


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
