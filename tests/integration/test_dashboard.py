"""`somnus serve` (issue 15, in part) in a real browser, Debian's chromium driven by
Playwright, against the real dockerd and libvirtd: the overview lists declared objects
with their state and readiness, a manifest edit appears on the open page as a pending
change without a reload, the plan page applies it and shows its steps, an object page's
rollback takes a pack back out, axe-core finds no serious accessibility violation, and
the server refuses strangers (no login, a wrong Host, a
change without the CSRF token, a non-loopback address without TLS). Everything the
tests are served goes through the session's secret scan."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from somnus_reconciler.journal import Journal
from testkit.agent_process import free_port
from testkit.serve_client import set_cookie_header, wait_until_listening
from tests.integration import secret_scan
from tests.integration.conftest import Workspace, container_doc, vm_doc
from tests.integration.test_gitops import Repo
from tests.integration.test_gitops import manifests as gitops_manifests
from tests.integration.test_pack_steps import box_doc, pack_doc, playbook

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


@dataclass
class Served:
    base: str  # http://127.0.0.1:PORT
    login: str  # its login URL

    def get(self, path: str, *, cookie: str = "", host: str | None = None, method: str = "GET",
            headers: dict[str, str] | None = None) -> tuple[int, str]:
        request = urllib.request.Request(self.base + path, method=method, headers={
            **({"Cookie": cookie} if cookie else {}), **({"Host": host} if host else {}), **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                status, text = answer.status, answer.read().decode()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read().decode()
        secret_scan.SESSION.record_output(f"somnus serve {method} {path}", text)
        return status, text


def serve_command(ws: Workspace, *args: str) -> list[str]:
    """Serving the workspace's manifests, unless `args` say --gitops."""
    paths = [] if "--gitops" in args else [str(ws.manifests)]
    return [sys.executable, "-m", "somnus_reconciler", "serve", *paths, "--resync", "2s", *args]


@pytest.fixture
def served(workspace: Workspace) -> Iterator[Served]:
    ws = workspace
    ws.write("ws.yaml", container_doc(ws.name("box")), vm_doc(ws.name("vm"), running=False))
    ws.somnus("apply", str(ws.manifests), "-y", check_exit=0)
    with serving(ws) as served:
        yield served


@contextlib.contextmanager
def serving(ws: Workspace, *args: str) -> Iterator[Served]:
    """`somnus serve` on the workspace's manifests, on a free loopback port, logged in."""
    port = free_port()
    env = dict(os.environ, SOMNUS_STATE_DIR=str(ws.state_dir))
    log = (ws.root / "serve.log").open("w")  # its errors, for a failing test's reader
    server = subprocess.Popen(serve_command(ws, "--listen", f"127.0.0.1:{port}", *args), env=env, text=True,
                              stdout=subprocess.PIPE, stderr=log)
    try:
        assert server.stdout is not None
        first = server.stdout.readline()  # "Log in at http://...", once the token is made
        assert first.startswith("Log in at http://127.0.0.1:"), first
        token = (ws.state_dir / "serve-token").read_text()
        assert (ws.state_dir / "serve-token").stat().st_mode & 0o777 == 0o600
        secret_scan.SESSION.harvest()  # no page or API answer may hold the token
        base = f"http://127.0.0.1:{port}"
        wait_until_listening(base)
        yield Served(base, f"{base}/login?token={token}")
    finally:
        server.terminate()  # our own child
        server.wait(timeout=30)
        log.close()


