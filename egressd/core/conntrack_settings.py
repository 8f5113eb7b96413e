"""Settings of connection survival (the ``conntrack:`` section of the config),
and their validation.

Same conventions as :mod:`egressd.core.mesh_settings`: camelCase keys, every
problem reported with its dotted field path (``conntrack.guardGrace``),
frozen dataclasses whose fields say their unit, meaning and why the default::

    conntrack:
      enabled: true            # on whenever the mesh is on; false turns it off
      mark: 0x00e90000         # egressd's bits of the conntrack mark ...
      mask: 0x00ff0000         # ... within this mask
      guardGrace: 3s
      maxEntriesPerPeer: 65536
      batchInterval: 50ms
      resyncInterval: 5m
      installBudget: 20ms

The entries travel over the mesh, so without the mesh (no key) nothing is
replicated whatever ``enabled`` says; the mark and the guard are part of the
same feature and are off then too.

Pure.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from egressd.core.errors import Problem
from egressd.core.scalars import closest, seconds

_KEYS = (
    "enabled",
    "mark",
    "mask",
    "guardGrace",
    "maxEntriesPerPeer",
    "batchInterval",
    "resyncInterval",
    "installBudget",
)
MAX_ENTRIES = 4_194_304
"""The largest ``maxEntriesPerPeer`` accepted (the kernel's own table is
bounded by ``nf_conntrack_max``, 262,144 by default on a 4 GiB node)."""

_Report = Callable[[str, str], None]


@dataclass(frozen=True)
class ConntrackSettings:
    """How the owner's flows are marked and replicated, and how a new owner
    protects them until their entries are installed."""

    enabled: bool = True
    """Replicate while the mesh is on. False: no mark, no stream, no guard
    (a failover resets server-first connections, as before)."""

    mark: int = 0x00E90000
    """egressd's value of the conntrack mark (bits within ``mask``); every
    SNAT rule sets it, and only flows carrying it are streamed."""

    mask: int = 0x00FF0000
    """The bits of the conntrack mark that are egressd's: the rule keeps the
    others (``ct mark and ~mask or mark``), so other software's marks survive.
    The default uses bits 16-23, which neither kube-proxy (which marks
    packets, not flows, in bits 14-15) nor Cilium's connmark bits use."""

    guard_grace: float = 3.0
    """Seconds after a takeover during which inbound packets to the egress IP
    that match no conntrack entry are dropped rather than answered with a
    reset. Linux TCP retransmits an unacknowledged segment after its RTO
    (at least 200 ms, doubling: 0.2, 0.4, 0.8, 1.6 s), so a server whose
    segment met the guard is back within a few hundred milliseconds, and 3 s
    covers its first four retransmissions (3.0 s in all at the minimum RTO).
    The entries left after the takeover's install budget are installed
    within that time (10,000 in 160-300 ms, docs/conntrack.md section 6).
    Longer costs nothing to flows whose entry arrived; it delays the reset of
    a flow whose entry never comes (and drops new inbound to the egress IP,
    which carries return traffic only)."""

    max_entries_per_peer: int = 65_536
    """Entries kept per sending peer (all its IPs together); beyond it new
    flows are refused and counted (``over-limit``). Bounds the memory a peer
    (or a flood under a stolen key) can take: about 200 bytes an entry, 13 MB
    at the default. A gateway SNATing more flows than this should raise it."""

    batch_interval: float = 0.05
    """Seconds between two batches of changes sent to the candidates: a flow
    created within this interval of a failover has no entry on the new owner
    (the issue's 50-100 ms)."""

    resync_interval: float = 300.0
    """Seconds between two full resyncs of an IP to its candidates beyond
    those a reconnecting peer or a lost event asks for; 0 turns them off.
    They repair what a lost datagram of the stream left out even when no
    later datagram shows the gap. A resync of 10,000 entries is about 360 kB
    per peer, so every 5 minutes costs 1.2 kB/s."""

    install_budget: float = 0.02
    """Seconds of the takeover path spent installing entries before the
    first gratuitous ARP (most recently updated first); the rest are
    installed right after, under the guard. Keeps the takeover path under
    its 50 ms target whatever the number of flows."""


def parse_conntrack(data: Any, path: str = "conntrack") -> tuple[ConntrackSettings, list[Problem]]:
    """Build :class:`ConntrackSettings` from the loaded ``conntrack:`` section
    (absent or null: the defaults). Returns the settings and the problems,
    each located under ``path``; with problems the settings are the defaults."""
    d = ConntrackSettings()
    if data is None:
        return d, []
    problems: list[Problem] = []

    def problem(name: str, message: str) -> None:
        problems.append(Problem(f"{path}.{name}" if name else path, message))

    if not isinstance(data, Mapping):
        problem("", f"must be a mapping, got {type(data).__name__}")
        return d, problems
    for key in data:
        if key not in _KEYS:
            problem(str(key), "unknown key" + closest(str(key), _KEYS))
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        problem("enabled", f"must be true or false, got {enabled!r}")
    mark = _u32(data.get("mark"), "mark", problem, d.mark)
    mask = _u32(data.get("mask"), "mask", problem, d.mask)
    if mask == 0:
        problem("mask", "must have at least one bit set")
    elif mark & ~mask:
        problem("mark", f"{mark:#010x} has bits outside mask {mask:#010x}")

    def duration(name: str, default: float, low: float, high: float) -> float:
        return _duration(data.get(name), name, problem, default, low=low, high=high)

    settings = ConntrackSettings(
        enabled=enabled if isinstance(enabled, bool) else True,
        mark=mark,
        mask=mask,
        guard_grace=duration("guardGrace", d.guard_grace, 0.001, 60.0),
        max_entries_per_peer=_count(data.get("maxEntriesPerPeer"), problem, d.max_entries_per_peer),
        batch_interval=duration("batchInterval", d.batch_interval, 0.005, 5.0),
        resync_interval=_resync(data.get("resyncInterval"), problem, d.resync_interval),
        install_budget=duration("installBudget", d.install_budget, 0.0, 1.0),
    )
    if problems:
        return d, problems
    return settings, []


def _u32(value: Any, name: str, problem: _Report, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, str):
        try:
            value = int(value, 0)
        except ValueError:
            problem(name, f"must be a 32-bit number (e.g. 0x00e90000), got {value!r}")
            return default
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF:
        problem(name, f"must be a 32-bit number (e.g. 0x00e90000), got {value!r}")
        return default
    return value


def _count(value: Any, problem: _Report, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ENTRIES:
        problem("maxEntriesPerPeer", f"must be a whole number of entries, 1 to {MAX_ENTRIES}, got {value!r}")
        return default
    return value


def _duration(value: Any, name: str, problem: _Report, default: float, *, low: float, high: float) -> float:
    if value is None:
        return default
    spelled = seconds(value)
    if spelled is None or not math.isfinite(spelled) or not low <= spelled <= high:
        problem(name, f"must be a duration of {low:g}s to {high:g}s (e.g. 3s, 250ms), got {value!r}")
        return default
    return spelled


def _resync(value: Any, problem: _Report, default: float) -> float:
    if value is None:
        return default
    spelled = seconds(value)
    if spelled is None or not math.isfinite(spelled) or not (spelled == 0 or 10.0 <= spelled <= 86_400.0):
        problem("resyncInterval", f"must be 0 (off) or a duration of 10s to 1 day (e.g. 5m), got {value!r}")
        return default
    return spelled
