"""`somnus serve` with V VMs (defined, shut off) + C containers: how fast the overview comes.

    python bench/dashboard.py [--vms 50] [--containers 100] [--repeat 7] [--edits 5]

Converges the objects (the layout of bench/noop.py), starts `somnus serve` on a free
loopback port, logs in, then prints medians of:
  * time to first byte of the overview page and to its whole body (urllib);
  * the overview fully rendered in Debian's chromium (Playwright): from navigation
    start to the load event, every row in the table;
  * the delay from a manifest write (one container's memory) to the open page
    showing that container's pending change, without a reload; the write is
    undone between edits.
Everything it creates is named `bench-noop-*` and removed at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.noop import PREFIX, manifests, somnus  # noqa: E402
from testkit.agent_process import free_port  # noqa: E402
from testkit.backups import remove_backups  # noqa: E402
from testkit.serve_client import session_cookie, wait_until_listening  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


def timed_get(url: str, cookie: str) -> tuple[float, float]:
    """Seconds to the first byte (status line and headers read) and to the whole body."""
    start = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Cookie": cookie}), timeout=60) as answer:
        first = time.perf_counter() - start
        answer.read()
    return first, time.perf_counter() - start


def with_memory(docs: list[dict[str, object]], name: str, memory: str) -> list[dict[str, object]]:
    changed = [dict(d) for d in docs]
    for doc in changed:
        if doc["kind"] == "Container" and doc["metadata"] == {"name": name}:  # type: ignore[comparison-overlap]
            doc["spec"] = {**doc["spec"], "resources": {"cpus": 0.5, "memory": memory}}  # type: ignore[dict-item]
    return changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vms", type=int, default=50)
    parser.add_argument("--containers", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--edits", type=int, default=5)
    args = parser.parse_args()
    from playwright.sync_api import expect, sync_playwright

    work = Path(tempfile.mkdtemp(prefix="somnus-bench-dashboard-"))
    env = dict(os.environ, SOMNUS_STATE_DIR=str(work / "state"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    (work / "m").mkdir()
    path = work / "m" / "bench.yaml"
    docs = manifests(args.vms, args.containers)
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    server: subprocess.Popen[str] | None = None
    try:
        if somnus("apply", str(path), "-y", env=env).returncode != 0:
            raise SystemExit("apply failed")
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "somnus_reconciler", "serve", str(work / "m"),
                                   "--listen", f"127.0.0.1:{port}", "--resync", "1h"],
                                  env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert server.stdout is not None
        login = server.stdout.readline().split()[-1]
        base = f"http://127.0.0.1:{port}"
        wait_until_listening(base)
        cookie = session_cookie(login)
        while "data-address" not in urllib.request.urlopen(urllib.request.Request(  # the first overview
                base + "/fragment/rows", headers={"Cookie": cookie}), timeout=60).read().decode():
            time.sleep(0.1)
        gets = [timed_get(base + "/", cookie) for _ in range(args.repeat)]
        rows = args.vms + args.containers
        box = f"{PREFIX}-box-0"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            page.goto(login)
            rendered = []
            for _ in range(args.repeat):
                page.reload(wait_until="load")
                page.locator("tr[data-address]").nth(rows - 1).wait_for()
                rendered.append(page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd") / 1000)
            delays = []
            pending = f'tr[data-address="container/{box}"] .pending'
            for i in range(args.edits):
                memory = f"{32 + 16 * (i % 2)}Mi"
                start = time.perf_counter()
                path.write_text(yaml.safe_dump_all(with_memory(docs, box, memory), sort_keys=False))
                expect(page.locator(pending)).to_contain_text("replace", timeout=60_000)
                delays.append(time.perf_counter() - start)
                path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
                expect(page.locator(pending)).to_have_text("in sync", timeout=60_000)
            browser.close()
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        path.write_text(yaml.safe_dump_all(manifests(0, 0), sort_keys=False))
        somnus("apply", str(path), "--prune", "-y", env=env)
        remove_backups(PREFIX)

    print(f"somnus serve, {args.vms} VMs (shut off) + {args.containers} containers; medians; one run")
    print(f"  overview: first byte            {statistics.median(g[0] for g in gets) * 1000:8.1f} ms")
    print(f"  overview: whole page            {statistics.median(g[1] for g in gets) * 1000:8.1f} ms")
    print(f"  overview: rendered in chromium  {statistics.median(rendered) * 1000:8.1f} ms  ({rows} rows)")
    print(f"  manifest write -> page shows it {statistics.median(delays) * 1000:8.1f} ms  "
          f"(max {max(delays) * 1000:.0f} ms of {len(delays)})")


if __name__ == "__main__":
    main()
