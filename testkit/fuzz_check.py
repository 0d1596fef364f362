"""Load the files `testkit.fuzz_manifests` generates as `somnus validate` does, and judge how that ended.

`check_file` loads one file (`passes.prepare.load_desired`: `manifests.loader.load`,
`manifests.references.resolve`, pack fingerprints) and says how it ended; every
example must end `Outcome.acceptable`: a DesiredState, or InvalidInput whose every
diagnostic names the file and a line (or, for a problem of the whole file, has the
file's path in its message), within TIME_BOUND_SECONDS of CPU time.
tests/unit/test_fuzz_manifests.py asserts that through hypothesis;
bench/reliability.py calls `run_fuzz(count, seed)`.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Literal, TypedDict

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from somnus_reconciler.passes import prepare
from somnus_reconciler.values.diagnostics import Diagnostic, InvalidInput
from testkit.fuzz_manifests import PLAYBOOK, manifest_files

TIME_BOUND_SECONDS = 2.0  # CPU seconds one example may take
STOP_SECONDS = 20.0  # an example still running then is stopped and counted as a hang
DEFAULT_EXAMPLES = 10_000  # per test run, across the tests; SOMNUS_FUZZ_EXAMPLES overrides


@dataclass(frozen=True)
class Outcome:
    kind: Literal["valid", "invalid", "unplaced", "crash", "hang"]
    seconds: float
    detail: str = ""  # the exception or the unplaced diagnostic

    @property
    def acceptable(self) -> bool:
        return self.kind in ("valid", "invalid") and self.seconds < TIME_BOUND_SECONDS


class _Stopped(BaseException):
    """Raised by the alarm in an example that runs far beyond its bound."""


def example_directory(root: Path) -> Path:
    """`root` with the playbook that generated packs may name."""
    (root / PLAYBOOK).parent.mkdir(parents=True, exist_ok=True)
    (root / PLAYBOOK).write_text("- hosts: all\n  tasks: []\n")
    return root


def check_file(directory: Path, data: bytes) -> Outcome:
    """Write `data` as a manifest in `directory` (see example_directory), load it as
    `somnus validate` does and say how that ended.

    The bound is on CPU time, not the clock: a machine busy with other work makes an
    example wait, not work longer. An example over the bound is loaded once more and
    the lower figure counts: a cost paid once in the process (a lazy import, a
    collection of the test runner's whole heap) is not the loader's, while a real
    hang or blow-up is over the bound both times. It still meets the wall-clock alarm.
    """
    path = directory / "example.yaml"
    path.write_bytes(data)
    outcome = _load_once(path, data)
    if not _over_bound(outcome):
        return outcome
    again = _load_once(path, data)
    if not _over_bound(again):
        return again
    return Outcome("hang", min(outcome.seconds, again.seconds),
                   f"took {outcome.seconds:.2f} s and {again.seconds:.2f} s of CPU")


def _over_bound(outcome: Outcome) -> bool:
    """Loaded to the end (valid or invalid), but in TIME_BOUND_SECONDS of CPU or more."""
    return outcome.kind in ("valid", "invalid") and outcome.seconds >= TIME_BOUND_SECONDS


def _load_once(path: Path, data: bytes) -> Outcome:
    start = time.thread_time()
    with _Alarm(STOP_SECONDS):
        try:
            prepare.load_desired([path])  # loader.load, then references.resolve and more
        except InvalidInput as e:
            return _judge(path, data, e.diagnostics, time.thread_time() - start)
        except _Stopped:
            return Outcome("hang", time.thread_time() - start, f"stopped after {STOP_SECONDS:g} s")
        except BaseException as e:  # what the loader must never let out (RecursionError too)
            if isinstance(e, KeyboardInterrupt):
                raise
            frames = traceback.extract_tb(e.__traceback__)[-4:]
            where = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(frames))
            return Outcome("crash", time.thread_time() - start, f"{type(e).__name__}: {e} at {where}")
    return Outcome("valid", time.thread_time() - start)


def _judge(path: Path, data: bytes, diagnostics: tuple[Diagnostic, ...], seconds: float) -> Outcome:
    # YAML counts \r, NEL and the Unicode separators as line breaks too; splitlines() all of them.
    lines = len(data.decode("utf-8", "replace").splitlines()) + 1
    for d in diagnostics:
        placed = (d.source.file == path and 1 <= d.source.line <= lines) if d.source is not None \
            else str(path) in d.message
        if not placed:
            return Outcome("unplaced", seconds, str(d))
    return Outcome("invalid" if diagnostics else "unplaced", seconds)


class _Alarm:
    """SIGALRM raising _Stopped, where signals can be used (the main thread of a POSIX process)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.armed = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
        self.previous: Any = None

    def __enter__(self) -> None:
        if self.armed:
            self.previous = signal.signal(signal.SIGALRM, self._fire)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)

    def __exit__(self, *exc: object) -> None:
        if self.armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous)

    @staticmethod
    def _fire(signum: int, frame: FrameType | None) -> None:
        raise _Stopped()


