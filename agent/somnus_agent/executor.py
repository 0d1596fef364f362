"""Runs one command for ``POST /execute`` with a timeout and capped output.

The command gets its own process group so a timeout kills everything it
spawned. Output beyond the cap is read and discarded so the child never blocks
on a full pipe.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import threading
import time
from typing import IO

OUTPUT_CAP_BYTES = 1024 * 1024
MAX_TIMEOUT_S = 600.0
_CHUNK = 65536


@dataclasses.dataclass(frozen=True)
class ExecResult:
    """The answer to ``POST /execute``."""

    exit_code: int | None
    stdout: str
    stderr: str
    duration_s: float
    timed_out: bool
    truncated: bool


class _CappedReader(threading.Thread):
    def __init__(self, stream: IO[bytes], cap: int) -> None:
        super().__init__(daemon=True)
        self._stream = stream
        self._cap = cap
        self.data = bytearray()
        self.truncated = False

    def run(self) -> None:
        while chunk := self._stream.read1(_CHUNK):  # type: ignore[attr-defined]
            room = self._cap - len(self.data)
            if len(chunk) > room:
                self.truncated = True
            if room > 0:
                self.data += chunk[:room]
        self._stream.close()


def _feed(stream: IO[bytes], data: bytes) -> None:
    try:
        stream.write(data)
    except (BrokenPipeError, OSError):
        pass
    finally:
        try:
            stream.close()
        except OSError:
            pass


def run(argv: list[str], stdin: str, timeout_s: float, cap: int = OUTPUT_CAP_BYTES) -> ExecResult:
    """Run ``argv``; raises OSError when it cannot be started."""
    started = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdin and proc.stdout and proc.stderr
    readers = [_CappedReader(proc.stdout, cap), _CappedReader(proc.stderr, cap)]
    for r in readers:
        r.start()
    threading.Thread(target=_feed, args=(proc.stdin, stdin.encode("utf-8")), daemon=True).start()
    timed_out = False
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    for r in readers:
        # A daemonised grandchild outside the group may hold the pipe; don't wait forever.
        r.join(timeout=2.0)
    out, err = readers
    return ExecResult(
        exit_code=proc.returncode,
        stdout=out.data.decode("utf-8", errors="replace"),
        stderr=err.data.decode("utf-8", errors="replace"),
        duration_s=round(time.monotonic() - started, 3),
        timed_out=timed_out,
        truncated=out.truncated or err.truncated,
    )
