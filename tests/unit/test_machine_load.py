"""testkit/machine_load.py: the load `--under-load` starts runs its workers, and stopping
it by its pid ends them all."""

from __future__ import annotations

import psutil

from testkit import machine_load


def test_the_load_runs_its_workers_and_stopping_it_ends_them() -> None:
    load = machine_load.start(workers=1)
    try:
        workers = psutil.Process(load.proc.pid).children()
        assert len(workers) == 1 and "--cpu 1 --cpu-load 100" in load.command
    finally:
        load.stop()
    assert load.proc.returncode is not None
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert alive == []
