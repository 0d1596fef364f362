"""The in-guest agent (SPEC section 7), run for real as a subprocess on loopback.

Each agent is started with ``python -m somnus_agent`` from ``agent/`` and is
spoken to over HTTP with urllib; teardown stops the agent and any monitored
process it reported.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Iterator

import pytest

AGENT_DIR = pathlib.Path(__file__).resolve().parents[2] / "agent"
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
TOKEN = "test-token-5f1c0e"
ERROR_LOG_LINES = [
    "starting up",
    "ERROR: CUDA device not found",
    "all fine",
    "Traceback (most recent call last):",
    "download failed after 3 attempts",
    "done",
]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@dataclasses.dataclass
class Agent:
    proc: subprocess.Popen[bytes]
    port: int
    token_file: pathlib.Path
    config_file: pathlib.Path
    log_file: pathlib.Path
    seen_pids: set[int] = dataclasses.field(default_factory=set)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = TOKEN,
        authorization: str | None = None,
        raw: bytes | None = None,
        timeout: float = 15.0,
    ) -> tuple[int, dict[str, Any]]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method)
        if authorization is not None:
            req.add_header("Authorization", authorization)
        elif token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with OPENER.open(req, timeout=timeout) as resp:
                status, payload = resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as e:
            status, payload = e.code, json.loads(e.read())
        for p in payload.get("processes", []) if isinstance(payload, dict) else []:
            if p.get("pid"):
                self.seen_pids.add(p["pid"])
        return status, payload

    def pids(self) -> dict[str, int]:
        status, payload = self.request("GET", "/status")
        assert status == 200
        return {p["name"]: p["pid"] for p in payload["processes"]}


def _write_token(path: pathlib.Path, token: str, mode: int = 0o600) -> None:
    path.write_text(token + "\n")
    os.chmod(path, mode)


def _launch(token_file: pathlib.Path, config_file: pathlib.Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(AGENT_DIR)}
    return subprocess.Popen(
        [sys.executable, "-m", "somnus_agent", "--listen", f"127.0.0.1:{port}",
         "--token-file", str(token_file), "--config", str(config_file)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


@contextlib.contextmanager
def running_agent(root: pathlib.Path) -> Iterator[Agent]:
    token_file = root / "token"
    _write_token(token_file, TOKEN)
    log_file = root / "app.log"
    log_file.write_text("\n".join(ERROR_LOG_LINES) + "\n")
    config_file = root / "agent.json"
    config_file.write_text(json.dumps({
        "processes": [{"name": "sleeper", "argv": ["sleep", "600"]}],
        "watch_logs": [str(log_file)],
    }))
    port = _free_port()
    agent = Agent(_launch(token_file, config_file, port), port, token_file, config_file, log_file)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert agent.proc.poll() is None, agent.proc.communicate()[1].decode()
            try:
                agent.pids()
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "agent did not answer within 10 s"
                time.sleep(0.05)
        yield agent
    finally:
        agent.proc.send_signal(signal.SIGTERM)
        try:
            agent.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            agent.proc.kill()
            agent.proc.communicate()
        for pid in agent.seen_pids:  # monitored processes the agent started for us
            if _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


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
    assert _pid_alive(proc["pid"])


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
    assert _pid_alive(before["sleeper"])


# --- soft reboot and reload ------------------------------------------------------------


def test_soft_reboot_restarts_monitored_processes_with_new_pids(agent: Agent) -> None:
    old = agent.pids()["sleeper"]
    status, payload = agent.request("POST", "/soft-reboot", {})
    assert status == 200
    [proc] = payload["processes"]
    assert proc["running"] is True
    assert proc["pid"] != old
    assert _pid_alive(proc["pid"]) and not _pid_alive(old)
    assert agent.pids()["sleeper"] == proc["pid"]


def test_config_reload_picks_up_new_token_and_processes(fresh_agent: Agent) -> None:
    new_token = "rotated-token-77"
    _write_token(fresh_agent.token_file, new_token)
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
    _write_token(fresh_agent.token_file, "leaky-token", mode=0o644)
    status, payload = fresh_agent.request("POST", "/config/reload", {})
    assert status == 500 and "group" in payload["error"]
    assert fresh_agent.request("GET", "/status")[0] == 200
    assert fresh_agent.request("GET", "/status", token="leaky-token")[0] == 401


@pytest.mark.parametrize("mode", [0o640, 0o604])
def test_group_or_world_readable_token_file_refuses_to_start(tmp_path: pathlib.Path, mode: int) -> None:
    token_file = tmp_path / "token"
    _write_token(token_file, TOKEN, mode=mode)
    config_file = tmp_path / "agent.json"
    config_file.write_text(json.dumps({"processes": [], "watch_logs": []}))
    proc = _launch(token_file, config_file, _free_port())
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
