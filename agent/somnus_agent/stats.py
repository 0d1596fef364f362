"""Host figures for ``GET /stats/basic``: CPU, memory, disk, load, uptime.

Uses psutil when the guest happens to have it, otherwise reads ``/proc``.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

try:  # optional: Debian's python3-psutil may or may not be installed
    import psutil as _psutil
except ImportError:  # pragma: no cover - depends on the guest
    _psutil = None

_CPU_SAMPLE_S = 0.1


def _proc_cpu_times() -> tuple[int, int]:
    """(idle, total) jiffies from the aggregate line of /proc/stat."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return idle, sum(fields[:8])


def cpu_percent() -> float:
    """Whole-machine CPU use over a short sample."""
    if _psutil is not None:
        return float(_psutil.cpu_percent(interval=_CPU_SAMPLE_S))
    idle0, total0 = _proc_cpu_times()
    time.sleep(_CPU_SAMPLE_S)
    idle1, total1 = _proc_cpu_times()
    total = total1 - total0
    return round(100.0 * (1 - (idle1 - idle0) / total), 1) if total > 0 else 0.0


def memory() -> dict[str, int]:
    """Bytes: total, used, available."""
    if _psutil is not None:
        vm = _psutil.virtual_memory()
        return {"total": vm.total, "used": vm.total - vm.available, "available": vm.available}
    info: dict[str, int] = {}
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            info[key] = int(rest.split()[0]) * 1024
    total = info["MemTotal"]
    available = info.get("MemAvailable", info.get("MemFree", 0))
    return {"total": total, "used": total - available, "available": available}


def uptime_s() -> float:
    with open("/proc/uptime", encoding="ascii") as f:
        return float(f.read().split()[0])


def basic() -> dict[str, Any]:
    """The ``GET /stats/basic`` answer."""
    disk = shutil.disk_usage("/")
    load1, load5, load15 = os.getloadavg()
    return {
        "cpu_percent": cpu_percent(),
        "memory": memory(),
        "disk": {"path": "/", "total": disk.total, "used": disk.used, "free": disk.free},
        "load": {"1m": load1, "5m": load5, "15m": load15},
        "uptime_s": uptime_s(),
        "source": "psutil" if _psutil is not None else "proc",
    }
