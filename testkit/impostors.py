"""Servers that pretend to be a guest, for the guest identity tests (issue 17).

`ssh_impostor()` is an SSH server (paramiko) with a host key of its own on
127.0.0.1; `http_impostor()` is a plain HTTP server that keeps every byte it
receives and answers each request with 400. Each records what reached it (`Impostor.log`,
`Impostor.received`), so a test can assert that no token, key exchange past the
host key, login or command got through.
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import paramiko


@dataclass
class Impostor:
    port: int
    log: list[str] = field(default_factory=list)  # what the SSH impostor saw: logins, commands
    received: bytearray = field(default_factory=bytearray)  # every byte the listener got
    lock: threading.Lock = field(default_factory=threading.Lock)


class _AcceptAnything(paramiko.ServerInterface):
    """Lets anyone in and runs nothing; only records what it was asked."""

    def __init__(self, impostor: Impostor) -> None:
        self._impostor = impostor

    def _note(self, line: str) -> None:
        with self._impostor.lock:
            self._impostor.log.append(line)

    def get_allowed_auths(self, username: str) -> str:
        return "publickey,password"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        self._note(f"login {username} with key {key.get_name()}")
        return paramiko.AUTH_SUCCESSFUL

    def check_auth_password(self, username: str, password: str) -> int:
        self._note(f"login {username} with a password")
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_request(self, kind: str, chanid: int) -> int:
        self._note(f"channel {kind}")
        return paramiko.OPEN_SUCCEEDED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        self._note(f"exec {command.decode(errors='replace')}")
        channel.send_exit_status(0)
        return True


def _bound(port: int) -> socket.socket:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(8)
    server.settimeout(0.2)
    return server


@contextlib.contextmanager
def _serving(port: int | None, handle: Callable[[socket.socket, threading.Event], None]) -> Iterator[int]:
    """Accept on 127.0.0.1 (`port`, or a free one) until the block ends, each connection
    handled in a thread of its own; yields the port."""
    server = _bound(port or 0)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=handle, args=(connection, stop), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        server.close()
        thread.join(timeout=5)


@contextlib.contextmanager
def ssh_impostor(port: int | None = None) -> Iterator[Impostor]:
    """An SSH server on 127.0.0.1 (`port`, or a free one) with an ed25519 host key of its own."""
    host_key = paramiko.Ed25519Key.from_private_key(_fresh_ed25519_pem())
    impostor = Impostor(0)

    def handle(connection: socket.socket, stop: threading.Event) -> None:
        transport = paramiko.Transport(connection)
        transport.add_server_key(host_key)
        with contextlib.suppress(Exception):  # a client that walks away is the expected end
            transport.start_server(server=_AcceptAnything(impostor))
            while transport.is_active() and not stop.is_set():
                channel = transport.accept(0.2)
                if channel is not None:
                    channel.close()
        transport.close()

    with _serving(port, handle) as impostor.port:
        yield impostor


@contextlib.contextmanager
def http_impostor(port: int | None = None) -> Iterator[Impostor]:
    """Plain HTTP on 127.0.0.1 (`port`, or a free one): keeps every byte, answers 400."""
    impostor = Impostor(0)

    def handle(connection: socket.socket, stop: threading.Event) -> None:
        connection.settimeout(0.5)
        with connection:
            while not stop.is_set():
                try:
                    chunk = connection.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                with impostor.lock:
                    impostor.received.extend(chunk)
                connection.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    with _serving(port, handle) as impostor.port:
        yield impostor


def _fresh_ed25519_pem() -> io.StringIO:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    return io.StringIO(pem.decode())