# --- the runner for reports ------------------------------------------------------


class FuzzReport(TypedDict):
    generated: int
    valid: int
    invalid_with_diagnostics: int
    invalid_without_place: int  # InvalidInput with a diagnostic that names no file and line
    crashes: int  # any other exception
    hangs: int  # over TIME_BOUND_SECONDS (stopped at STOP_SECONDS)
    max_seconds: float  # the slowest example
    total_seconds: float  # the whole run, generation included
    seed: int
    failures: list[str]  # the first few failing examples: outcome and the start of the input


def example_budget(default: int = DEFAULT_EXAMPLES) -> int:
    """Examples per run, from SOMNUS_FUZZ_EXAMPLES."""
    return max(1, int(os.environ.get("SOMNUS_FUZZ_EXAMPLES", default)))


def run_fuzz(count: int, seed: int = 0, strategy: st.SearchStrategy[bytes] | None = None,
             on_example: Callable[[Outcome], None] | None = None) -> FuzzReport:
    """Generate `count` files (all kinds mixed, unless `strategy`), load each, count outcomes.

    The same `seed` gives the same files. Nothing raises for a failing example: it is
    counted, and the first five are described in `failures`. `on_example` sees each
    outcome as it comes (for progress).
    """
    report = FuzzReport(generated=0, valid=0, invalid_with_diagnostics=0, invalid_without_place=0,
                        crashes=0, hangs=0, max_seconds=0.0, total_seconds=0.0, seed=seed, failures=[])
    counter = {"valid": "valid", "invalid": "invalid_with_diagnostics",
               "unplaced": "invalid_without_place", "crash": "crashes", "hang": "hangs"}
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="somnus-fuzz-") as tmp:
        directory = example_directory(Path(tmp))

        def one(data: bytes) -> None:
            outcome = check_file(directory, data)
            report["generated"] += 1
            report[counter[outcome.kind]] += 1  # type: ignore[literal-required]
            report["max_seconds"] = max(report["max_seconds"], outcome.seconds)
            if not outcome.acceptable and len(report["failures"]) < 5:
                report["failures"].append(f"{outcome.kind} ({outcome.detail}) for {data[:200]!r}")
            if on_example is not None:
                on_example(outcome)

        # In runs of at most _RUN examples: hypothesis remembers every example of a run.
        for run, first in enumerate(range(0, count, _RUN)):
            run_seed = seed if run == 0 else hash((seed, run))
            hypothesis_seed(run_seed)(settings(
                max_examples=min(_RUN, count - first), database=None, deadline=None,
                phases=[Phase.generate], suppress_health_check=list(HealthCheck),
            )(given(strategy if strategy is not None else manifest_files())(one)))()
    report["total_seconds"] = time.monotonic() - start
    return report


_RUN = 5_000


if __name__ == "__main__":
    import sys

    print(json.dumps(run_fuzz(int(sys.argv[1]) if len(sys.argv) > 1 else 1000,
                              int(sys.argv[2]) if len(sys.argv) > 2 else 0), indent=2))
