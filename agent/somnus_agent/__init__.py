"""Somnus in-guest agent (SPEC section 7).

Runs on the guest's own Python with the standard library only; the host talks
to it over HTTP with a bearer token. Entry point: ``python3 -m somnus_agent``.
"""

__version__ = "0.1.0"