def test_the_overview_shows_each_object_a_manifest_edit_arrives_without_a_reload_and_applies_from_the_plan(
        workspace: Workspace, served: Served) -> None:
    ws = workspace
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(served.login)
        box = page.locator(f'tr[data-address="container/{ws.name("box")}"]')
        vm = page.locator(f'tr[data-address="vm/{ws.name("vm")}"]')
        expect(box.locator(".state")).to_contain_text("running")
        expect(box.locator(".ready")).to_have_text("yes")
        expect(box.locator(".pending")).to_have_text("in sync")
        expect(vm.locator(".state")).to_contain_text("shutoff")
        page.evaluate("window.notReloaded = true")
        ws.write("ws.yaml", container_doc(ws.name("box"), memory="96Mi"), vm_doc(ws.name("vm"), running=False))
        expect(box.locator(".pending")).to_contain_text("replace", timeout=30_000)
        assert page.evaluate("window.notReloaded") is True  # the row changed in place
        secret_scan.SESSION.record_output("the overview page", page.content())
        # The plan page says it as diff does; Apply asks, runs it and shows each step as it goes.
        page.on("dialog", lambda dialog: dialog.accept())
        page.get_by_role("link", name="Plan").click()
        expect(page.locator(f'#plan tr[data-address="container/{ws.name("box")}"]')).to_contain_text("-/+")
        page.get_by_role("button", name="Apply").click()
        step = page.locator(f'#steps li[data-address="container/{ws.name("box")}"]')
        expect(step).to_have_attribute("data-state", "done", timeout=120_000)
        expect(page.locator("#said")).to_contain_text("apply converged", timeout=60_000)
        secret_scan.SESSION.record_output("the plan page", page.content())
        browser.close()
    assert ws.docker.containers.get(ws.name("box")).attrs["HostConfig"]["Memory"] == 96 * 2**20
    status, body = served.get("/api/overview", cookie=_session(served))
    items = {item["address"]: item for item in json.loads(body)["items"]}
    assert status == 200 and items[f"container/{ws.name('box')}"]["actual"].startswith("running")


def test_strangers_are_refused(workspace: Workspace, served: Served) -> None:
    assert served.get("/")[0] == 401  # no session
    assert served.get("/login?token=wrong")[0] == 401
    cookie = _session(served)
    assert served.get("/", cookie=cookie)[0] == 200
    assert served.get("/", cookie=cookie, host="rebound.example:80")[0] == 400  # DNS rebinding
    assert served.get("/api/overview", cookie=cookie, method="POST")[0] == 403  # no CSRF token
    page = served.get("/", cookie=cookie)[1]
    csrf = page.split('<meta name="csrf" content="', 1)[1].split('"', 1)[0]
    # With the token the request passes the guard (and finds no POST route there).
    assert served.get("/api/overview", cookie=cookie, method="POST", headers={"X-CSRF-Token": csrf})[0] == 405
    env = dict(os.environ, SOMNUS_STATE_DIR=str(workspace.state_dir))
    refused = subprocess.run(serve_command(workspace, "--listen", "0.0.0.0:8765"), env=env, capture_output=True,
                             text=True, timeout=60)
    assert refused.returncode == 2 and "--tls-cert" in refused.stderr, refused


def _session(served: Served) -> str:
    """The session cookie the login URL hands out: HttpOnly, SameSite=Strict."""
    header = set_cookie_header(served.login)
    assert "HttpOnly" in header and "samesite=strict" in header.lower(), header
    return header.split(";", 1)[0]


def test_the_page_has_no_inline_script_and_forbids_framing(served: Served) -> None:
    status, page = served.get("/", cookie=_session(served))
    assert status == 200 and "<script>" not in page and 'src="/static/app.js"' in page
    request = urllib.request.Request(served.base + "/", headers={"Cookie": _session(served)})
    with urllib.request.urlopen(request, timeout=30) as answer:
        policy = answer.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy and "unsafe-inline" not in policy


