"""The in-guest agent in a real debian-12 guest, through the CLI and the loopback forward.

One VM for the module, made by `somnus apply` under the real libvirtd (TCG).
The image starts the agent at boot with the token the host put on the seed
disk; the host reaches it only through the VM's 127.0.0.1 `agent` forward.
Checked: `Ready` turns true in `somnus get`, `describe` shows the stats,
`somnus ssh vm/NAME -- CMD` runs CMD (`uname -r`: the guest's kernel) with its exit code,
`/execute` runs a command (and is logged in the guest without its stdin),
a wrong or missing token is refused, a soft reboot is confirmed, the token
is 0600 on both sides, and a resync of `somnus watch` runs the VM's pack's
verify command through the agent and puts the pack back when it fails. A
missing daemon is a failure, not a skip.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import libvirt
import pytest

from somnus_reconciler.providers import guest_access
from somnus_reconciler.providers.agent_client import AgentClient, AgentRefused
from testkit.serve_client import session_cookie
from tests.integration import secret_scan
from tests.integration.conftest import Workspace, remove_objects
from tests.integration.event_stream import EventStream
from tests.integration.test_pack_steps import pack_doc, playbook

pytestmark = pytest.mark.integration

READY_TIMEOUT_S = 300.0
DISK_SIZE_GIB = 6


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory, libvirt_conn: libvirt.virConnect,
       docker_client: docker.DockerClient) -> Iterator[Workspace]:
    workspace = Workspace(tmp_path_factory.mktemp("agent"), f"it-{uuid.uuid4().hex[:6]}",
                          libvirt_conn, docker_client)
    (workspace.manifests / "playbooks").mkdir()
    playbook(workspace.manifests / "playbooks" / "marker.yml", [
        {"name": "write a marker", "ansible.builtin.copy": {"dest": "/opt/marker", "content": "x"}},
    ])
    write_manifests(workspace, f"{DISK_SIZE_GIB}Gi")
    workspace.somnus("image", "build", "debian-12", check_exit=0)
    workspace.somnus("apply", str(workspace.manifests), "-y", check_exit=0)
    yield workspace
    remove_objects(workspace)


def write_manifests(ws: Workspace, disk_size: str, *, files: list[dict[str, Any]] | None = None,
                    secret: dict[str, Any] | None = None) -> Path:
    return ws.write("vm.yaml", pack_doc("marker", playbook="playbooks/marker.yml", verify=["test -e /opt/marker"]), {
        "apiVersion": "somnus/v1", "kind": "VirtualMachine", "metadata": {"name": ws.name("vm")},
        "spec": {"resources": {"vcpus": 1, "memory": "1Gi", "maxMemory": "1280Mi"}, "image": "debian-12",
                 "diskSize": disk_size, "packs": ["marker"], "files": files or []},
    }, *([secret] if secret else []))


def vm_row(ws: Workspace) -> dict[str, Any]:
    return ws.get_json()[f"vm/{ws.name('vm')}"]


def conditions(row: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in row["conditions"]}


@pytest.fixture(scope="module")
def ready_row(ws: Workspace) -> dict[str, Any]:
    """`somnus get` polled until the VM's Ready condition is True."""
    started = time.monotonic()
    while True:
        row = vm_row(ws)
        if conditions(row).get("Ready") == "True":
            print(f"\nagent Ready {time.monotonic() - started:.1f} s after apply returned")
            return row
        assert time.monotonic() - started < READY_TIMEOUT_S, f"not Ready after {READY_TIMEOUT_S:.0f} s: {row}"
        time.sleep(2)


@pytest.fixture(scope="module")
def client(ws: Workspace, ready_row: dict[str, Any]) -> AgentClient:
    host, port = ready_row["forwards"]["agent"].rsplit(":", 1)
    assert host == "127.0.0.1"
    return AgentClient(int(port), guest_access.read_agent_token(ws.state_dir, ws.name("vm")),
                       guest_access.agent_certificate(ws.state_dir, ws.name("vm")))


