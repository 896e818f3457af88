"""Argument checks shared by every config: types, ranges and finiteness, each with one message form.

Configs validate on construction (``__post_init__``), so a bad value is refused before a run
directory is created or a tensor allocated. Messages name the argument, what was expected and what
was received: "Expected `lr` to be a finite number. Got inf."
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from kktrecon.errors import ConfigError

__all__ = ["check_int", "check_ints", "check_number", "is_int"]


def is_int(value: Any) -> bool:
    """A true integer (Python or numpy), not a bool and not a float with an integral value."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def check_int(name: str, value: Any, *, low: int | None = None, high: int | None = None) -> None:
    """Refuse anything but an integer in [low, high]."""
    if not is_int(value) or (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(f"Expected `{name}` to be an integer{_range(low, high)}. Got {value!r}.")


def check_ints(name: str, values: Iterable[Any], *, low: int | None = None, high: int | None = None) -> None:
    """Refuse a sequence holding anything but integers in [low, high]."""
    values = tuple(values)
    if not all(is_int(v) and (low is None or v >= low) and (high is None or v <= high) for v in values):
        raise ConfigError(f"Expected `{name}` to hold integers{_range(low, high)}. Got {values!r}.")


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Refuse anything but a finite real number in the given (closed unless ``*_open``) interval."""
    if not (isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)):
        raise ConfigError(f"Expected `{name}` to be a number. Got {value!r}.")
    if not math.isfinite(value):
        raise ConfigError(f"Expected `{name}` to be a finite number. Got {value}.")
    ok = True
    if low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        bounds = []
        if low is not None:
            bounds.append(f"{'>' if low_open else '>='} {low:g}")
        if high is not None:
            bounds.append(f"{'<' if high_open else '<='} {high:g}")
        raise ConfigError(f"Expected `{name}` {' and '.join(bounds)}. Got {value}.")


def _range(low: int | None, high: int | None) -> str:
    if low is not None and high is not None:
        return f" in [{low}, {high}]"
    if low is not None:
        return f" >= {low}"
    if high is not None:
        return f" <= {high}"
    return ""
