"""The number checks every resolution step shares: one-line errors that name the setting and the value given."""

from __future__ import annotations

import math
import numbers
from typing import Any

from .errors import BerniniError


def as_float(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BerniniError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise BerniniError(f"{name} must be finite, got {value!r}")
    return number


def as_int(name: str, value: Any) -> int:
    """Integers stay exact (never through a float: 2**53 + 1 must stay itself); integral floats are accepted."""
    if isinstance(value, bool):
        raise BerniniError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    number = as_float(name, value)
    if number != int(number):
        raise BerniniError(f"{name} must be an integer, got {value!r}")
    return int(number)


def check_range(name: str, value: float, low: float | None = None, high: float | None = None, what: str = "") -> None:
    if (low is not None and value < low) or (high is not None and value > high):
        raise BerniniError(f"{name} must be {what}, got {value:g}")