def test_the_agent_starts_at_boot_and_the_vm_turns_ready(ws: Workspace, ready_row: dict[str, Any],
                                                          client: AgentClient) -> None:
    assert conditions(ready_row)["AgentConnected"] == "True"
    agent = ready_row["agent"]
    assert agent["connected"] and agent["ok"] and agent["stats"]["uptime_s"] > 0
    assert agent["stats"]["source"] == "psutil"  # Debian's python3-psutil, from the image
    enabled = client.execute(["systemctl", "is-enabled", "somnus-agent.service"])
    assert enabled["stdout"].strip() == "enabled"


def test_the_debian_guests_balloon_driver_reaches_the_target_below_its_maximum(ready_row: dict[str, Any]) -> None:
    assert (ready_row["memory"], ready_row["maxMemory"]) == (2**30, 1280 * 2**20)
    # The apply waited (bounded) for the balloon, as debian-12 promises a driver.
    assert ready_row["balloon"] == 2**30
    assert conditions(ready_row)["MemoryAtTarget"] == "True"


def test_execute_runs_a_command_and_the_guest_logs_it_without_its_stdin(client: AgentClient) -> None:
    result = client.execute(["sh", "-c", "cat >/dev/null; id -u; hostname"], stdin="a-secret-in-stdin")
    assert result["exit_code"] == 0 and result["stdout"].split() == ["0", "somnus-debian"]
    slow = client.execute(["sleep", "30"], timeout_s=1)
    assert slow["timed_out"] and slow["duration_s"] < 10
    log = client.execute(["cat", "/var/log/somnus-agent-exec.log"])["stdout"]
    assert "argv0='sh' exit_code=0" in log and "a-secret-in-stdin" not in log


def test_a_wrong_or_missing_token_is_refused(client: AgentClient) -> None:
    for token in ("wrong-token", ""):
        with pytest.raises(AgentRefused) as refused:
            AgentClient(client.port, token, client.certificate).execute(["touch", "/tmp/must-not-exist"])
        assert refused.value.status == 401
    assert client.execute(["test", "-e", "/tmp/must-not-exist"])["exit_code"] == 1


def test_the_token_is_0600_on_the_host_and_in_the_guest(ws: Workspace, client: AgentClient) -> None:
    host_file = ws.state_dir / "keys" / ws.name("vm") / f"{guest_access.AGENT_TOKEN_FILE}.fernet"  # sealed
    assert host_file.stat().st_mode & 0o777 == 0o600
    guest_mode = client.execute(["stat", "-c", "%a %U", "/etc/somnus/agent-token"])["stdout"].split()
    assert guest_mode == ["600", "root"]


def test_somnus_ssh_reaches_the_guest_that_proved_its_host_key(ws: Workspace, client: AgentClient) -> None:
    shell = ws.somnus("ssh", f"vm/{ws.name('vm')}", "ssh-keygen", "-y", "-f",
                       "/etc/ssh/ssh_host_ed25519_key", check_exit=0)
    pinned = (ws.state_dir / "keys" / ws.name("vm") / "known_hosts").read_text().split()
    assert shell.stdout.split()[:2] == pinned[1:3]  # the key the host made is the one sshd holds
    assert ws.somnus("ssh", f"vm/{ws.name('vm')}", "exit", "3").returncode == 3  # the session's own code


def test_somnus_ssh_runs_the_command_after_double_dash_and_prints_the_guests_kernel(
        ws: Workspace, client: AgentClient) -> None:
    shell = ws.somnus("ssh", f"vm/{ws.name('vm')}", "--", "uname", "-r", check_exit=0)
    guest_kernel = client.execute(["uname", "-r"])["stdout"].strip()  # the guest's own answer, through its agent
    assert guest_kernel and shell.stdout == f"{guest_kernel}\n", (shell.stdout, guest_kernel)