def test_a_rollback_from_the_object_page_takes_the_pack_back_out(workspace: Workspace) -> None:
    ws = workspace
    books = ws.manifests / "playbooks"
    books.mkdir()
    playbook(books / "marker.yml", [{"name": "marker", "ansible.builtin.copy": {"dest": "/opt/marker", "content": "x"}}])
    box = ws.name("packed")
    ws.somnus("image", "build", "somnus/base:bookworm", check_exit=0)  # cached by recipe: built once per machine
    ws.write("ws.yaml", box_doc(box, ["marker"]), pack_doc("marker", playbook="playbooks/marker.yml",
                                                             verify=["test -e /opt/marker"]))
    ws.somnus("apply", str(ws.manifests), "-y", check_exit=0)
    assert ws.docker.containers.get(box).exec_run(["test", "-e", "/opt/marker"]).exit_code == 0
    with serving(ws) as served, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.on("dialog", lambda dialog: dialog.accept())  # the button asks first
        page.goto(served.login)
        page.get_by_role("link", name=f"container/{box}").click()
        expect(page.locator("h1")).to_have_text(f"container/{box}")
        snapshot = page.locator("#snapshots tr[data-snapshot]").first
        expect(snapshot.locator("th")).to_contain_text("somnus-")
        snapshot.get_by_role("button", name="Roll back to this").click()
        expect(page.locator("#said")).to_contain_text("reverted to", timeout=120_000)
        secret_scan.SESSION.record_output("an object page", page.content())
        browser.close()
    assert ws.docker.containers.get(box).exec_run(["test", "-e", "/opt/marker"]).exit_code == 1  # the pack is gone


def test_a_restore_from_the_object_page_brings_back_what_the_user_wrote_and_keeps_the_state_it_replaced(
        workspace: Workspace) -> None:
    ws = workspace
    box = ws.name("kept")
    ws.write("ws.yaml", container_doc(box))
    ws.somnus("apply", str(ws.manifests), "-y", check_exit=0)
    ws.docker.containers.get(box).exec_run(["sh", "-c", "echo mine > /root/work.txt"])
    ws.somnus("backup", f"container/{box}", check_exit=0)
    ws.docker.containers.get(box).exec_run(["rm", "/root/work.txt"])
    with serving(ws) as served, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.on("dialog", lambda dialog: dialog.accept())  # the button asks first
        page.goto(served.login)
        page.goto(f"{served.base}/objects/container/{box}")
        expect(page.locator("#declared")).to_contain_text(f"name: {box}")  # its document, as written
        expect(page.locator("#declared")).not_to_contain_text("kind: Pool")  # and no other
        backup = page.locator("#backups tr[data-backup]")
        expect(backup).to_have_count(1)
        expect(backup.locator("td").first).not_to_be_empty()
        backup.get_by_role("button", name="Restore this").click()
        expect(page.locator("#said")).to_contain_text("restored from", timeout=120_000)
        secret_scan.SESSION.record_output("an object page after a restore", page.content())
        browser.close()
    assert ws.docker.containers.get(box).exec_run(["cat", "/root/work.txt"]).output == b"mine\n"
    listed = json.loads(ws.somnus("backups", f"container/{box}", "-o", "json", check_exit=0).stdout)
    assert sorted(b["reason"] for b in listed["items"]) == ["before restore", "manual"], listed


