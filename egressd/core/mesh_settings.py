"""Settings of the gateway mesh (the ``mesh:`` section of the config), and
their validation.

Same conventions as :mod:`egressd.core.config`: camelCase keys, every
problem reported with its dotted field path (``mesh.promiseDuration``),
frozen dataclasses whose fields say their unit, meaning and why the default::

    mesh:
      keyFile: /etc/egressd/mesh/key   # the cluster key; absent: no mesh
      optional: false                  # true: a missing key file turns the mesh off
      port: 7946
      promiseDuration: 2s
      maxHold: 15m
      drift: 0.01
      margin: 50ms

The key is the file's bytes (at least 32), never written in the config: in
the DaemonSet a Kubernetes Secret mounted as a file, in the static mode a
file only root reads. Without ``keyFile`` the mesh is off: nobody promises,
and the daemon serves on API rights alone (and says so at start). With
``optional: true`` a key file that does not exist turns the mesh off too
(the DaemonSet mounts its Secret as optional, so the mesh is on where the
Secret exists); without it a missing key file is an error.

Pure: the key file's path is checked for shape here; the command line reads
it (and reports a short or missing key under ``mesh.keyFile``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from egressd.core.errors import Problem
from egressd.core.rights import MeshTiming
from egressd.core.scalars import closest, seconds

DEFAULT_PORT = 7946
"""UDP port of the mesh: the port memberlist-based gossip (Serf, Consul,
MetalLB's speakers) has made the customary one for node-to-node liveness
datagrams, so firewall rules for such meshes are commonly in place already.
Change it where something else on the gateways uses it."""

_KEYS = ("keyFile", "optional", "port", "promiseDuration", "maxHold", "drift", "margin")
_MAX_DURATION = 86_400.0
"""Seconds: the longest duration accepted anywhere in the section (a day)."""

_Report = Callable[[str, str], None]


@dataclass(frozen=True)
class MeshSettings:
    """Where the mesh listens, its key, and the timings of its promises."""

    key_file: str
    """Path of the file whose bytes are the cluster key (HMAC-SHA256), at
    least 32 bytes; the same on every gateway candidate."""

    port: int = DEFAULT_PORT
    """UDP port, the same on every gateway (peers are sent to it at the
    address of their node lease). See :data:`DEFAULT_PORT`."""

    timing: MeshTiming = field(default_factory=MeshTiming)
    """Promise duration, drift, margin and ``maxHold``
    (:class:`egressd.core.rights.MeshTiming` says what each means and why
    its default)."""

    optional: bool = False
    """A key file that does not exist turns the mesh off (the daemon says so
    at start) instead of stopping the daemon: the DaemonSet's Secret is
    optional. False by default: in the static mode a missing key file is a
    mistake to report, not a setting."""


def parse_mesh(data: Any, path: str = "mesh") -> tuple[MeshSettings | None, list[Problem]]:
    """Build :class:`MeshSettings` from the loaded ``mesh:`` section.

    Returns (settings, []) when valid, (None, []) when the section is absent,
    null, or has no ``keyFile`` (mesh off), and (None, problems) listing every
    problem otherwise, each located under ``path``. The inequalities between
    these timings and the election's (``rights.check``) are checked by the
    caller, which knows both."""
    if data is None:
        return None, []
    problems: list[Problem] = []

    def problem(name: str, message: str) -> None:
        problems.append(Problem(f"{path}.{name}" if name else path, message))

    if not isinstance(data, Mapping):
        problem("", f"must be a mapping, got {type(data).__name__}")
        return None, problems
    for key in data:
        if key not in _KEYS:
            problem(str(key), "unknown key" + closest(str(key), _KEYS))
    key_file = data.get("keyFile")
    if key_file is not None and (not isinstance(key_file, str) or not key_file.strip() or "\0" in key_file):
        problem("keyFile", f"must be the path of the key file, got {key_file!r}")
        key_file = None
    port = _port(data.get("port"), problem)
    optional = data.get("optional", False)
    if not isinstance(optional, bool):
        problem("optional", f"must be true or false, got {optional!r}")
        optional = False
    d = MeshTiming()
    timing = MeshTiming(
        promise_duration=_duration(data.get("promiseDuration"), "promiseDuration", problem, d.promise_duration),
        max_hold=_duration(data.get("maxHold"), "maxHold", problem, d.max_hold),
        drift=_fraction(data.get("drift"), problem, d.drift),
        margin=_duration(data.get("margin"), "margin", problem, d.margin, zero=True),
        rtt_bound=d.rtt_bound,
    )
    if problems or key_file is None:
        return None, problems
    return MeshSettings(key_file=key_file, port=port, timing=timing, optional=optional), []


def _port(value: Any, problem: _Report) -> int:
    if value is None:
        return DEFAULT_PORT
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        problem("port", f"must be a UDP port 1-65535, got {value!r}")
        return DEFAULT_PORT
    return value


def _duration(value: Any, name: str, problem: _Report, default: float, *, zero: bool = False) -> float:
    if value is None:
        return default
    spelled = seconds(value)
    low = 0.0 if zero else math.ulp(0.0)
    if spelled is None or not math.isfinite(spelled) or not low <= spelled <= _MAX_DURATION:
        bound = "0" if zero else "more than 0"
        problem(name, f"must be a duration of {bound} to {_MAX_DURATION:g}s (e.g. 2s, 250ms, 5m), got {value!r}")
        return default
    return spelled


def _fraction(value: Any, problem: _Report, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 0.5:
        problem("drift", f"must be a number in [0, 0.5) (the clocks' largest rate difference), got {value!r}")
        return default
    return float(value)
