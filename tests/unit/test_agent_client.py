"""agent_client against the real agent on loopback, its answers as typed values
(passes/agent_health.py), and the conditions passes/status.py derives.

The agent runs as in tests/unit/test_agent.py (`testkit.agent_process.running_agent`); the guest
side of the same path is tested in tests/integration/test_guest_agent.py.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest

from somnus_reconciler.passes import agent_health, status
from somnus_reconciler.passes.agent_health import AgentHealth
from somnus_reconciler.providers import agent_client
from somnus_reconciler.providers.agent_client import AgentClient, AgentRefused, AgentUnproven, AgentUnreachable
from somnus_reconciler.values.actual import ActualVm, PortForward, PowerState, VmMark
from testkit import impostors
from testkit.agent_process import TOKEN, free_port, running_agent, write_certificate


@pytest.fixture
def agent_and_client(tmp_path: pathlib.Path) -> Any:
    with running_agent(tmp_path) as agent:
        yield agent, AgentClient(agent.port, TOKEN, agent.certificate)


def test_status_and_stats_come_back_as_json(agent_and_client: Any) -> None:
    agent, client = agent_and_client
    assert client.status()["processes"][0]["name"] == "sleeper"
    assert client.stats_basic()["memory"]["total"] > 0
    assert client.execute(["echo", "hi"])["stdout"] == "hi\n"


def test_a_wrong_token_is_refused_with_401_and_the_token_is_not_in_the_error(agent_and_client: Any) -> None:
    agent, _ = agent_and_client
    with pytest.raises(AgentRefused) as refused:
        AgentClient(agent.port, "not-the-token", agent.certificate).status()
    assert refused.value.status == 401
    assert "not-the-token" not in str(refused.value)
    assert "not-the-token" not in repr(AgentClient(agent.port, "not-the-token", agent.certificate))


def test_nothing_listening_is_unreachable(tmp_path: pathlib.Path) -> None:
    certificate, _ = write_certificate(tmp_path)
    with pytest.raises(AgentUnreachable):
        AgentClient(free_port(), TOKEN, certificate, timeout_s=1.0).status()


def test_a_soft_reboot_is_confirmed_once_every_process_has_a_new_pid(agent_and_client: Any) -> None:
    agent, client = agent_and_client
    before = agent.pids()
    outcome = agent_client.confirm_soft_reboot(client, timeout_s=20)
    assert outcome.confirmed, outcome.message
    after = agent.pids()
    assert after["sleeper"] != before["sleeper"]
    assert [p["pid"] for p in outcome.processes] == [after["sleeper"]]


def test_a_soft_reboot_whose_process_does_not_come_back_times_out_naming_it(agent_and_client: Any) -> None:
    agent, client = agent_and_client
    # The monitored process now exits at once: it can never report back.
    agent.config_file.write_text(json.dumps({"processes": [{"name": "quitter", "argv": ["true"]}]}))
    client.request("POST", "/config/reload", {})
    outcome = agent_client.confirm_soft_reboot(client, timeout_s=2)
    assert not outcome.confirmed
    assert "quitter" in outcome.message and "timed out" in outcome.message


def _vm(running: bool = True, port: int = 4242) -> ActualVm:
    mark = VmMark("h", "debian-12", 2**30, "debian", forwards=(PortForward("agent", port, 7465),))
    return ActualVm("vm1", PowerState.RUNNING if running else PowerState.SHUTOFF, 1, 1, 1, 2**30, 2**30, mark)


def _conditions(vm: status.VmStatus) -> dict[str, tuple[bool, str]]:
    return {c.type: (c.status, c.message) for c in vm.conditions}


STATS = agent_health.AgentStats(1.0, agent_health.MemoryUsage(100, 40, 60), agent_health.DiskUsage("/", 10, 4, 6),
                                agent_health.LoadAverage(0.1, 0.2, 0.3), 70.0, "proc")


def _connected(*processes: agent_health.AgentProcess) -> AgentHealth:
    return AgentHealth("a", True, agent_health.AgentReport(True, "1", processes, STATS))


@pytest.mark.parametrize(
    ("agent", "connected", "ready", "ready_message"),
    [
        (_connected(agent_health.AgentProcess("jupyter", 7, True)), True, True, "1 process(es) running"),
        (_connected(agent_health.AgentProcess("jupyter", None, False)), True, False, "not running: jupyter"),
        (AgentHealth("a", False, message="timed out"), False, False, "the agent does not answer"),
    ],
)
def test_agent_connected_and_ready_follow_what_the_agent_says(
        agent: AgentHealth, connected: bool, ready: bool, ready_message: str) -> None:
    conditions = _conditions(status.vm_status(_vm(), None, agent))
    assert conditions["AgentConnected"][0] == connected
    assert conditions["Ready"] == (ready, ready_message)


def test_a_stopped_vm_is_not_ready_and_its_agent_is_not_asked(tmp_path: pathlib.Path) -> None:
    assert agent_health.probe(_vm(running=False), tmp_path) is None
    assert _conditions(status.vm_status(_vm(running=False), None, None))["Ready"][0] is False


def test_a_vm_without_a_token_is_not_connected_and_says_why(tmp_path: pathlib.Path) -> None:
    health = agent_health.probe(_vm(), tmp_path)
    assert health is not None and health.connected is False and "token" in health.message


def test_the_real_agent_s_answers_parse_into_a_report(agent_and_client: Any, tmp_path: pathlib.Path) -> None:
    agent, _ = agent_and_client
    token_dir = tmp_path / "state" / "keys" / "vm1"
    token_dir.mkdir(parents=True)
    (token_dir / "agent-token").write_text(TOKEN)
    (token_dir / "agent-cert.pem").write_bytes(agent.certificate.read_bytes())  # pinned, as for a VM
    health = agent_health.probe(_vm(port=agent.port), tmp_path / "state", recent_errors=True)
    assert health is not None and health.connected, health
    assert health.report is not None and health.report.ok
    assert [p.name for p in health.report.processes] == ["sleeper"] and health.report.processes[0].running
    assert health.report.stats.memory.total > 0 and health.report.stats.disk.path == "/"
    assert health.report.recent_errors and health.report.recent_errors[0].text == "ERROR: CUDA device not found"


def test_a_vm_without_a_pinned_certificate_is_refused_and_says_how_to_migrate(
        agent_and_client: Any, tmp_path: pathlib.Path) -> None:
    agent, _ = agent_and_client
    token_dir = tmp_path / "keys" / "vm1"
    token_dir.mkdir(parents=True)
    (token_dir / "agent-token").write_text(TOKEN)
    health = agent_health.probe(_vm(port=agent.port), tmp_path)
    assert health is not None and not health.connected
    assert "vm/vm1 has no pinned identity" in health.message and "To migrate" in health.message


def test_an_agent_with_another_certificate_gets_no_token(agent_and_client: Any, tmp_path: pathlib.Path) -> None:
    agent, _ = agent_and_client
    other = tmp_path / "other"
    other.mkdir()
    pinned, _ = write_certificate(other)  # the certificate of another VM
    with pytest.raises(AgentUnproven, match=r"vm/vm1: what answers on 127\.0\.0\.1:\d+ did not prove"):
        AgentClient(agent.port, TOKEN, pinned, "vm1").status()


def test_a_plain_http_server_on_the_agent_port_receives_no_token(tmp_path: pathlib.Path) -> None:
    certificate, _ = write_certificate(tmp_path)
    with impostors.http_impostor() as listener:
        with pytest.raises(AgentUnproven, match="vm/vm1: what answers on"):
            AgentClient(listener.port, TOKEN, certificate, "vm1", timeout_s=1.0).status()
    assert listener.received[:1] == b"\x16"  # a TLS ClientHello, and nothing after it
    assert TOKEN.encode() not in listener.received and b"Authorization" not in listener.received
