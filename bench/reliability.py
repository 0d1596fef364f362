"""Reliability report: what was tried, and what was lost. The goal is zero in every "lost" cell.

    python bench/reliability.py [--fuzz 10000] [--crashes 20] [--seed N] [--skip-faults] [--quick]

Rows (each runs for real, against the running libvirtd and dockerd):
  * fuzzed manifests (testkit/fuzz_manifests.py, testkit/fuzz_check.py): generated files loaded as `validate` does;
    lost = tracebacks + hangs + diagnostics without a file and line;
  * crashes injected (testkit/crash_trials.py): `apply` SIGKILLed at random moments of a plan
    with a VM, containers and a pack step; lost = trials whose next apply did not converge
    or that left an open step, an orphan snapshot or image, or an unmarked object;
  * daemon faults injected (tests/integration/test_daemon_faults.py, through pytest):
    dockerd / libvirtd down before an apply, and stopped and restarted mid-apply; lost =
    failed scenarios (a half-done object, no convergence, no clear error);
  * concurrent appliers (tests/integration/test_concurrent_applies.py): lost = both acted;
  * hostile inputs (testkit/hostile_cases.py) through `somnus validate` / `apply`: lost =
    cases not refused with their message at their line, or that created anything.
The daemon-fault row stops and starts the daemons: never run it beside another test run
(--skip-faults leaves it out; --quick runs only the fuzz and hostile rows).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from testkit import hostile_cases  # noqa: E402
from testkit.crash_trials import run_trials  # noqa: E402
from testkit.fuzz_check import run_fuzz  # noqa: E402

Row = tuple[str, str, str, int]  # check, tried, detail, lost


def fuzz_row(count: int, seed: int) -> Row:
    report = run_fuzz(count, seed)
    lost = report["crashes"] + report["hangs"] + report["invalid_without_place"]
    detail = (f"{report['valid']} valid, {report['invalid_with_diagnostics']} refused at FILE:LINE; "
              f"slowest {report['max_seconds'] * 1000:.0f} ms of CPU, all in {report['total_seconds']:.0f} s of CPU")
    for failure in report["failures"]:
        print(f"  fuzz failure: {failure}", file=sys.stderr)
    return ("fuzzed manifests", str(report["generated"]), detail, lost)


def crash_row(count: int, seed: int) -> Row:
    with tempfile.TemporaryDirectory(prefix="bench-crash-") as tmp:
        results = run_trials(Path(tmp), f"bench-crash-{seed % 10000}", count, seed)
    mid = sum(r.killed_mid_run for r in results)
    recovered = sum(r.recovered for r in results)
    lost = sum(1 for r in results if r.problems or not r.converged) + count + 1 - len(results)  # untried: lost
    return ("crashes injected (SIGKILL)", str(count + 1),  # the fixed sequence first, then `count` random
            f"{mid} mid-apply, {recovered} rolled back by the next apply, seed {seed}", lost)


def pytest_row(check: str, test_file: str) -> Row:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", test_file],
                            capture_output=True, text=True, cwd=REPO)
    passed = int(m[1]) if (m := re.search(r"(\d+) passed", result.stdout)) else 0
    failed = int(m[1]) if (m := re.search(r"(\d+) (failed|error)", result.stdout)) else 0
    if result.returncode != 0:
        print(result.stdout[-3000:], file=sys.stderr)
    return (check, str(passed + failed), f"{passed} passed in {time.monotonic() - started:.0f} s", failed)


def hostile_row() -> Row:
    refused = 0
    created = 0
    env = dict(os.environ)
    for case in hostile_cases.CASES:
        with tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp:
            root = Path(tmp)
            env["SOMNUS_STATE_DIR"] = str(root / "state")
            manifest = hostile_cases.materialize(case, root)
            command = "validate" if case.stage == "validate" else "apply"
            args = [command, str(manifest.parent)] + (["-y"] if command == "apply" else [])
            result = subprocess.run([sys.executable, "-m", "somnus_reconciler", *args], capture_output=True,
                                    text=True, env=env, cwd=REPO)
            if result.returncode == 2 and hostile_cases.refusal_in(case, manifest, result.stderr):
                refused += 1
            else:
                print(f"  hostile case not refused as expected: {case.description}: {result.stderr[-300:]}",
                      file=sys.stderr)
            created += _objects_named(hostile_cases.NAME_PREFIX)
    tried = len(hostile_cases.CASES)
    return ("hostile inputs", str(tried), f"{refused} refused with their message and line, "
            f"{created} objects created", (tried - refused) + created)


def _objects_named(prefix: str) -> int:
    domains = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
                             capture_output=True, text=True).stdout.split()
    containers = subprocess.run(["docker", "ps", "-a", "--format", "{{.Names}}"],
                                capture_output=True, text=True).stdout.split()
    return sum(1 for name in domains + containers if name.startswith(prefix))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fuzz", type=int, default=10_000, help="generated manifest files")
    parser.add_argument("--crashes", type=int, default=20, help="SIGKILL trials")
    parser.add_argument("--seed", type=int, default=random.randrange(1, 10**6))
    parser.add_argument("--skip-faults", action="store_true", help="do not stop and start the daemons")
    parser.add_argument("--quick", action="store_true", help="only the fuzz and hostile rows")
    args = parser.parse_args()
    print(f"seed {args.seed}", flush=True)

    rows = [fuzz_row(args.fuzz, args.seed)]
    if not args.quick:
        rows.append(crash_row(args.crashes, args.seed))
        if not args.skip_faults:
            rows.append(pytest_row("daemon faults injected", "tests/integration/test_daemon_faults.py"))
        rows.append(pytest_row("concurrent appliers", "tests/integration/test_concurrent_applies.py"))
    rows.append(hostile_row())

    widths = [max(len(str(r[i])) for r in rows + [("check", "tried", "detail", 0)]) for i in range(3)]
    print(f"{'check':<{widths[0]}}  {'tried':>{widths[1]}}  {'lost':>4}  detail")
    for check, tried, detail, lost in rows:
        print(f"{check:<{widths[0]}}  {tried:>{widths[1]}}  {lost:>4}  {detail}")
    sys.exit(1 if any(r[3] for r in rows) else 0)


if __name__ == "__main__":
    main()
