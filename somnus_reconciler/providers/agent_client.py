"""Host side of the in-guest agent: authenticated JSON requests over a VM's loopback forward.

`status` asks each running VM's agent for its health and stats (the
`AgentConnected` and `Ready` conditions of `get` and `describe`); the CLI's
`soft-reboot` uses `confirm_soft_reboot`. The agent itself is
agent/somnus_agent (SPEC section 7).

Requests go to 127.0.0.1 only, to the VM's `agent` port forward, over TLS with the
VM's own certificate pinned (`guest_identity`): the agent proves who it is before
the token is sent. The token is read from the state directory
(`guest_access.ensure_agent_token`), sent in the Authorization header, and appears
in no error message, repr or log.

Errors are `AgentError`s: `AgentUnreachable` (temporary: nothing answers yet),
`AgentRefused` (permanent: the agent said no) or `AgentUnproven` (permanent:
what answered is not the VM's agent, or the VM has no pinned certificate). Answers are decoded JSON
(`JsonObject`), passed on as the agent sent them; the processes that
`confirm_soft_reboot` reads are narrowed into `ProcessStatus`.
"""

from __future__ import annotations

import base64
import functools
import http.client
import json
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from somnus_reconciler.providers import guest_access, guest_identity
from somnus_reconciler.values.actual import ActualVm, WrittenFile
from somnus_reconciler.values.desired import Revealed, SecretFile
from somnus_reconciler.values.errors import PermanentError, SomnusError, TemporaryError

AGENT_FORWARD = "agent"
DEFAULT_TIMEOUT_S = 5.0
_POLL_INTERVAL_S = 0.5

JsonObject = dict[str, Any]  # a decoded JSON answer, as the agent sent it (SPEC section 7)


class ProcessStatus(TypedDict):
    """One monitored process in a `/status` answer (agent/somnus_agent/supervisor.py)."""

    name: str
    pid: int | None
    running: bool


class AgentError(SomnusError):
    """Asking a VM's agent failed."""


class AgentUnreachable(AgentError, TemporaryError):
    """No answer: nothing listens behind the forward yet, or the connection broke."""


class AgentRefused(AgentError, PermanentError):
    """The agent answered with an error status (or something that is not the agent did)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class AgentUnproven(AgentError, PermanentError):
    """What answered did not prove it is the VM's agent (or the VM has no certificate to
    prove it with): the token was not sent."""


@dataclass(frozen=True)
class AgentClient:
    port: int
    token: str = field(repr=False)
    certificate: Path  # the VM's agent certificate, the only one trusted (guest_identity)
    vm: str = "?"
    host: str = "127.0.0.1"
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @functools.cached_property
    def _tls(self) -> ssl.SSLContext:
        """Trusting the VM's certificate alone, made once per client (`get` asks each agent
        twice); AgentUnproven (how to migrate) when the VM has none."""
        if not self.certificate.is_file():
            raise AgentUnproven(str(guest_identity.unpinned(self.vm)))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = False  # pinned: this VM's certificate is the only trust anchor
        context.load_verify_locations(cafile=str(self.certificate))
        return context

    def request(self, method: str, path: str, body: Mapping[str, object] | None = None,
                *, timeout_s: float | None = None) -> JsonObject:
        """One request on a fresh TLS connection; the decoded JSON answer of a 2xx status."""
        conn = http.client.HTTPSConnection(self.host, self.port, timeout=timeout_s or self.timeout_s,
                                           context=self._tls)
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        try:
            conn.connect()  # the handshake: the agent proves who it is before the token goes
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except ssl.SSLError as e:
            if _unproven(e):
                raise AgentUnproven(f"vm/{self.vm}: what answers on {self.address} did not prove it is the VM's "
                                    f"agent ({e.reason or e}); the token was not sent") from None
            raise AgentUnreachable(f"vm/{self.vm}: {method} {path} on {self.address}: {e}") from None
        except (OSError, http.client.HTTPException) as e:
            # QEMU accepts on the forward and drops the connection while nothing
            # listens in the guest: that is "not up yet", like a refusal.
            raise AgentUnreachable(f"vm/{self.vm}: {method} {path} on {self.address}: "
                                   f"{e or type(e).__name__}") from None
        finally:
            conn.close()
        try:
            payload = json.loads(raw)
        except ValueError:
            raise AgentRefused(response.status, f"{method} {path} on {self.address}: "
                                                "the answer is not JSON; is this a somnus agent?") from None
        if not isinstance(payload, dict):
            raise AgentRefused(response.status, f"{method} {path}: unexpected answer")
        if response.status >= 300:
            raise AgentRefused(response.status, str(payload.get("error", payload)))
        return payload

    def status(self) -> JsonObject:
        return self.request("GET", "/status")

    def stats_basic(self) -> JsonObject:
        return self.request("GET", "/stats/basic")

    def stats_intelligent(self) -> JsonObject:
        return self.request("GET", "/stats/intelligent")

    def execute(self, argv: list[str], stdin: str = "", timeout_s: float = 30.0) -> JsonObject:
        return self.request("POST", "/execute", {"argv": argv, "stdin": stdin, "timeout_s": timeout_s},
                            timeout_s=timeout_s + self.timeout_s)


    def write_files(self, writes: Sequence[tuple[SecretFile, Revealed]], removes: Sequence[str]) -> list[WrittenFile]:
        """Secret files into the guest (`POST /files`: each written atomically with its mode and
        owner), then `removes` removed; what the agent reports it wrote. AgentRefused (422,
        naming the path) when one cannot be written."""
        body = {"write": [{"path": f.path, "mode": f.mode, "owner": f.owner,
                           "content": base64.b64encode(value.reveal().encode()).decode()} for f, value in writes],
                "remove": list(removes)}
        answer = self.request("POST", "/files", body)
        try:
            return [WrittenFile(str(w["path"]), str(w["sha256"]), int(w["mode"]), int(w["uid"]), int(w["gid"]))
                    for w in answer["written"]]
        except (KeyError, TypeError, ValueError):
            raise AgentRefused(200, f"POST /files on {self.address}: unexpected answer") from None


def _unproven(error: ssl.SSLError) -> bool:
    """A handshake that failed on who the peer is (a certificate not the pinned one, or a
    peer that does not speak TLS at all), not on a connection dropped while booting."""
    return isinstance(error, ssl.SSLCertVerificationError) or error.reason in (
        "WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST")


def for_vm(vm: ActualVm, state_dir: Path, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> AgentClient | None:
    """The client of `vm`'s agent; None when the VM has no agent forward or token."""
    forward = next((f for f in vm.mark.forwards if f.name == AGENT_FORWARD), None) if vm.mark else None
    if forward is None:
        return None
    try:
        token = guest_access.read_agent_token(state_dir, vm.name)
    except (FileNotFoundError, ValueError):
        return None
    return AgentClient(forward.host_port, token, guest_access.agent_certificate(state_dir, vm.name), vm.name,
                       timeout_s=timeout_s)


