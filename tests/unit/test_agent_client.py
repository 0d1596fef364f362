"""agent_client against the real agent on loopback, and the conditions status.py derives.

The agent runs as in tests/unit/test_agent.py (`testkit.agent_process.running_agent`); the guest
side of the same path is tested in tests/integration/test_guest_agent.py.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest

from somnus_reconciler.passes import status
from somnus_reconciler.providers import agent_client
from somnus_reconciler.providers.agent_client import AgentClient, AgentRefused, AgentUnreachable
from somnus_reconciler.values.actual import ActualVm, PortForward, PowerState, VmMark
from testkit.agent_process import TOKEN, free_port, running_agent


@pytest.fixture
def agent_and_client(tmp_path: pathlib.Path) -> Any:
    with running_agent(tmp_path) as agent:
        yield agent, AgentClient(agent.port, TOKEN)


def test_status_and_stats_come_back_as_json(agent_and_client: Any) -> None:
    agent, client = agent_and_client
    assert client.status()["processes"][0]["name"] == "sleeper"
    assert client.stats_basic()["memory"]["total"] > 0
    assert client.execute(["echo", "hi"])["stdout"] == "hi\n"


def test_a_wrong_token_is_refused_with_401_and_the_token_is_not_in_the_error(agent_and_client: Any) -> None:
    agent, _ = agent_and_client
    with pytest.raises(AgentRefused) as refused:
        AgentClient(agent.port, "not-the-token").status()
    assert refused.value.status == 401
    assert "not-the-token" not in str(refused.value)
    assert "not-the-token" not in repr(AgentClient(agent.port, "not-the-token"))


def test_nothing_listening_is_unreachable() -> None:
    with pytest.raises(AgentUnreachable):
        AgentClient(free_port(), TOKEN, timeout_s=1.0).status()


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
    client.reload_config()
    outcome = agent_client.confirm_soft_reboot(client, timeout_s=2)
    assert not outcome.confirmed
    assert "quitter" in outcome.message and "timed out" in outcome.message


def _vm(running: bool = True) -> ActualVm:
    mark = VmMark("h", "debian-12", 2**30, "debian", forwards=(PortForward("agent", 4242, 7465),))
    return ActualVm("vm1", PowerState.RUNNING if running else PowerState.SHUTOFF, 1, 1, 1, 2**30, 2**30, mark)


def _conditions(row: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["message"]) for c in row["conditions"]}


@pytest.mark.parametrize(
    ("agent", "connected", "ready", "ready_message"),
    [
        ({"address": "a", "connected": True, "ok": True, "version": "1",
          "processes": [{"name": "jupyter", "running": True}]}, "True", "True", "1 process(es) running"),
        ({"address": "a", "connected": True, "ok": True, "version": "1",
          "processes": [{"name": "jupyter", "running": False}]}, "True", "False", "not running: jupyter"),
        ({"address": "a", "connected": False, "message": "timed out"}, "False", "False",
         "the agent does not answer"),
    ],
)
def test_agent_connected_and_ready_follow_what_the_agent_says(
        agent: dict[str, Any], connected: str, ready: str, ready_message: str) -> None:
    conditions = _conditions(status.vm_row(_vm(), None, agent))
    assert conditions["AgentConnected"][0] == connected
    assert conditions["Ready"] == (ready, ready_message)


def test_a_stopped_vm_is_not_ready_and_its_agent_is_not_asked(tmp_path: pathlib.Path) -> None:
    assert status.probe_agent(_vm(running=False), tmp_path) is None
    assert _conditions(status.vm_row(_vm(running=False), None, None))["Ready"][0] == "False"


def test_a_vm_without_a_token_is_not_connected_and_says_why(tmp_path: pathlib.Path) -> None:
    view = status.probe_agent(_vm(), tmp_path)
    assert view is not None and view["connected"] is False and "token" in view["message"]