def test_with_watch_a_vm_and_a_container_stopped_by_hand_are_corrected_and_the_page_says_so(
        workspace: Workspace) -> None:
    ws = workspace
    box, vm = ws.name("watched"), ws.name("watched-vm")
    ws.write("ws.yaml", container_doc(box), vm_doc(vm, memory="128Mi", max_memory="128Mi"))
    ws.somnus("apply", str(ws.manifests), "-y", check_exit=0)
    with serving(ws, "--watch") as served, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(served.login)
        expect(page.locator("#activity li").first).to_contain_text("in sync", timeout=120_000)  # the first pass
        ws.docker.containers.get(box).stop(timeout=1)  # by hand, behind somnus's back
        ws.conn.lookupByName(vm).destroy()
        for address in (f"container/{box}", f"vm/{vm}"):
            corrected = page.locator(f'#activity li[data-address="{address}"]')
            expect(corrected.first).to_contain_text("(drift): done", timeout=120_000)  # at the next resync
            expect(page.locator(f'tr[data-address="{address}"] .state')).to_contain_text("running")
        secret_scan.SESSION.record_output("the overview page, watching", page.content())
        # The history page finds it by a paraphrase, as `history --search` does.
        page.get_by_role("link", name="History").click()
        page.get_by_label("By meaning").fill("someone stopped the container behind our back")
        page.get_by_role("button", name="Search").click()
        expect(page.locator("#history caption")).to_have_text("Nearest in meaning first")
        top = page.locator("#history tbody tr").evaluate_all("rows => rows.slice(0, 3).map(r => r.dataset.address)")
        assert f"container/{box}" in top, top
        secret_scan.SESSION.record_output("the history page", page.content())
        browser.close()
    assert ws.docker.containers.get(box).status == "running" and ws.conn.lookupByName(vm).isActive()


def test_no_page_has_a_serious_or_critical_accessibility_violation(workspace: Workspace, served: Served) -> None:
    """axe-core, run in each page as a user's browser shows it."""
    ws = workspace
    found: dict[str, list[str]] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(served.login)
        for path in ("/", f"/objects/container/{ws.name('box')}", f"/objects/vm/{ws.name('vm')}", "/plan",
                     "/history", "/history?q=created", "/gitops"):
            page.goto(served.base + path)
            page.locator("h1").wait_for()
            found[path] = serious_violations(page, path)
        browser.close()
    assert found == {path: [] for path in found}, found


def serious_violations(page: Page, path: str) -> list[str]:
    """What axe-core, run in the page at `path`, finds serious or critical."""
    from axe_playwright_python.sync_playwright import Axe

    response = Axe().run(page).response
    assert response["testEngine"]["name"] == "axe-core" and response["url"].endswith(path)
    return [f"{v['id']} ({v['impact']}): {v['help']}" for v in response["violations"]
            if v["impact"] in ("serious", "critical")]


def test_the_gitops_page_shows_the_revision_in_force_and_the_quarantined_one_with_its_reason(
        workspace: Workspace, served: Served) -> None:
    source = "file:///srv/repo.git#main:manifests"
    with Journal(workspace.state_dir / "journal.sqlite") as journal:  # as `somnus gitops` records them
        journal.mark_revision(source, "a" * 40, "good", "")
        journal.mark_revision(source, "b" * 40, "quarantined", "vm/x: pack web failed and was rolled back")
    status, page = served.get("/gitops", cookie=_session(served))
    assert status == 200 and source in page
    good = page.split(f'data-revision="{"a" * 40}"', 1)[1].split("</tr>", 1)[0]
    bad = page.split(f'data-revision="{"b" * 40}"', 1)[1].split("</tr>", 1)[0]
    assert "in force" in good and "in force" not in bad
    assert "quarantined" in bad and "pack web failed and was rolled back" in bad


def test_with_gitops_the_page_follows_the_repository_and_shows_the_revision_in_force(
        workspace: Workspace, tmp_path: Path) -> None:
    ws = workspace
    repo = Repo(tmp_path / "repo")
    box = ws.name("from-git")
    head = repo.push({"manifests/ws.yaml": gitops_manifests(ws, container_doc(box))}, "a box")
    with serving(ws, "--gitops", f"file://{repo.bare}", "--path", "manifests") as served, \
            sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(served.login)
        expect(page.locator(f'tr[data-address="container/{box}"] .state')).to_contain_text("running",
                                                                                        timeout=120_000)
        expect(page.locator("#activity li").first).to_contain_text("resync: in sync", timeout=60_000)
        page.get_by_role("link", name="Git-ops").click()
        expect(page.locator(f'tr[data-revision="{head}"]')).to_contain_text("in force")
        secret_scan.SESSION.record_output("the git-ops page", page.content())
        browser.close()
