"""An ssh-agent of one's own that holds one private key in memory, for as long as a block runs.

ssh and Ansible need a guest's private key, which the host keeps encrypted
(`host_vault`) and never writes in the clear. `guest_access.ssh_agent` decrypts it
and hands it here: `ssh-agent -D` listens on a socket in a new 0700 directory, the
key goes in through `ssh-add -` on its stdin, and ssh, pointed at the public half
(`-i <key>.pub -o IdentitiesOnly=yes`) with `SSH_AUTH_SOCK` set, signs through the
agent. The agent refuses peers of another uid (its own check) and dies with the block.

The agent runs in a session of its own, so a Ctrl-C meant for the caller (an apply
that lets the current step finish) does not end it under a running ssh; it is stopped
by its own pid when the block ends. A process killed meanwhile leaves it running; a
pack run's agent has its socket under the run's directory, so
`ansible_processes.end_interrupted_runs` ends it with the playbook.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from somnus_reconciler.values.errors import PermanentError

_SOCKET_NAME = "agent.sock"
_DIR_PREFIX = "somnus-agent-"
# A unix socket path holds at most 107 bytes: <parent>/somnus-agent-XXXXXXXX/agent.sock.
_MAX_PARENT = 107 - len(f"/{_DIR_PREFIX}XXXXXXXX/{_SOCKET_NAME}")
_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class SshAgent:
    pid: int
    socket: Path

    @property
    def env(self) -> dict[str, str]:
        """What ssh (or Ansible) needs in its environment to use this agent."""
        return {"SSH_AUTH_SOCK": str(self.socket)}


@contextlib.contextmanager
def holding(private_key: bytes, what: str, *, parent: Path | None = None) -> Iterator[SshAgent]:
    """A running agent that holds `private_key` (OpenSSH or PEM, no passphrase).

    Its socket directory is made under `parent` (the temporary directory when there is
    none or its path is too long for a socket). `what` names the key in errors (e.g.
    "the key of vm/web"). A PermanentError when openssh-client is missing, the agent
    does not start or the key is not taken.
    """
    directory = Path(tempfile.mkdtemp(prefix=_DIR_PREFIX, dir=_socket_parent(parent)))  # mode 0700
    socket_path = directory / _SOCKET_NAME
    try:
        agent = subprocess.Popen(
            ["ssh-agent", "-D", "-a", str(socket_path)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True, env=_c_locale(),
        )
    except FileNotFoundError as e:
        shutil.rmtree(directory, ignore_errors=True)
        raise PermanentError("ssh-agent is not installed (apt-get install openssh-client)") from e
    try:
        _wait_listening(agent)
        _add(private_key, what, socket_path)
        yield SshAgent(agent.pid, socket_path)
    finally:
        _stop(agent)
        shutil.rmtree(directory, ignore_errors=True)


def _socket_parent(parent: Path | None) -> str:
    for candidate in (str(parent) if parent is not None else None, tempfile.gettempdir(), "/tmp"):
        if candidate is not None and len(candidate) <= _MAX_PARENT:
            return candidate
    return "/tmp"


def _wait_listening(agent: subprocess.Popen[bytes]) -> None:
    """Until the agent listens: `ssh-agent -D` prints its socket once it does."""
    assert agent.stdout is not None
    ready, _, _ = select.select([agent.stdout], [], [], _START_TIMEOUT_S)
    line = agent.stdout.readline() if ready else b""
    agent.stdout.close()
    if not line.startswith(b"SSH_AUTH_SOCK="):
        reason = "it did not start in time"
        if agent.poll() is not None and agent.stderr is not None:
            reason = _last_line(agent.stderr.read().decode(errors="replace")) or f"it exited {agent.returncode}"
        raise PermanentError(f"ssh-agent did not start: {reason}")


def _add(private_key: bytes, what: str, socket_path: Path) -> None:
    try:
        result = subprocess.run(
            ["ssh-add", "-q", "-"], input=private_key, capture_output=True, check=False,
            env={**_c_locale(), "SSH_AUTH_SOCK": str(socket_path)}, timeout=30,
        )
    except FileNotFoundError as e:
        raise PermanentError("ssh-add is not installed (apt-get install openssh-client)") from e
    if result.returncode != 0:
        reason = _last_line(result.stderr.decode(errors="replace")) or f"ssh-add exited {result.returncode}"
        raise PermanentError(f"ssh-agent did not take {what}: {reason}")


def _stop(agent: subprocess.Popen[bytes]) -> None:
    if agent.poll() is None:
        agent.terminate()  # ssh-agent removes its socket and exits
        try:
            agent.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
    for stream in (agent.stdout, agent.stderr):
        if stream is not None:
            stream.close()


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _c_locale() -> dict[str, str]:
    return {**os.environ, "LC_ALL": "C"}
