"""Load on purpose: Debian's `stress-ng` keeping every core busy while the tests run.

The test suite must not depend on how fast the machine is (issue 18): run under
load, a test that lines itself up with the product by a clock rather than by what
the product says shows it. tests/conftest.py starts a `MachineLoad` for a session
run with `--under-load` or `SOMNUS_TEST_LOAD=1` and stops it at the session's end.

stress-ng runs in a session of its own; it is stopped by its process group, whose id
is its pid (its workers are in it), and it ends by itself after `bound_s` should the
test process die without stopping it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass

import psutil

STRESS_NG = "stress-ng"


@dataclass(frozen=True)
class MachineLoad:
    proc: subprocess.Popen[bytes]
    command: str
    workers: int
    started: float  # time.monotonic()

    def stop(self, timeout_s: float = 30.0) -> float:
        """SIGTERM to stress-ng's group (SIGKILL if it outlives `timeout_s`); how long it ran, in s."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return time.monotonic() - self.started


def start(workers: int | None = None, *, bound_s: int = 4 * 3600, ready_within_s: float = 30.0) -> MachineLoad:
    """stress-ng with `workers` CPU workers (one per core by default) at 100%, once they all run."""
    count = workers or os.cpu_count() or 2
    argv = [STRESS_NG, "--cpu", str(count), "--cpu-load", "100", "--timeout", f"{bound_s}s", "--quiet"]
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                                start_new_session=True)
        load = MachineLoad(proc, " ".join(argv), count, time.monotonic())
        deadline = time.monotonic() + ready_within_s
        while _running_workers(proc.pid) < count:
            if proc.poll() is not None or time.monotonic() > deadline:
                load.stop()
                stderr.seek(0)
                raise RuntimeError(f"{load.command} did not start {count} workers within {ready_within_s:.0f} s "
                                   f"(exit code {proc.returncode}): {stderr.read().decode(errors='replace')[-2000:]}")
            time.sleep(0.1)
    return load


def _running_workers(pid: int) -> int:
    try:
        return len(psutil.Process(pid).children())
    except psutil.NoSuchProcess:
        return 0
