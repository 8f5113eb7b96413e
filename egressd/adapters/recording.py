"""A data plane that touches nothing and records what it would do.

Used by ``egressd run --dataplane record`` (a dry run of the election on a
real cluster) and by the integration tests, which read the journal of several
daemons to check that no two ever served one IP at once.

It models the kernel fence: an address claimed with a lifetime counts as
present only until ``claimed_at + lifetime`` unless refreshed, exactly like an
address with ``valid_lft`` whose owner froze. Each journal line is a JSON
object with ``t`` (CLOCK_MONOTONIC seconds, comparable between processes on
one machine), ``node``, ``op`` and the operation's fields.

The journal is a record, not the data path: a line that cannot be written
(disk full, file removed) is counted in ``journal_errors`` and logged once
per run of failures; the daemon carries on.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from egressd.core.addressing import OnLink
from egressd.core.model import EgressGroup, IPAddress

log = logging.getLogger(__name__)


class RecordingDataPlane:
    """Implements the Addresses, Snat, Announcer and Steering ports in memory."""

    def __init__(self, node: str, journal: Path | None = None) -> None:
        self.node = node
        # unbuffered: a line is one write(2), and a failed one leaves nothing behind to fail again
        self._journal = journal.open("ab", buffering=0) if journal else None
        self.addresses: dict[tuple[IPAddress, str], float] = {}
        """(ip, interface) -> monotonic expiry time."""
        self.snat: dict[IPAddress, str] = {}
        self.primed: dict[IPAddress, str] = {}
        """IPs whose SNAT rule is in place ahead of a transfer, fence not armed (not serving)."""
        self.announcing: set[IPAddress] = set()
        self.staged: tuple[str, ...] = ()
        self.staged_groups: tuple[EgressGroup, ...] = ()
        self.steering: dict[IPAddress, IPAddress | None] = {}
        self.ops: list[dict[str, Any]] = []
        self.on_link: dict[str, list[OnLink]] = {}
        """The node's own addresses per interface (none unless a test sets them)."""
        self.fenced: dict[IPAddress, float] = {}
        """What :meth:`fence` reports (armed fence elements and seconds left;
        none unless a test sets them: a recording arms nothing)."""
        self.journal_errors = 0
        """Journal lines that could not be written."""
        self._names: dict[IPAddress, str] = {}
        """``str(ip)`` of the IPs seen: the re-arms after each renew name every
        owned IP, and ``ipaddress`` formats slowly (a thousand IPs, four times
        a second, were a third of a dry-run daemon's time at rest)."""
        self._journal_failing = False

    def _record(self, op: str, **fields: Any) -> None:
        entry = {"t": time.monotonic(), "node": self.node, "op": op, **fields}
        self.ops.append(entry)
        if self._journal is not None:
            try:
                self._journal.write((json.dumps(entry) + "\n").encode())
            except OSError as exc:
                self.journal_errors += 1
                if not self._journal_failing:
                    log.error("journal: cannot write (%s); carrying on without it, counting lost lines", exc)
                self._journal_failing = True
            else:
                if self._journal_failing:
                    log.warning("journal: writable again after %d lost line(s)", self.journal_errors)
                self._journal_failing = False

    def _name(self, ip: IPAddress) -> str:
        name = self._names.get(ip)
        if name is None:
            name = self._names[ip] = str(ip)
        return name

    # Addresses
    async def claim(self, ip: IPAddress, interface: str, lifetime: int) -> None:
        now = time.monotonic()
        self.addresses[(ip, interface)] = now + lifetime
        self._record("claim", ip=str(ip), interface=interface, lifetime=lifetime)

    async def refresh(self, addresses: Sequence[tuple[IPAddress, str]], lifetime: int) -> None:
        now = time.monotonic()
        for key in addresses:
            self.addresses[key] = now + lifetime
        self._record("refresh", ips=[self._name(ip) for ip, _ in addresses], lifetime=lifetime)

    async def release(self, ip: IPAddress, interface: str) -> None:
        self.addresses.pop((ip, interface), None)
        self._record("release", ip=str(ip), interface=interface)

    async def owned(self) -> set[tuple[IPAddress, str]]:
        now = time.monotonic()
        return {key for key, expires in self.addresses.items() if expires > now}

    async def flush_all(self) -> set[tuple[IPAddress, str]]:
        removed = set(self.addresses)
        for ip, interface in removed:
            await self.release(ip, interface)
        return removed

    async def has_interface(self, interface: str) -> bool:
        return True

    async def interface_addresses(self, interface: str) -> list[OnLink]:
        return list(self.on_link.get(interface, ()))

    # Snat
    async def stage(self, groups: Sequence[EgressGroup]) -> None:
        self.staged = tuple(g.name for g in groups)
        self.staged_groups = tuple(groups)
        self._record("stage", groups=list(self.staged))

    async def activate(self, ip: IPAddress, group: str) -> None:
        self.primed.pop(ip, None)
        self.snat[ip] = group
        self._record("snat-on", ip=str(ip), group=group)

    async def prime(self, ip: IPAddress, group: str) -> bool:
        if ip in self.snat:
            return False
        self.primed[ip] = group
        self._record("snat-prime", ip=str(ip), group=group)
        return True

    async def deactivate(self, ip: IPAddress) -> None:
        self.snat.pop(ip, None)
        self.primed.pop(ip, None)
        self._record("snat-off", ip=str(ip))

    async def deactivate_all(self, ips: Iterable[IPAddress]) -> None:
        ips = list(ips)
        self._record("snat-off-together", ips=[str(ip) for ip in ips])
        for ip in ips:
            await self.deactivate(ip)

    async def active(self) -> set[IPAddress]:
        return set(self.snat) | set(self.primed)

    async def refresh_fence(self, ips: Iterable[IPAddress], ttl: float | None = None) -> None:
        names = sorted(self._name(ip) for ip in ips)
        if ttl is None:
            self._record("fence", ips=names)
        else:
            self._record("fence", ips=names, ttl=round(ttl, 6))

    async def fence(self) -> dict[IPAddress, float]:
        return dict(self.fenced)

    async def clear(self) -> None:
        self.snat.clear()
        self._record("snat-clear")

    # Announcer
    async def prepare(self, interface: str) -> None:
        self._record("prepare", interface=interface)

    async def start(self, ip: IPAddress, interface: str) -> None:
        self.announcing.add(ip)
        self._record("announce", ip=str(ip), interface=interface)

    async def stop(self, ip: IPAddress) -> None:
        self.announcing.discard(ip)
        self._record("announce-stop", ip=str(ip))

    # Steering
    async def route(self, group: EgressGroup, ip: IPAddress, via: IPAddress | None) -> None:
        self.steering[ip] = via
        self._record(
            "steer",
            group=group.name,
            ip=str(ip),
            via=str(via) if via else None,
            sources=[str(cidr) for cidr in group.source_cidrs],
        )

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None
