"""The in-guest agent (agent/somnus_agent) run for real as a subprocess on loopback.

`running_agent(root)` starts ``python -m somnus_agent`` from ``agent/`` with a token
(TOKEN), a certificate and key made as the host makes a VM's
(`guest_identity.new_agent_certificate`), one monitored process and one watched log
under `root`, waits until it answers, and stops it and every monitored process it
reported on the way out. `Agent.request` speaks HTTPS to it with urllib, trusting
that certificate alone. Used by tests/unit/test_agent.py,
test_agent_client.py, test_secrets.py and bench/agent.py (the host baseline).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

from somnus_reconciler.providers import guest_identity

AGENT_DIR = pathlib.Path(__file__).resolve().parents[1] / "agent"
TOKEN = "test-token-5f1c0e"
ERROR_LOG_LINES = [
    "starting up",
    "ERROR: CUDA device not found",
    "all fine",
    "Traceback (most recent call last):",
    "download failed after 3 attempts",
    "done",
]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pid_alive(pid: int) -> bool:
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
    certificate: pathlib.Path
    seen_pids: set[int] = dataclasses.field(default_factory=set)

    def opener(self) -> urllib.request.OpenerDirector:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.load_verify_locations(cafile=str(self.certificate))
        return urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))

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
        req = urllib.request.Request(f"https://127.0.0.1:{self.port}{path}", data=data, method=method)
        if authorization is not None:
            req.add_header("Authorization", authorization)
        elif token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with self.opener().open(req, timeout=timeout) as resp:
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


def write_token(path: pathlib.Path, token: str, mode: int = 0o600) -> None:
    path.write_text(token + "\n")
    os.chmod(path, mode)


def write_certificate(root: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """A certificate and key for an agent under `root`, as the host makes a VM's."""
    key_pem, cert_pem = guest_identity.new_agent_certificate("test")
    certificate, key = root / "agent-cert.pem", root / "agent-key.pem"
    certificate.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    os.chmod(key, 0o600)
    return certificate, key


def launch_agent(token_file: pathlib.Path, config_file: pathlib.Path, port: int) -> subprocess.Popen[bytes]:
    """The agent on 127.0.0.1:`port`, with the certificate and key beside `token_file`."""
    env = {**os.environ, "PYTHONPATH": str(AGENT_DIR)}
    root = token_file.parent
    return subprocess.Popen(
        [sys.executable, "-m", "somnus_agent", "--listen", f"127.0.0.1:{port}",
         "--token-file", str(token_file), "--config", str(config_file),
         "--tls-cert", str(root / "agent-cert.pem"), "--tls-key", str(root / "agent-key.pem")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


@contextlib.contextmanager
def running_agent(root: pathlib.Path) -> Iterator[Agent]:
    token_file = root / "token"
    write_token(token_file, TOKEN)
    certificate, _ = write_certificate(root)
    log_file = root / "app.log"
    log_file.write_text("\n".join(ERROR_LOG_LINES) + "\n")
    config_file = root / "agent.json"
    config_file.write_text(json.dumps({
        "processes": [{"name": "sleeper", "argv": ["sleep", "600"]}],
        "watch_logs": [str(log_file)],
    }))
    port = free_port()
    agent = Agent(launch_agent(token_file, config_file, port), port, token_file, config_file, log_file,
                  certificate)
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
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
