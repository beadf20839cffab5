"""Value checks shared by every room's validation: the one home of "is this an integer / a number".

``bool`` is a subclass of ``int`` in Python, so ``isinstance(True, int)`` holds; a config value
``true`` given where a count belongs must still be refused, hence these helpers.
"""
from __future__ import annotations

import math
import operator
from typing import Any


def is_int(value: Any) -> bool:
    """True for an ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """True for a finite ``int`` or ``float`` that is not a ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def int_problem(name: str, value: Any, minimum: int | None = None) -> str | None:
    """``None`` if ``value`` is an integer ``>= minimum`` (when given), else the message naming ``name``."""
    if not is_int(value):
        return f"{name} must be an integer, got {value!r}"
    if minimum is not None and value < minimum:
        what = "positive" if minimum == 1 else "non-negative" if minimum == 0 else f">= {minimum}"
        return f"{name} must be {what}, got {value}"
    return None


def real_problem(name: str, value: Any, low: float | None = None, high: float | None = None) -> str | None:
    """``None`` if ``value`` is a finite number (not a ``bool``) within ``[low, high]`` (each when given),
    else the message naming ``name``: ``p must lie in [0, 1], got 1.5``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{name} must be a number, got {value!r}"
    if low is not None and high is not None:
        if not low <= value <= high:  # NaN fails this too
            return f"{name} must lie in [{low:g}, {high:g}], got {value}"
    elif low is not None and not value >= low:
        return f"{name} must be >= {low:g}, got {value}"
    elif high is not None and not value <= high:
        return f"{name} must be <= {high:g}, got {value}"
    if not is_real(value):
        return f"{name} must be a finite number, got {value}"
    return None


def to_int(value: Any) -> int | None:
    """``value`` as an ``int`` where it spells one (3, "3", 3.0, numpy integers), else ``None`` (True, 2.5, "x")."""
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        return None
    try:
        return int(value) if isinstance(value, (str, float)) else operator.index(value)
    except (TypeError, ValueError):
        return None
