"""The steering role: on nodes whose sources use an egress IP, route the
group's traffic to the node that owns the IP now.

The owner is read from the lease (holder and its ``egressd.io/holder-address``
annotation), as the watch reports it, so steering follows a takeover within
milliseconds of the lease write.

A lease that is *free* (released in a handoff or on shutdown) keeps the route
to the last owner until the next owner writes the lease: that gateway no
longer NATs the traffic and drops it (it fails closed), where removing the
route would send selected traffic out with the pods' own addresses for those
milliseconds. A lease that is absent or unreadable removes the steering.

Steering stays in place when the daemon stops: a restart must not interrupt
traffic, and the restarted daemon converges from what it finds. ``egressd
cleanup`` (the systemd unit's stop path) removes it for good.
"""

from __future__ import annotations

import ipaddress
import logging

from egressd.core.errors import DataPlaneError
from egressd.core.lease import LeaseRecord, lease_name
from egressd.core.settings import EgressGroup, IPAddress, Settings
from egressd.ports import Steering
from egressd.runtime.supervisor import wait_event
from egressd.runtime.view import LeaseView

log = logging.getLogger(__name__)


def owner_address(record: LeaseRecord | None) -> IPAddress | None:
    """The address to steer to, or None when nobody (readable) holds the lease."""
    if record is None or record.free or not record.holder_address:
        return None
    try:
        return ipaddress.ip_address(record.holder_address)
    except ValueError:
        log.error("lease %s: holder address %r is not an IP; not steering to it", record.name, record.holder_address)
        return None


class Steerer:
    def __init__(self, settings: Settings, view: LeaseView, steering: Steering, *, retry: float = 1.0) -> None:
        self.groups: tuple[EgressGroup, ...] = tuple(
            g for g in settings.groups if settings.node.name not in g.candidates
        )
        self._view = view
        self._steering = steering
        self._retry = retry
        self.current: dict[IPAddress, IPAddress | None] = {}

    async def run(self) -> None:
        await self._view.ready.wait()
        while True:
            self._view.any_news.clear()
            failed = await self.converge()
            await wait_event(self._view.any_news, self._retry if failed else None)

    async def converge(self) -> bool:
        """Bring every IP's steering to its current owner; returns whether something failed."""
        failed = False
        for group in self.groups:
            for ip in group.egress_ips:
                record = self._view.get(lease_name(str(ip))).record
                if record is not None and record.free and self.current.get(ip) is not None:
                    continue  # between owners: keep the last route (see the module doc)
                via = owner_address(record)
                if ip in self.current and self.current[ip] == via:
                    continue
                try:
                    await self._steering.route(group, ip, via)
                except DataPlaneError as exc:
                    log.error("steering group=%s ip=%s via=%s failed: %s", group.name, ip, via, exc)
                    failed = True
                    continue
                log.info(
                    "steering group=%s ip=%s via=%s (was %s)", group.name, ip, via or "-", self.current.get(ip, "-")
                )
                self.current[ip] = via
        return failed

    async def withdraw(self) -> None:
        """Remove the steering of every IP (shutdown)."""
        for group in self.groups:
            for ip in group.egress_ips:
                try:
                    await self._steering.route(group, ip, None)
                except DataPlaneError as exc:
                    log.error("removing steering group=%s ip=%s failed: %s", group.name, ip, exc)
        self.current.clear()
