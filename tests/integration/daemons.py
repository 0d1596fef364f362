"""Stop and start the libvirtd and dockerd that scripts/setup-host.sh started, by their pid.

For the daemon-fault tests: `stopped(...)` stops a daemon (SIGTERM, by the pid in
its pid file) and always starts it again the way setup-host.sh does, waiting
until it answers, so one test's fault never leaks into the next.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Daemon:
    name: str
    pid_file: Path
    start: tuple[str, ...]
    probe: tuple[str, ...]

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def stop(self, timeout_s: float = 60.0) -> None:
        pid = self.pid()
        assert pid is not None, f"{self.name} is not running (no live pid in {self.pid_file})"
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while self._alive(pid):
            assert time.monotonic() < deadline, f"{self.name} (pid {pid}) did not stop in {timeout_s:.0f}s"
            time.sleep(0.2)

    def restart(self, timeout_s: float = 120.0) -> None:
        if self.pid() is None:
            subprocess.Popen(list(self.start), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while subprocess.run(list(self.probe), capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, f"{self.name} did not answer within {timeout_s:.0f}s"
            time.sleep(0.5)

    @staticmethod
    def _alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return False
        return True


DOCKERD = Daemon("dockerd", Path("/var/run/docker.pid"),
                 ("sh", "-c", "exec dockerd >>/var/log/somnus-dockerd.log 2>&1"), ("docker", "version"))
LIBVIRTD = Daemon("libvirtd", Path("/run/libvirtd.pid"), ("/usr/sbin/libvirtd", "-d"),
                  ("virsh", "-c", "qemu:///system", "version"))


@contextlib.contextmanager
def stopped(daemon: Daemon) -> Iterator[None]:
    """`daemon` stopped inside the block, started again (and answering) after it."""
    daemon.stop()
    try:
        yield
    finally:
        daemon.restart()
