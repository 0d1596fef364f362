"""The in-guest agent (SPEC section 7), run for real as a subprocess on loopback.

Each agent is started with ``python -m somnus_agent`` from ``agent/`` by
`testkit.agent_process.running_agent` and is spoken to over HTTP with urllib;
teardown stops the agent and any monitored process it reported.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time
from typing import Any, Iterator

import pytest

from testkit.agent_process import (
    AGENT_DIR,
    TOKEN,
    Agent,
    free_port,
    launch_agent,
    pid_alive,
    running_agent,
    write_token,
)


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    with running_agent(tmp_path_factory.mktemp("agent")) as a:
        yield a


@pytest.fixture
def fresh_agent(tmp_path: pathlib.Path) -> Iterator[Agent]:
    with running_agent(tmp_path) as a:
        yield a


# --- endpoints -------------------------------------------------------------------------


def test_status_reports_the_monitored_process_running(agent: Agent) -> None:
    status, payload = agent.request("GET", "/status")
    assert status == 200
    assert payload["ok"] is True and payload["version"]
    [proc] = payload["processes"]
    assert proc["name"] == "sleeper" and proc["running"] is True
    assert pid_alive(proc["pid"])


def test_stats_basic_has_cpu_memory_disk_load_uptime(agent: Agent) -> None:
    status, payload = agent.request("GET", "/stats/basic")
    assert status == 200
    assert 0.0 <= payload["cpu_percent"] <= 100.0
    mem = payload["memory"]
    assert mem["total"] > 0 and 0 <= mem["available"] <= mem["total"]
    assert mem["used"] == mem["total"] - mem["available"]
    assert payload["disk"]["total"] >= payload["disk"]["used"] > 0
    assert set(payload["load"]) == {"1m", "5m", "15m"}
    assert payload["uptime_s"] > 0


def test_stats_intelligent_returns_error_lines_from_watched_logs(agent: Agent) -> None:
    status, payload = agent.request("GET", "/stats/intelligent")
    assert status == 200
    assert payload["errors"] == [
        {"file": str(agent.log_file), "line": 2, "text": "ERROR: CUDA device not found", "category": None},
        {"file": str(agent.log_file), "line": 4, "text": "Traceback (most recent call last):", "category": None},
        {"file": str(agent.log_file), "line": 5, "text": "download failed after 3 attempts", "category": None},
    ]


def test_execute_runs_argv_with_stdin(agent: Agent) -> None:
    status, payload = agent.request("POST", "/execute", {
        "argv": ["sh", "-c", "tr a-z A-Z; echo oops >&2; exit 3"], "stdin": "hello", "timeout_s": 10})
    assert status == 200
    assert payload["exit_code"] == 3
    assert payload["stdout"] == "HELLO"
    assert payload["stderr"] == "oops\n"
    assert payload["timed_out"] is False and payload["truncated"] is False
    assert 0 <= payload["duration_s"] < 10


@pytest.mark.parametrize("body", [
    {},
    {"argv": []},
    {"argv": "ls -l"},
    {"argv": ["ls", 3]},
    {"argv": ["true"], "timeout_s": 0},
    {"argv": ["true"], "timeout_s": 601},
    {"argv": ["true"], "timeout_s": "10"},
    {"argv": ["true"], "stdin": 5},
    {"argv": ["/nonexistent/binary"]},
])
def test_execute_rejects_bad_requests_with_400(agent: Agent, body: dict[str, Any]) -> None:
    status, payload = agent.request("POST", "/execute", body)
    assert status == 400
    assert payload["error"]


def test_execute_timeout_kills_the_process_group(agent: Agent, tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "survived"
    started = time.monotonic()
    status, payload = agent.request("POST", "/execute", {
        "argv": ["sh", "-c", f"(sleep 2; touch {marker}) & sleep 30"], "timeout_s": 0.5})
    assert status == 200
    assert payload["timed_out"] is True
    assert payload["exit_code"] != 0
    assert 0.4 <= payload["duration_s"] < 4
    assert time.monotonic() - started < 5
    time.sleep(2.2)  # the backgrounded child would have touched the marker by now
    assert not marker.exists()


def test_execute_caps_output_and_flags_truncation(agent: Agent) -> None:
    status, payload = agent.request("POST", "/execute", {
        "argv": [sys.executable, "-c", "import sys; sys.stdout.write('x' * (3 * 1024 * 1024))"],
        "timeout_s": 30}, timeout=30)
    assert status == 200
    assert payload["exit_code"] == 0
    assert payload["truncated"] is True
    assert len(payload["stdout"]) == 1024 * 1024


def test_execute_log_records_argv0_exit_and_duration_only(agent: Agent) -> None:
    status, _ = agent.request("POST", "/execute", {
        "argv": ["sh", "-c", "cat >/dev/null; exit 4", "arg-secret-91"], "stdin": "stdin-secret-42"})
    assert status == 200
    log = (agent.config_file.parent / "somnus-agent.log").read_text()
    line = [ln for ln in log.splitlines() if "exit_code=4" in ln][-1]
    assert "argv0='sh'" in line and "duration_s=" in line
    assert "stdin-secret-42" not in log and "arg-secret-91" not in log and TOKEN not in log


def test_unknown_path_is_404(agent: Agent) -> None:
    status, payload = agent.request("GET", "/nope")
    assert status == 404 and payload["error"]


@pytest.mark.parametrize("method,path", [("POST", "/status"), ("GET", "/execute"), ("DELETE", "/soft-reboot")])
def test_wrong_method_is_405(agent: Agent, method: str, path: str) -> None:
    status, payload = agent.request(method, path, {} if method == "POST" else None)
    assert status == 405 and payload["error"]


def test_oversized_body_is_413_and_not_executed(agent: Agent, tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "big"
    body = {"argv": ["touch", str(marker)], "stdin": "x" * (70 * 1024)}
    status, payload = agent.request("POST", "/execute", body)
    assert status == 413 and payload["error"]
    assert not marker.exists()


def test_invalid_json_is_400(agent: Agent) -> None:
    status, payload = agent.request("POST", "/execute", raw=b"{not json")
    assert status == 400 and payload["error"]


def test_agent_still_answers_after_rejections(agent: Agent) -> None:
    assert agent.request("GET", "/status")[0] == 200


# --- authentication --------------------------------------------------------------------

BAD_AUTH = {
    "no header": None,
    "wrong token": "Bearer not-the-token",
    "wrong scheme": f"Basic {TOKEN}",
    "empty bearer": "Bearer ",
    "token without scheme": TOKEN,
}


def _call_without_auth(agent: Agent, how: str, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    header = BAD_AUTH[how]
    if header is None:
        return agent.request(method, path, body, token=None)
    return agent.request(method, path, body, authorization=header)


@pytest.mark.parametrize("how", sorted(BAD_AUTH))
@pytest.mark.parametrize("method,path", [
    ("GET", "/status"), ("GET", "/stats/basic"), ("GET", "/stats/intelligent"),
    ("POST", "/config/reload"), ("GET", "/does-not-exist"),
])
def test_bad_auth_is_401(agent: Agent, how: str, method: str, path: str) -> None:
    status, payload = _call_without_auth(agent, how, method, path, {} if method == "POST" else None)
    assert status == 401
    assert set(payload) == {"error"}


@pytest.mark.parametrize("how", sorted(BAD_AUTH))
def test_bad_auth_execute_does_nothing(agent: Agent, tmp_path: pathlib.Path, how: str) -> None:
    marker = tmp_path / "created"
    status, _ = _call_without_auth(agent, how, "POST", "/execute", {"argv": ["touch", str(marker)]})
    assert status == 401
    time.sleep(0.1)
    assert not marker.exists()


@pytest.mark.parametrize("how", sorted(BAD_AUTH))
def test_bad_auth_soft_reboot_restarts_nothing(agent: Agent, how: str) -> None:
    before = agent.pids()
    status, _ = _call_without_auth(agent, how, "POST", "/soft-reboot", {})
    assert status == 401
    assert agent.pids() == before
    assert pid_alive(before["sleeper"])


# --- soft reboot and reload ------------------------------------------------------------


def test_soft_reboot_restarts_monitored_processes_with_new_pids(agent: Agent) -> None:
    old = agent.pids()["sleeper"]
    status, payload = agent.request("POST", "/soft-reboot", {})
    assert status == 200
    [proc] = payload["processes"]
    assert proc["running"] is True
    assert proc["pid"] != old
    assert pid_alive(proc["pid"]) and not pid_alive(old)
    assert agent.pids()["sleeper"] == proc["pid"]


def test_config_reload_picks_up_new_token_and_processes(fresh_agent: Agent) -> None:
    new_token = "rotated-token-77"
    write_token(fresh_agent.token_file, new_token)
    config = json.loads(fresh_agent.config_file.read_text())
    config["processes"].append({"name": "second", "argv": ["sleep", "601"]})
    fresh_agent.config_file.write_text(json.dumps(config))
    # Until the reload, the old token is still the one in force.
    assert fresh_agent.request("GET", "/status", token=new_token)[0] == 401
    status, payload = fresh_agent.request("POST", "/config/reload", {})
    assert status == 200
    assert [p["name"] for p in payload["processes"]] == ["sleeper", "second"]
    assert fresh_agent.request("GET", "/status")[0] == 401
    status, payload = fresh_agent.request("GET", "/status", token=new_token)
    assert status == 200
    assert all(p["running"] for p in payload["processes"])


def test_config_reload_with_group_readable_token_keeps_old_token(fresh_agent: Agent) -> None:
    write_token(fresh_agent.token_file, "leaky-token", mode=0o644)
    status, payload = fresh_agent.request("POST", "/config/reload", {})
    assert status == 500 and "group" in payload["error"]
    assert fresh_agent.request("GET", "/status")[0] == 200
    assert fresh_agent.request("GET", "/status", token="leaky-token")[0] == 401


@pytest.mark.parametrize("mode", [0o640, 0o604])
def test_group_or_world_readable_token_file_refuses_to_start(tmp_path: pathlib.Path, mode: int) -> None:
    token_file = tmp_path / "token"
    write_token(token_file, TOKEN, mode=mode)
    config_file = tmp_path / "agent.json"
    config_file.write_text(json.dumps({"processes": [], "watch_logs": []}))
    proc = launch_agent(token_file, config_file, free_port())
    try:
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    message = err.decode()
    assert "refusing to start" in message and f"{mode:04o}" in message and "group or others" in message


def test_stats_basic_proc_fallback_without_psutil() -> None:
    # Guests may lack python3-psutil; blocking the import must switch to /proc.
    code = ("import sys, json; sys.modules['psutil'] = None\n"
            "from somnus_agent import stats; print(json.dumps(stats.basic()))")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(AGENT_DIR)},
                         capture_output=True, check=True, timeout=10).stdout
    payload = json.loads(out)
    assert payload["source"] == "proc"
    assert 0.0 <= payload["cpu_percent"] <= 100.0
    assert payload["memory"]["total"] > payload["memory"]["available"] > 0
