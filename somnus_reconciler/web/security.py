"""Who may use `somnus serve`, as for any local web service that can change machines.

- A login token, made at first start (`<state_dir>/serve-token`, 0600); the login URL
  (`/login?token=...`) trades it for a session cookie (HttpOnly, SameSite=Strict, and
  Secure over TLS). Every other page and API answer needs the session: 401 without.
- Each session has a CSRF token, which its pages carry (`<meta name="csrf">`); a
  request that may change something (any method but GET and HEAD) must send it back
  in `X-CSRF-Token`: 403 without.
- The Host header must name the address served (DNS rebinding): 400 otherwise.
- Every answer carries a Content-Security-Policy without inline scripts or styles,
  and no one may frame the page.
"""

from __future__ import annotations

import hmac
import os
import secrets
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

TOKEN_FILE = "serve-token"
SESSION_COOKIE = "somnus_session"
CSRF_HEADER = "x-csrf-token"
PUBLIC_PATHS = ("/login", "/static/")  # the login page's own script and style sheet
HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

Handler = Callable[[Request], Awaitable[Response]]


def login_token(state_dir: Path) -> tuple[str, bool]:
    """The token (made now if there is none: then True), kept 0600 in the state directory."""
    path = state_dir / TOKEN_FILE
    try:
        return path.read_text().strip(), False
    except FileNotFoundError:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        token = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as stream:
            stream.write(token)
        return token, True


class Guard:
    """The checks above as one middleware function, with the sessions it handed out."""

    def __init__(self, token: str, hosts: frozenset[str], *, tls: bool) -> None:
        self._token = token
        self._hosts = hosts  # "127.0.0.1:8765", "localhost:8765"
        self._tls = tls
        self._sessions: dict[str, str] = {}  # session id -> its CSRF token
        self._lock = threading.Lock()

    def csrf_token(self, request: Request) -> str:
        with self._lock:
            return self._sessions.get(request.cookies.get(SESSION_COOKIE, ""), "")

    async def __call__(self, request: Request, call_next: Handler) -> Response:
        response = await self._checked(request, call_next)
        response.headers.update(HEADERS)
        return response

    async def _checked(self, request: Request, call_next: Handler) -> Response:
        if request.headers.get("host", "") not in self._hosts:
            return PlainTextResponse("this server answers only to its own address", status_code=400)
        path = request.url.path
        if path == "/login":
            return self._login(request)
        csrf = self.csrf_token(request)
        if not csrf and not path.startswith(PUBLIC_PATHS):
            return PlainTextResponse("log in with the URL `somnus serve` printed (the token is in "
                                     f"{TOKEN_FILE} of the state directory)", status_code=401)
        if request.method not in ("GET", "HEAD") and not _same(request.headers.get(CSRF_HEADER, ""), csrf):
            return PlainTextResponse("missing or wrong CSRF token", status_code=403)
        return await call_next(request)

    def _login(self, request: Request) -> Response:
        if not _same(request.query_params.get("token", ""), self._token):
            return PlainTextResponse("wrong or missing login token", status_code=401)
        session = secrets.token_urlsafe(32)
        with self._lock:
            self._sessions[session] = secrets.token_urlsafe(32)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(SESSION_COOKIE, session, httponly=True, samesite="strict", secure=self._tls)
        return response


def _same(given: str, expected: str) -> bool:
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())
