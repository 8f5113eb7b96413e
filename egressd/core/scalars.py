"""How the config spells scalars, shared by every section's parser.

* A duration is a number of seconds or a string with a unit: ``250ms``,
  ``2.5s``, ``1m`` (``s`` when none is given). A bool is not a number, and a
  number too large for a float reads as infinity, so callers refuse it with a
  message instead of an ``OverflowError``.
* An unknown key gets a hint: the known key it differs from only by case or
  underscores, else the list of known keys.

The settings parser and the MQTT section both use these; neither can import the
other (the settings model holds the MQTT settings).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0}


def seconds(value: Any) -> float | None:
    """Seconds ``value`` spells (possibly infinite), or None if it is no duration."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            return float(value)
        except OverflowError:
            return math.inf
    if isinstance(value, str) and (m := _DURATION.match(value)):
        return float(m.group(1)) * _UNITS[m.group(2) or "s"]
    return None


def closest(key: str, allowed: Sequence[str]) -> str:
    """A hint for the unknown ``key``: the known key it meant, or the known keys."""
    lowered = key.lower().replace("_", "")
    for candidate in allowed:
        if candidate.lower() == lowered:
            return f" (did you mean {candidate!r}?)"
    return f" (known keys: {', '.join(allowed)})"
