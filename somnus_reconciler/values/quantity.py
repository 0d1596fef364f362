"""Kubernetes-style quantities (`512Mi`, `8Gi`, `1.5G`) as byte counts.

Used by the manifest kinds (`values.model`, as the `Quantity` field type) and by
every view that prints a size back to the user (`format_bytes`).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

_SUFFIXES: dict[str, int] = {
    "": 1,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}
_PATTERN = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?\s*$")
QUANTITY_REGEX = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"


def parse_quantity(value: object) -> int:
    """Return the number of bytes `value` stands for; raise ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"expected a quantity such as 512Mi or 8Gi, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a quantity cannot be negative: {value}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a quantity such as 512Mi or 8Gi, got {value!r}")
    match = _PATTERN.match(value)
    if match is None:
        raise ValueError(f"{value!r} is not a quantity (use Kubernetes notation such as 512Mi or 8Gi)")
    number, suffix = match.group(1), match.group(2) or ""
    try:
        amount = Decimal(number) * _SUFFIXES[suffix]
    except InvalidOperation as e:  # pragma: no cover - the regex admits only digits
        raise ValueError(f"{value!r} is not a quantity") from e
    if amount != amount.to_integral_value():
        raise ValueError(f"{value!r} is not a whole number of bytes")
    return int(amount)


def format_bytes(amount: int) -> str:
    """Shortest exact binary form: 8589934592 -> '8Gi', 1536Mi stays '1536Mi'."""
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        unit = _SUFFIXES[suffix]
        if amount >= unit and amount % unit == 0:
            return f"{amount // unit}{suffix}"
    return str(amount)


def format_bytes_rounded(amount: int) -> str:
    """For figures that are measured, not declared: 175992832 -> '167.8Mi'."""
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        if amount >= _SUFFIXES[suffix]:
            return f"{amount / _SUFFIXES[suffix]:.1f}{suffix}"
    return str(amount)


Quantity = Annotated[
    int,
    BeforeValidator(parse_quantity),
    PlainSerializer(format_bytes, return_type=str),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": QUANTITY_REGEX},
                {"type": "integer", "minimum": 0},
            ],
            "description": "Kubernetes quantity, e.g. 512Mi or 8Gi (bytes when an integer)",
        }
    ),
]


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?")
_DURATION_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """'60s', '5m', '1.5h', '7d', '500ms' or plain seconds -> seconds; ValueError otherwise."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"{text!r} is not a duration (e.g. 30s, 5m, 2h, 7d)")
    return float(match[1]) * _DURATION_SECONDS[match[2] or "s"]
