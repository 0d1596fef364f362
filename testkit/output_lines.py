"""What a process started by a test or a bench writes on one of its pipes, line by line as it comes.

A reader thread parses each line (`str` keeps it as it is; tests/integration/event_stream.py
parses JSON events) and keeps it; `wait_for` blocks until a kept line matches, the
pipe closes or a deadline passes. Tests line themselves up with the product this
way, by what it prints, rather than by sleeping and hoping it got there.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import IO, Generic, TypeVar

T = TypeVar("T")


class OutputLines(Generic[T]):
    def __init__(self, pipe: IO[str], parse: Callable[[str], T]) -> None:
        self.items: list[T] = []
        self._parse = parse
        self._seen = threading.Condition()
        self._closed = False
        self._reader = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._reader.start()

    def _read(self, pipe: IO[str]) -> None:
        try:
            for line in pipe:
                with self._seen:
                    self.items.append(self._parse(line))
                    self._seen.notify_all()
        finally:
            with self._seen:
                self._closed = True
                self._seen.notify_all()

    def wait_for(self, matches: Callable[[T], bool], timeout_s: float, *, after: int = 0) -> int | None:
        """The index of the first item at index >= `after` that `matches`; None once the
        pipe has closed (the process ended) or `timeout_s` has passed without one."""
        deadline = time.monotonic() + timeout_s
        with self._seen:
            while True:
                for index in range(after, len(self.items)):
                    if matches(self.items[index]):
                        return index
                after = max(after, len(self.items))  # those are seen: look only at new ones
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    return None
                self._seen.wait(remaining)

    def mark(self) -> int:
        """An index for `after=`: only items from now on."""
        with self._seen:
            return len(self.items)

    def join(self, timeout_s: float) -> None:
        """Wait for the pipe to close (the process has ended) and its last lines to be kept."""
        self._reader.join(timeout=timeout_s)
