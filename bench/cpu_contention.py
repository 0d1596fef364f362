"""How much the machine slows CPU-bound work right now: the wall time of a fixed amount of CPU.

Run it beside the test suite (with or without `--under-load`, issue 18) to see how
busy the cores are: on an idle machine 3.0 s of CPU take 3.0 s of wall time; the
more other processes want the cores, the longer. Prints one line per sample.

    python bench/cpu_contention.py [--cpu-seconds 3] [--samples 1] [--every 0]
"""

from __future__ import annotations

import argparse
import os
import time


def wall_time_of_cpu(cpu_seconds: float) -> float:
    """Spin until this process has used `cpu_seconds` of CPU; the wall time that took, in s."""
    wall_start, cpu_start = time.monotonic(), time.process_time()
    while time.process_time() - cpu_start < cpu_seconds:
        pass
    return time.monotonic() - wall_start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-seconds", type=float, default=3.0, help="CPU time to spend per sample")
    parser.add_argument("--samples", type=int, default=1, help="how many samples")
    parser.add_argument("--every", type=float, default=0.0, help="seconds to wait between samples")
    args = parser.parse_args()
    for sample in range(args.samples):
        if sample:
            time.sleep(args.every)
        wall = wall_time_of_cpu(args.cpu_seconds)
        load1, _, _ = os.getloadavg()
        print(f"{time.strftime('%H:%M:%S')}  {args.cpu_seconds:.1f} s of CPU took {wall:5.2f} s of wall time "
              f"({wall / args.cpu_seconds:.1f}x)  load average {load1:.2f}", flush=True)


if __name__ == "__main__":
    main()