def configure(client: AgentClient, processes: list[dict[str, Any]], watch_logs: list[str]) -> dict[str, Any]:
    """Write the guest's agent.json through /execute and have the agent reload it."""
    config = {"processes": processes, "watch_logs": watch_logs}
    written = client.execute(["sh", "-c", "umask 077; cat >/etc/somnus/agent.json"], stdin=json.dumps(config))
    assert written["exit_code"] == 0, written
    return client.request("POST", "/config/reload", {})


def test_a_soft_reboot_restarts_the_monitored_processes_and_is_confirmed(
        ws: Workspace, client: AgentClient) -> None:
    [before] = configure(client, [{"name": "notebook", "argv": ["sleep", "infinity"]}], [])["processes"]
    assert before["running"]

    rebooted = ws.somnus("soft-reboot", f"vm/{ws.name('vm')}", check_exit=0)
    assert "soft reboot confirmed" in rebooted.stdout
    [after] = client.status()["processes"]
    assert after["running"] and after["pid"] != before["pid"]
    row = vm_row(ws)
    assert conditions(row)["SoftRebootConfirmed"] == "True" and conditions(row)["Ready"] == "True"

    # A process that cannot stay up: the soft reboot is not confirmed, and Ready says why.
    configure(client, [{"name": "crasher", "argv": ["false"]}], [])
    timed_out = ws.somnus("soft-reboot", f"vm/{ws.name('vm')}", "--timeout", "3", check_exit=1)
    assert "NOT confirmed" in timed_out.stdout and "crasher" in timed_out.stdout
    row = vm_row(ws)
    assert conditions(row)["SoftRebootConfirmed"] == "False" and conditions(row)["Ready"] == "False"


def test_describe_shows_health_stats_and_classified_error_lines(ws: Workspace, client: AgentClient) -> None:
    configure(client, [], ["/var/log/notebook.log"])
    line = "E: Unable to locate package python3-nonexistent-thing"
    assert client.execute(["sh", "-c", f"echo '{line}' >> /var/log/notebook.log"])["exit_code"] == 0
    out = ws.somnus("describe", f"vm/{ws.name('vm')}", check_exit=0).stdout
    assert "AgentConnected       True" in out
    for figure in ("cpu ", "memory ", "disk ", "load ", "uptime "):
        assert f"  {figure}" in out, out
    assert f"[DEPENDENCY_MISSING] /var/log/notebook.log:1: {line}" in out


def test_somnus_serve_charts_the_agents_figures_over_time_on_the_object_page(ws: Workspace,
                                                                            client: AgentClient) -> None:
    """The server asks the agent itself (here every second) and the open page redraws
    its charts after each round, with no reload; the figures are the agent's own."""
    from playwright.sync_api import sync_playwright

    from tests.integration.test_dashboard import CHROMIUM, CHROMIUM_ARGS, serious_violations, serving

    path = f"/objects/vm/{ws.name('vm')}"
    with serving(ws, "--sample-every", "1s") as served, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(served.login)
        page.goto(served.base + path)
        page.evaluate("window.notReloaded = true")
        first = samples_drawn(page, at_least=3, within_s=60)
        samples_drawn(page, at_least=first + 2, within_s=30)
        assert page.evaluate("window.notReloaded") is True
        charts = page.locator("figure.chart")
        assert [charts.nth(i).get_attribute("data-chart") for i in range(charts.count())] == [
            "cpu", "memory", "disk", "load"]
        drawn = page.locator('[data-chart="memory"] polyline').get_attribute("points") or ""
        assert len(drawn.split()) >= first + 2, drawn
        assert page.locator('[data-chart="memory"] .latest').inner_text().endswith("%)")
        assert serious_violations(page, path) == []
        browser.close()
        cookie = session_cookie(served.login)
        status, text = served.get(f"/api/objects/vm/{ws.name('vm')}/samples", cookie=cookie)
        _, listed = served.get("/api/overview", cookie=cookie)
    assert status == 200
    # The agent conditions of the overview come from those answers, not from a request of their own.
    row = next(item for item in json.loads(listed)["items"] if item["name"] == ws.name("vm"))
    assert {c["type"]: c["status"] for c in row["conditions"]}["AgentConnected"] is True, row
    samples = json.loads(text)["samples"]
    stats = client.stats_basic()
    assert {s["memory_total"] for s in samples} == {stats["memory"]["total"]}
    assert {s["disk_total"] for s in samples} == {stats["disk"]["total"]}
    assert all(0.0 <= s["cpu_percent"] <= 100.0 and 0 < s["memory_used"] < s["memory_total"] for s in samples)
    gaps = [b["at"] - a["at"] for a, b in zip(samples, samples[1:])]
    assert gaps and all(0.5 < gap < 10 for gap in gaps), gaps


