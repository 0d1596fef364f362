"""Reaching a `somnus serve` as its tests, bench/dashboard.py and the screenshot script do:
wait until it answers, and trade its login URL for the session cookie."""

from __future__ import annotations

import time
import urllib.error
import urllib.request


def wait_until_listening(base: str, *, timeout_s: float = 60.0) -> None:
    """Until the server answers at all (401 without a session): polling a condition."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(base + "/api/overview", timeout=5)
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{base} never answered")


def session_cookie(login: str) -> str:
    """The `name=value` of the session cookie the login URL hands out."""
    return set_cookie_header(login).split(";", 1)[0]


def set_cookie_header(login: str) -> str:
    """The whole Set-Cookie header of the login URL's 303 (its attributes too)."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    try:
        urllib.request.build_opener(NoRedirect).open(login, timeout=30)
    except urllib.error.HTTPError as e:
        assert e.code == 303, e.code
        return str(e.headers["Set-Cookie"])
    raise AssertionError("the login URL did not redirect")
