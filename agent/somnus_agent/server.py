"""HTTPS front of the agent: TLS, authentication, JSON framing, limits, routing.

The agent speaks TLS only, with the certificate the host made for this VM and
pinned (so the host sends its token to nobody else). Each connection's handshake
runs in its own thread, bounded by the socket timeout. Every request is
authenticated before anything else happens; only then is it routed (404/405) and
its body read (capped, 413). Built by :mod:`somnus_agent.cli`.
"""

from __future__ import annotations

import http.server
import json
import socket
import socketserver
import ssl
import sys
import traceback
from typing import Any
from urllib.parse import urlsplit

from somnus_agent import endpoints
from somnus_agent.runtime import AgentRuntime

MAX_BODY_BYTES = 64 * 1024
SOCKET_TIMEOUT_S = 30.0
DRAIN_LIMIT_BYTES = 4 * 1024 * 1024
DRAIN_TIMEOUT_S = 2.0


class AgentHTTPServer(http.server.ThreadingHTTPServer):
    """A threading HTTPS server that carries the agent runtime for its handlers."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], runtime: AgentRuntime, tls: ssl.SSLContext) -> None:
        self.runtime = runtime
        self.tls = tls
        super().__init__(address, AgentRequestHandler)

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = self.socket.accept()
        # The handshake waits for the handler's thread (`AgentRequestHandler.setup`), so
        # that a slow or silent client never holds up the others.
        return self.tls.wrap_socket(connection, server_side=True, do_handshake_on_connect=False), address

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError):  # a handshake refused or a client gone: one line, not a traceback
            sys.stderr.write(f"{client_address[0]}:{client_address[1]} {type(error).__name__}: {error}\n")
            return
        super().handle_error(request, client_address)


class AgentRequestHandler(http.server.BaseHTTPRequestHandler):
    """Turns one HTTP request into one endpoint call."""

    server: AgentHTTPServer
    protocol_version = "HTTP/1.1"
    timeout = SOCKET_TIMEOUT_S
    # A header and a body written apart would otherwise wait for the client's delayed ACK (40 ms).
    disable_nagle_algorithm = True
    server_version = "somnus-agent"
    sys_version = ""

    def setup(self) -> None:
        self.request.settimeout(SOCKET_TIMEOUT_S)
        self.request.do_handshake()
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        # Access log to stderr without headers, so tokens never reach it.
        sys.stderr.write(f"{self.address_string()} {format % args}\n")

    def _send(self, response: endpoints.Response, *, close: bool = False) -> None:
        data = json.dumps(response.payload).encode("utf-8")
        self.send_response(response.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.close_connection = True
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _reject(self, response: endpoints.Response) -> None:
        """Answer without using the body; drain a bounded amount of it first so
        closing the socket does not reset the connection before the client reads
        the answer."""
        try:
            pending = 0 if self._body_consumed else int(self.headers.get("Content-Length") or 0)
        except ValueError:
            pending = 0
        pending = min(pending, DRAIN_LIMIT_BYTES)
        try:
            self.connection.settimeout(DRAIN_TIMEOUT_S)
            while pending > 0:
                chunk = self.rfile.read1(min(pending, 65536))
                if not chunk:
                    break
                pending -= len(chunk)
        except OSError:
            pass
        self._send(response, close=True)

    def _read_body(self) -> dict[str, Any] | endpoints.Response:
        length_header = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            return endpoints.error(411, "chunked bodies are not accepted; send Content-Length")
        try:
            length = int(length_header) if length_header else 0
        except ValueError:
            return endpoints.error(400, "bad Content-Length")
        if length < 0:
            return endpoints.error(400, "bad Content-Length")
        if length > MAX_BODY_BYTES:
            return endpoints.error(413, f"body larger than {MAX_BODY_BYTES} bytes")
        if length == 0:
            return {}
        raw = self.rfile.read(length)
        self._body_consumed = True
        try:
            body = json.loads(raw)
        except ValueError:
            return endpoints.Response(400, {"error": "body is not valid JSON"})
        if not isinstance(body, dict):
            return endpoints.Response(400, {"error": "body must be a JSON object"})
        return body

    def _handle(self) -> None:
        self._body_consumed = False
        if not self.server.runtime.tokens.verify(self.headers.get("Authorization")):
            self._reject(endpoints.error(401, "missing or invalid bearer token"))
            return
        path = urlsplit(self.path).path
        methods = endpoints.ROUTES.get(path)
        if methods is None:
            self._reject(endpoints.error(404, f"no such endpoint {path}"))
            return
        endpoint = methods.get(self.command)
        if endpoint is None:
            self._reject(endpoints.error(405, f"{self.command} not allowed on {path}",
                                         allowed=sorted(methods)))
            return
        body = self._read_body()
        if isinstance(body, endpoints.Response):
            self._reject(body)
            return
        try:
            response = endpoint(self.server.runtime, body)
        except Exception as e:  # noqa: BLE001 - the agent must answer, not die
            traceback.print_exc(file=sys.stderr)
            response = endpoints.error(500, f"internal error: {type(e).__name__}")
        self._send(response)

    do_GET = _handle
    do_POST = _handle
    do_PUT = _handle
    do_DELETE = _handle
    do_PATCH = _handle


def tls_context(certificate: str, key: str) -> ssl.SSLContext:
    """The server's TLS: this VM's certificate and key (ssl.SSLError or OSError when unusable)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certificate, key)
    return context


def make_server(host: str, port: int, runtime: AgentRuntime, tls: ssl.SSLContext) -> AgentHTTPServer:
    socketserver.TCPServer.allow_reuse_address = True
    return AgentHTTPServer((host, port), runtime, tls)
