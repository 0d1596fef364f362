"""Take the screenshots of `somnus serve` that docs/ and the README show.

    .venv/bin/python scripts/dashboard_screenshots.py

Declares two containers and a debian-12 VM, applies them, gives one container a
pending change, serves the manifests on a free loopback port and photographs the
overview and the VM's page (once its agent's charts have a few minutes of samples)
in Debian's chromium into
docs/dashboard-overview.png and docs/dashboard-object.png. Everything it makes is
named `shots-*` and removed at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from playwright.sync_api import expect, sync_playwright

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from testkit.agent_process import free_port  # noqa: E402
from testkit.backups import remove_backups  # noqa: E402
from testkit.serve_client import wait_until_listening  # noqa: E402

DOCS = REPO / "docs"


def documents(memory: str) -> list[dict[str, object]]:
    pool = {"apiVersion": "somnus/v1", "kind": "Pool", "metadata": {"name": "shots"},
            "spec": {"domainType": "qemu", "reserved": {"vcpus": 0, "memory": "1Gi"}}}
    boxes = [{"apiVersion": "somnus/v1", "kind": "Container", "metadata": {"name": f"shots-{name}"},
              "spec": {"image": "somnus/busybox:latest", "command": ["sleep", "infinity"], "network": "none",
                       "resources": {"cpus": 0.5, "memory": mem}}}
             for name, mem in (("notebook", memory), ("agent-runner", "64Mi"))]
    vm = {"apiVersion": "somnus/v1", "kind": "VirtualMachine", "metadata": {"name": "shots-vm"},
          "spec": {"resources": {"vcpus": 1, "memory": "1Gi", "maxVcpus": 2, "maxMemory": "2Gi"},
                   "image": "debian-12", "diskSize": "6Gi"}}
    return [pool, *boxes, vm]


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="somnus-shots-"))
    env = dict(os.environ, SOMNUS_STATE_DIR=str(work / "state"))
    manifests = work / "manifests"
    manifests.mkdir()
    path = manifests / "workstations.yaml"
    somnus = [sys.executable, "-m", "somnus_reconciler"]
    path.write_text(yaml.safe_dump_all(documents("128Mi"), sort_keys=False))
    subprocess.run([*somnus, "apply", str(manifests), "-y"], env=env, check=True, capture_output=True)
    path.write_text(yaml.safe_dump_all(documents("256Mi"), sort_keys=False))  # a pending change to show
    port = free_port()
    server = subprocess.Popen([*somnus, "serve", str(manifests), "--listen", f"127.0.0.1:{port}",
                               "--sample-every", "3s"],
                              env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert server.stdout is not None
        login = server.stdout.readline().split()[-1]
        wait_until_listening(f"http://127.0.0.1:{port}")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 520})
            page.goto(login)
            expect(page.locator('tr[data-address="container/shots-notebook"] .pending')).to_contain_text("replace")
            page.screenshot(path=str(DOCS / "dashboard-overview.png"), full_page=True)
            page.get_by_role("link", name="vm/shots-vm").click()
            expect(page.locator("h1")).to_have_text("vm/shots-vm")
            chart = page.locator('[data-chart="cpu"]')
            while not chart.count() or int(chart.get_attribute("data-count") or 0) < 60:  # three minutes
                page.wait_for_timeout(1000)
            page.set_viewport_size({"width": 1000, "height": 700})
            page.screenshot(path=str(DOCS / "dashboard-object.png"), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
        path.write_text(yaml.safe_dump_all(documents("128Mi")[:1], sort_keys=False))
        subprocess.run([*somnus, "apply", str(manifests), "--prune", "-y"], env=env, capture_output=True)
        remove_backups("shots-")
    print(f"wrote {DOCS / 'dashboard-overview.png'} and {DOCS / 'dashboard-object.png'}")


if __name__ == "__main__":
    main()