def samples_drawn(page: Any, *, at_least: int, within_s: float) -> int:
    """How many samples the page's CPU chart draws, once there are `at_least` (polled: the
    page's policy forbids the eval that `wait_for_function` needs)."""
    chart = page.locator('[data-chart="cpu"]')
    deadline = time.monotonic() + within_s
    while (drawn := int(chart.get_attribute("data-count") or 0) if chart.count() else 0) < at_least:
        assert time.monotonic() < deadline, f"{drawn} samples drawn after {within_s:.0f} s"
        page.wait_for_timeout(250)
    return drawn


def test_the_root_file_system_grew_to_the_declared_disk_size(client: AgentClient) -> None:
    total = client.stats_basic()["disk"]["total"]
    assert total > (DISK_SIZE_GIB - 1) * 2**30, f"/ is {total} bytes on a {DISK_SIZE_GIB}Gi disk"


def test_a_resync_finds_a_pack_whose_verify_fails_through_the_agent_and_reinstalls_it(
        ws: Workspace, client: AgentClient) -> None:
    assert client.execute(["rm", "/opt/marker"])["exit_code"] == 0
    stream = EventStream(["watch", str(ws.manifests), "--interval", "1h"], ws.state_dir)
    try:
        done = stream.reconciled(trigger="start", timeout_s=300)
    finally:
        assert stream.stop() == 0
    assert (done["outcome"], done["driftCorrected"]) == ("converged", 1), done
    [step] = [e for e in stream.events if e["event"] == "step"]
    assert (step["action"], step["pack"], step["drift"]) == ("pack install", "marker", True)
    assert client.execute(["test", "-e", "/opt/marker"])["exit_code"] == 0


def test_no_token_reaches_the_cli_output_or_the_journal(ws: Workspace, client: AgentClient) -> None:
    token = client.token
    for args in (("get", "-o", "json"), ("describe", f"vm/{ws.name('vm')}")):
        result = ws.somnus(*args, check_exit=0)
        assert token not in result.stdout + result.stderr
    for journal_file in ws.state_dir.glob("journal.sqlite*"):  # with its WAL, if any
        assert token.encode() not in journal_file.read_bytes()


