"""The object page's small charts of an agent's figures, as values for its template.

Pure: samples in, for each figure (CPU, memory, disk, load) the latest value in words
and the points of an SVG polyline over the last hour (x from an hour ago to now, y
from the chart's top down to zero). The template draws them as inline SVG, which
the Content-Security-Policy allows (no script, no inline style).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from somnus_reconciler.values.quantity import format_bytes_rounded as size
from somnus_reconciler.web.guest_samples import WINDOW_S, Sample

WIDTH = 240
HEIGHT = 60


@dataclass(frozen=True)
class Chart:
    key: str  # cpu | memory | disk | load
    title: str
    latest: str  # "12 %", "312 MiB of 1 GiB (30 %)", "0.30"
    top: str  # the value at the top of the chart: "100 %", "2"
    points: str  # "x,y x,y ..." in a WIDTH x HEIGHT box
    count: int


def _percent(part: int, whole: int) -> float:
    return 100.0 * part / whole if whole else 0.0


def charts(samples: Sequence[Sample], *, now: float, window_s: float = WINDOW_S) -> tuple[Chart, ...]:
    """The four charts of `samples` (oldest first) for the window ending at `now`."""
    last = samples[-1] if samples else None
    load_top = max(1.0, math.ceil(max((s.load_1m for s in samples), default=0.0)))
    figures: list[tuple[str, str, Callable[[Sample], float], float, str]] = [
        ("cpu", "CPU", lambda s: s.cpu_percent, 100.0, f"{last.cpu_percent:.0f} %" if last else ""),
        ("memory", "Memory", lambda s: _percent(s.memory_used, s.memory_total), 100.0,
         f"{size(last.memory_used)} of {size(last.memory_total)} "
         f"({_percent(last.memory_used, last.memory_total):.0f} %)" if last else ""),
        ("disk", "Disk /", lambda s: _percent(s.disk_used, s.disk_total), 100.0,
         f"{size(last.disk_used)} of {size(last.disk_total)} "
         f"({_percent(last.disk_used, last.disk_total):.0f} %)" if last else ""),
        ("load", "Load (1 min)", lambda s: s.load_1m, load_top, f"{last.load_1m:.2f}" if last else ""),
    ]
    return tuple(
        Chart(key, title, latest, f"{top:g}" if key == "load" else "100 %",
              _points(samples, value, top, now=now, window_s=window_s), len(samples))
        for key, title, value, top, latest in figures
    )


def _points(samples: Sequence[Sample], value: Callable[[Sample], float], top: float, *,
            now: float, window_s: float) -> str:
    start = now - window_s
    points = []
    for sample in samples:
        x = WIDTH * max(0.0, sample.at - start) / window_s
        y = HEIGHT * (1.0 - min(max(value(sample), 0.0), top) / top)
        points.append(f"{x:.1f},{y:.1f}")
    return " ".join(points)