@dataclass(frozen=True)
class SoftRebootConfirmation:
    confirmed: bool
    message: str
    duration_s: float
    processes: tuple[ProcessStatus, ...] = ()


def processes(status: Mapping[str, object]) -> list[ProcessStatus]:
    """The monitored processes of a `/status` answer; entries without a name are left out."""
    listed = status.get("processes")
    if not isinstance(listed, list):
        return []
    return [ProcessStatus(name=str(p["name"]), pid=p["pid"] if isinstance(p.get("pid"), int) else None,
                          running=bool(p.get("running")))
            for p in listed if isinstance(p, dict) and "name" in p]


def confirm_soft_reboot(client: AgentClient, timeout_s: float) -> SoftRebootConfirmation:
    """Ask for a soft reboot, then poll `/status` until every monitored process is back.

    Back means running under a new pid. Not confirmed when the agent refuses,
    or when `timeout_s` passes first; the message then says which processes
    did not come back.
    """
    started = time.monotonic()
    deadline = started + timeout_s
    before = {p["name"]: p["pid"] for p in processes(client.status())}
    try:
        client.request("POST", "/soft-reboot", {}, timeout_s=timeout_s)
    except AgentRefused as e:
        if e.status != 504:  # 504: not all back within the agent's own wait; keep polling
            return SoftRebootConfirmation(False, f"the agent refused: {e}", time.monotonic() - started)
    except AgentUnreachable:
        pass  # the answer may be lost; /status below says what happened
    waiting: list[str] = sorted(before)
    now: list[ProcessStatus] = []
    while True:
        try:
            now = processes(client.status())
            waiting = [
                p["name"] for p in now
                if not p["running"] or (p["name"] in before and p["pid"] == before[p["name"]])
            ]
            if not waiting:
                return SoftRebootConfirmation(True, f"{len(now)} process(es) back",
                                         time.monotonic() - started, tuple(now))
        except AgentError:
            pass
        if time.monotonic() >= deadline:
            return SoftRebootConfirmation(
                False, f"timed out after {timeout_s:.0f}s waiting for: {', '.join(waiting) or 'the agent'}",
                time.monotonic() - started, tuple(now),
            )
        time.sleep(_POLL_INTERVAL_S)