def test_a_file_from_a_secret_reaches_the_vm_is_rewritten_in_place_and_a_failed_write_rolls_back(
        ws: Workspace, client: AgentClient) -> None:
    """Issue 13, item 3: through the agent, with mode and owner; a new value rewrites the file
    without a restart; a file in a read-only directory fails the step and the snapshot taken
    before it brings the first file's old value back."""
    values = {label: f"deploy-key-{label}-{uuid.uuid4().hex[:8]}-never-in-clear" for label in ("a", "b", "c")}
    for label, value in values.items():
        secret_scan.SESSION.register_value(f"vm file secret ({label}) of {ws.prefix}", value)
    public = ws.somnus("secret", "keygen", check_exit=0).stdout.strip()
    token_file = {"path": "/etc/somnus-test/hub-token", "secretRef": {"name": "hub", "key": "token"},
                  "mode": "0440", "owner": "nobody:nogroup"}
    domain_id = vm_row(ws)["domainId"]

    def declare(value: str, *extra: dict[str, Any]) -> str:
        path = write_manifests(ws, f"{DISK_SIZE_GIB}Gi", files=[token_file, *extra], secret={
            "apiVersion": "somnus/v1", "kind": "Secret", "metadata": {"name": "hub"},
            "spec": {"recipients": [public], "data": {"token": value}}})
        ws.somnus("secret", "encrypt", str(path), check_exit=0)
        return ws.somnus("diff", str(ws.manifests), check_exit=1).stdout

    def in_guest() -> str:
        return client.execute(["sh", "-c", "stat -c '%a %U:%G' /etc/somnus-test/hub-token && "
                                           "cat /etc/somnus-test/hub-token"])["stdout"]

    planned = declare(values["a"])
    assert f"vm/{ws.name('vm')}" in planned and "files: write /etc/somnus-test/hub-token (secret/hub)" in planned
    ws.somnus("apply", str(ws.manifests), "-y", check_exit=0)
    assert in_guest() == f"440 nobody:nogroup\n{values['a']}"

    assert "/etc/somnus-test/hub-token (secret/hub changed)" in declare(values["b"])
    ws.somnus("apply", str(ws.manifests), "-y", check_exit=0)
    assert in_guest() == f"440 nobody:nogroup\n{values['b']}"
    ws.somnus("diff", str(ws.manifests), check_exit=0)
    assert vm_row(ws)["domainId"] == domain_id  # rewritten in place, no restart

    assert client.execute(["sh", "-c", "mkdir -p /mnt/ro && mount -t tmpfs -o ro tmpfs /mnt/ro"])["exit_code"] == 0
    declare(values["c"], {"path": "/mnt/ro/token", "secretRef": {"name": "hub", "key": "token"}})
    failed = ws.somnus("apply", str(ws.manifests), "-y", check_exit=1)
    assert "/mnt/ro/token" in failed.stdout and "Read-only file system" in failed.stdout, failed.stdout
    assert "rolled back to somnus-files-" in failed.stdout, failed.stdout
    assert in_guest() == f"440 nobody:nogroup\n{values['b']}"  # the snapshot's value, not the new one
    assert client.execute(["test", "-e", "/mnt/ro/token"])["exit_code"] != 0

    declare(values["c"])
    ws.somnus("apply", str(ws.manifests), "-y", check_exit=0)
    assert in_guest() == f"440 nobody:nogroup\n{values['c']}"


def test_a_larger_disk_grows_in_place_and_a_smaller_one_is_refused(ws: Workspace, client: AgentClient) -> None:
    """Last in the module: it changes the shared VM's disk (issue 12, item 1)."""
    assert client.execute(["sh", "-c", "echo kept > /root/before-growth"])["exit_code"] == 0
    domain_id = vm_row(ws)["domainId"]
    write_manifests(ws, f"{DISK_SIZE_GIB + 2}Gi")
    plan = ws.somnus("diff", str(ws.manifests), check_exit=1).stdout
    assert f"diskSize {DISK_SIZE_GIB}Gi -> {DISK_SIZE_GIB + 2}Gi" in plan and "(live)" in plan, plan
    applied = ws.somnus("apply", str(ws.manifests), "-y", check_exit=0).stdout
    assert "file system grown to the new disk size" in applied, applied
    ws.somnus("diff", str(ws.manifests), check_exit=0)
    assert vm_row(ws)["domainId"] == domain_id
    total = client.stats_basic()["disk"]["total"]
    assert total > (DISK_SIZE_GIB + 1) * 2**30, f"/ is {total} bytes after growing to {DISK_SIZE_GIB + 2}Gi"
    assert client.execute(["cat", "/root/before-growth"])["stdout"] == "kept\n"

    write_manifests(ws, f"{DISK_SIZE_GIB}Gi")
    for command in (("diff",), ("apply", "-y")):
        refused = ws.somnus(command[0], str(ws.manifests), *command[1:], check_exit=2)
        assert re.search(rf"vm\.yaml:\d+: vm/{ws.name('vm')}: spec\.diskSize: {DISK_SIZE_GIB}Gi is smaller than "
                         rf"the disk's {DISK_SIZE_GIB + 2}Gi; shrinking a disk is not supported",
                         refused.stderr), refused
    assert vm_row(ws)["domainId"] == domain_id
    assert client.stats_basic()["disk"]["total"] == total
