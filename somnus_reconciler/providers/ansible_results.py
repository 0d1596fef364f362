"""What a pack run reports: ansible-runner's events read into a `PackRunResult`.

`ansible_provider.run_pack` hands each event of its run to an `EventLog`, which
passes a short human line per play and task result on (the engine's hooks show
them) and keeps the first failure; `EventLog.result` then says how the run
ended. A failure's message is an excerpt of what the guest printed, at most
MESSAGE_LIMIT characters, with private keys and bearer tokens redacted: it is
the text the engine's triage classifier reads.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

MESSAGE_LIMIT = 2000

# Result keys worth showing from a failed task, most telling first.
_RESULT_KEYS = ("msg", "stderr", "stdout", "module_stderr", "module_stdout", "exception")
_NOISE = frozenset({"(traceback unavailable)"})
_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", re.S)
_CONTAINER_GONE = re.compile(r"Error response from daemon: (No such container|Container \S+ is not running)")
_BEARER = re.compile(r"(?i)(authorization:\s*bearer\s+)\S+")


@dataclass(frozen=True)
class PackRunResult:
    ok: bool
    failed_task: str | None  # the failed task's name, "unreachable" or "timeout"
    message: str  # excerpt of the failure output, at most MESSAGE_LIMIT characters
    duration_s: float
    changed: int  # tasks that reported a change


@dataclass
class _Failure:
    task: str
    message: str


@dataclass
class EventLog:
    """Collects what a run reports: human lines, the first failure, the change count."""

    on_event: Callable[[str], None]
    failure: _Failure | None = None
    changed_tasks: int = 0
    stats_changed: int | None = None
    last_task: str | None = None

    def handle(self, event: Mapping[str, object]) -> bool:
        """ansible-runner's event handler; `event` is its decoded JSON."""
        kind = str(event.get("event", ""))
        data = _mapping(event.get("event_data"))
        task = str(data.get("task") or "").strip()
        res = _mapping(data.get("res"))
        if kind == "playbook_on_play_start":
            self.on_event(f"PLAY {data.get('play', '')}")
        elif kind == "playbook_on_task_start":
            self.last_task = task
        elif kind == "runner_on_ok":
            changed = bool(res.get("changed"))
            self.changed_tasks += changed
            self.on_event(f"TASK {task} ... {'changed' if changed else 'ok'}")
        elif kind == "runner_on_skipped":
            self.on_event(f"TASK {task} ... skipped")
        elif kind == "runner_on_unreachable" or (kind == "runner_on_failed" and _container_gone(res)):
            self._failed(task, "unreachable", _result_excerpt(res))
        elif kind == "runner_on_failed" and data.get("ignore_errors"):
            self.on_event(f"TASK {task} ... failed (ignored)")
        elif kind == "runner_on_failed":
            self._failed(task, "failed", _result_excerpt(res))
        elif kind == "playbook_on_stats":
            counts = _mapping(data.get("changed"))
            self.stats_changed = sum(v for v in counts.values() if isinstance(v, int))
        return True  # keep the event: runner writes it under the (temporary) artifacts

    def _failed(self, task: str, how: str, message: str) -> None:
        """`how` is "failed" or "unreachable"; the first failure is the one reported."""
        self.on_event(f"TASK {task} ... {how}: {_first_line(message)}")
        if self.failure is None:
            self.failure = _Failure(task if how == "failed" else "unreachable", message)

    def result(self, status: str, stdout_tail: str, duration_s: float, timeout_s: float) -> PackRunResult:
        changed = self.stats_changed if self.stats_changed is not None else self.changed_tasks
        if status == "timeout":
            where = f" in task {self.last_task!r}" if self.last_task else ""
            return PackRunResult(False, "timeout", f"no result within {timeout_s:g} s{where}",
                                 duration_s, changed)
        if status == "successful" and self.failure is None:
            return PackRunResult(True, None, "", duration_s, changed)
        if self.failure is not None:
            return PackRunResult(False, self.failure.task, self.failure.message, duration_s, changed)
        # Failed before any task (a playbook that does not parse, a bad inventory):
        # the reason is in ansible-playbook's own output.
        return PackRunResult(False, None, excerpt(stdout_tail or f"ansible-runner status {status}"),
                             duration_s, changed)


def _mapping(value: object) -> Mapping[str, object]:
    return value if isinstance(value, Mapping) else {}


def _result_excerpt(res: Mapping[str, object]) -> str:
    """msg, stderr and stdout of a failed result; of its failed items for a loop."""
    failed = _failed_items(res)
    if failed:
        return excerpt("\n".join(_item_text(item) for item in failed))
    return excerpt(_item_text(res))


def _failed_items(res: Mapping[str, object]) -> list[Mapping[str, object]]:
    items = res.get("results")
    if not isinstance(items, list):
        return []
    return [item for item in items
            if isinstance(item, Mapping) and (item.get("failed") or item.get("unreachable"))]


def _container_gone(res: Mapping[str, object]) -> bool:
    """`docker exec` into a missing or stopped container: the docker connection reports
    a module failure where SSH would report the host unreachable."""
    for item in [res, *_failed_items(res)]:
        stderr = str(item.get("module_stderr") or "")
        if _CONTAINER_GONE.search(stderr):
            return True
    return False


def _item_text(res: Mapping[str, object]) -> str:
    parts: list[str] = []
    cmd = res.get("cmd")
    if cmd:
        command = " ".join(str(c) for c in cmd) if isinstance(cmd, (list, tuple)) else str(cmd)
        rc = res.get("rc")
        parts.append(f"`{command}` exited {rc}" if rc is not None else f"`{command}`")
    for key in _RESULT_KEYS:
        value = res.get(key)
        if not isinstance(value, str) or not value.strip() or value.strip() in _NOISE:
            continue
        # apt's msg already quotes its stderr, for one: say things once.
        if any(value.strip() in part for part in parts):
            continue
        parts.append(value.strip() if key == "msg" else f"{key}: {value.strip()}")
    return "\n".join(parts) or json.dumps(dict(res), default=str)[:MESSAGE_LIMIT]


def excerpt(text: str) -> str:
    """`text` with secrets redacted, cut to MESSAGE_LIMIT characters (head and tail)."""
    text = _BEARER.sub(r"\1[redacted]", _PRIVATE_KEY.sub("[private key redacted]", text)).strip()
    if len(text) <= MESSAGE_LIMIT:
        return text
    # Keep the head (what failed) and the tail (the last lines usually say why).
    half = MESSAGE_LIMIT // 2 - 10
    return f"{text[:half]}\n[...]\n{text[-half:]}"


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= 160 else line[:157] + "..."


def read_tail(path: Path, limit: int = 8000) -> str:
    """The last `limit` bytes of a file as text; empty when it cannot be read."""
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-limit:].decode(errors="replace")
