"""Timing profiles for the lab and the drill: the ``timing:`` section of egressd's config, from a
YAML file and/or flags, checked before anything starts.

A profile file holds one key, ``timing:``, exactly as in a daemon's config (``config/timing-fast.yaml``).
Flags (``--lease-duration 0.5``, one per timing key, :data:`FLAGS`) override single values of the
file. The result is validated the way a daemon validates its config (the bounds of every field and
the inequalities (T1)-(T3) of :class:`egressd.core.model.Timing`), so a bad profile is refused with
the field it names, and ``egressd lab up`` writes the same ``timing:`` section into every daemon's
config.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from egressd.core.config import parse_settings
from egressd.core.errors import ConfigError
from egressd.core.model import TIMING_KEYS
from egressd.lab.netns import LabError

log = logging.getLogger(__name__)

FLAGS: Mapping[str, str] = {key: "--" + name.replace("_", "-") for name, key in TIMING_KEYS.items()}
"""The command-line flag of each camelCase timing key (``leaseDuration`` -> ``--lease-duration``)."""

_PROBE_NODE = {"name": "timing-profile", "address": "192.0.2.1"}
"""A node for the check: a profile is validated inside a minimal daemon config."""


def read_profile(path: str | Path) -> dict[str, Any]:
    """The ``timing:`` mapping of a profile file (camelCase keys, values as written)."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise LabError(f"timing profile {p}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise LabError(f"timing profile {p}: not YAML: {exc}") from exc
    if not isinstance(data, Mapping) or "timing" not in data:
        raise LabError(f"timing profile {p}: must be a mapping with a 'timing:' section, as in egressd's config")
    extra = sorted(str(k) for k in data if k != "timing")
    if extra:
        raise LabError(f"timing profile {p}: only 'timing:' belongs in a profile, found {', '.join(extra)}")
    timing = data["timing"]
    if timing is None:
        return {}
    if not isinstance(timing, Mapping):
        raise LabError(f"timing profile {p}: timing: must be a mapping, got {type(timing).__name__}")
    return {str(k): v for k, v in timing.items()}


def check_timing(timing: Mapping[str, Any], source: str = "timing profile") -> dict[str, Any]:
    """``timing`` if a daemon would accept it as its ``timing:`` section, else a :class:`LabError`
    naming every field in trouble (``timing.leaseDuration: (T1) ...``)."""
    try:
        parse_settings({"node": dict(_PROBE_NODE), "timing": dict(timing)}, source=source)
    except ConfigError as exc:
        raise LabError(str(exc)) from exc
    return dict(timing)


def resolve_timing(path: str | Path | None, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The profile of ``path`` (if any) with ``overrides`` (camelCase key -> value; None values are
    not given) on top, checked; empty for egressd's defaults."""
    timing = read_profile(path) if path is not None else {}
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(given) - set(TIMING_KEYS.values()))
    if unknown:
        raise LabError(f"unknown timing keys: {', '.join(unknown)} (known: {', '.join(TIMING_KEYS.values())})")
    timing.update(given)
    source = f"timing profile {path}" if path is not None else "timing flags"
    if path is not None and given:
        source += " with flags " + ", ".join(FLAGS[k] for k in given)
    checked = check_timing(timing, source)
    if checked:
        log.info("timing profile", extra={"source": source, "timing": checked})
    return checked


def flag_value(text: str) -> float | str:
    """A flag's value: a number of seconds, or a string with a unit (``250ms``) for the config's parser."""
    try:
        return float(text)
    except ValueError:
        return text
