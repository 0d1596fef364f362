"""Agent configuration: which processes to supervise and which logs to watch.

Read by :mod:`somnus_agent.runtime` at start and on ``POST /config/reload``.
The file is JSON: ``{"processes": [{"name": ..., "argv": [...]}], "watch_logs": [...]}``.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib


class ConfigError(Exception):
    """The configuration file is missing, unreadable or malformed."""


@dataclasses.dataclass(frozen=True)
class ProcessSpec:
    """One monitored process: a unique name and the argv that starts it."""

    name: str
    argv: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """The whole agent configuration; empty when no config file is given."""

    processes: tuple[ProcessSpec, ...] = ()
    watch_logs: tuple[pathlib.Path, ...] = ()


def load(path: pathlib.Path | None) -> AgentConfig:
    """Read and validate the config file, collecting every problem before raising."""
    if path is None:
        return AgentConfig()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path}: top level must be an object")
    problems: list[str] = []
    processes: list[ProcessSpec] = []
    seen: set[str] = set()
    for i, entry in enumerate(raw.get("processes", [])):
        name = entry.get("name") if isinstance(entry, dict) else None
        argv = entry.get("argv") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name:
            problems.append(f"processes[{i}].name must be a non-empty string")
            continue
        if name in seen:
            problems.append(f"processes[{i}].name {name!r} is duplicated")
        if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
            problems.append(f"processes[{i}].argv must be a non-empty list of strings")
            continue
        seen.add(name)
        processes.append(ProcessSpec(name=name, argv=tuple(argv)))
    logs = raw.get("watch_logs", [])
    if not (isinstance(logs, list) and all(isinstance(p, str) for p in logs)):
        problems.append("watch_logs must be a list of paths")
        logs = []
    if problems:
        raise ConfigError(f"config {path}: " + "; ".join(problems))
    return AgentConfig(
        processes=tuple(processes),
        watch_logs=tuple(pathlib.Path(p) for p in logs),
    )
