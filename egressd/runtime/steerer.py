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

A gateway that starts serving tells the steering nodes that listen to it over
the mesh (:mod:`egressd.core.news`): news of a claim newer than the one the
view shows steers to the sender at once, until the view shows that claim or a
newer one.

Steering stays in place when the daemon stops: a restart must not interrupt
traffic, and the restarted daemon converges from what it finds. ``egressd
cleanup`` (the systemd unit's stop path) removes it for good.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
from collections.abc import Sequence

from egressd.core.errors import DataPlaneError
from egressd.core.lease import LeaseRecord, lease_name
from egressd.core.model import EgressGroup, IPAddress
from egressd.core.news import Hint, NewsVerdict, judge_news, steer_to
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
    """Steers the groups it is given (those whose sources live on this node and
    for which it is not a gateway candidate); :meth:`set_groups` replaces them
    (Kubernetes mode: pods come and go, policies change)."""

    def __init__(
        self, groups: Sequence[EgressGroup], view: LeaseView, steering: Steering, *, retry: float = 1.0
    ) -> None:
        self.groups: tuple[EgressGroup, ...] = tuple(groups)
        self._view = view
        self._steering = steering
        self._retry = retry
        self._wake = view.listener()
        self.current: dict[IPAddress, IPAddress | None] = {}
        """Egress IP -> the owner address it is steered to now (None: not steered)."""
        self._routed: dict[IPAddress, EgressGroup] = {}
        """Egress IP -> the group as it was when its steering was last written."""
        self._inflight: dict[IPAddress, asyncio.Task[bool]] = {}
        """Egress IP -> its steering change under way."""
        self._not_before: dict[IPAddress, float] = {}
        """Egress IP -> loop time before which a failed change is not tried again."""
        self.hints: dict[IPAddress, Hint] = {}
        """Egress IP -> the new owner heard over the mesh, ahead of the claim."""

    @staticmethod
    def for_node(groups: Sequence[EgressGroup], node: str) -> tuple[EgressGroup, ...]:
        """The groups ``node`` steers when nothing narrower is known: those it is no candidate of."""
        return tuple(g for g in groups if node not in g.candidates)

    def set_groups(self, groups: Sequence[EgressGroup]) -> None:
        """Steer these groups from now on; the loop converges at once."""
        self.groups = tuple(groups)
        self._wake.set()

    def listens_to(self) -> frozenset[str]:
        """The candidates of the groups we steer: we listen to their news."""
        return frozenset(c for g in self.groups for c in g.candidates)

    def hear(self, ip: str, epoch: int, sender: str, address: str) -> NewsVerdict:
        """News that ``sender`` serves ``ip`` on its claim at ``epoch``, from
        ``address`` (:func:`egressd.core.news.judge_news`); taken, the IP is
        steered to ``address`` at once."""
        try:
            egress_ip, via = ipaddress.ip_address(ip), ipaddress.ip_address(address)
        except ValueError:
            return NewsVerdict(False, "not-steered", f"{ip} from {address}")
        group = next((g for g in self.groups if egress_ip in g.egress_ips), None)
        verdict = judge_news(
            ip,
            epoch,
            sender,
            candidates=group.candidates if group is not None else None,
            known=self._view.get(lease_name(ip)).record,
            held=self.hints.get(egress_ip),
        )
        if verdict.taken:
            self.hints[egress_ip] = Hint(sender, epoch, via)
            log.info("ip=%s node=%s epoch=%d serves it (news over the mesh): steering to %s", ip, sender, epoch, via)
            self._wake.set()
        return verdict

    async def run(self) -> None:
        await self._view.ready.wait()
        while True:
            self._wake.clear()
            self._start()
            await wait_event(self._wake, None)

    async def converge(self) -> bool:
        """Bring every IP's steering to its current owner and group, and wait
        for it; returns whether something failed."""
        self._start(retry_now=True)
        results = await asyncio.gather(*(task for task in self._inflight.values()))
        return not all(results)

    def _start(self, *, retry_now: bool = False) -> None:
        """Start the steering changes that are due, each IP on its own: an IP
        whose owner changed does not wait for another IP's change to end (the
        release of one gateway's IPs arrives as one claim after the other).
        An IP already being changed is looked at again when that change ends;
        one that failed, after ``retry``."""
        now = asyncio.get_running_loop().time()
        wanted = {ip: g for g in self.groups for ip in g.egress_ips}
        due: dict[IPAddress, tuple[EgressGroup, IPAddress | None, bool]] = {}
        for ip in [ip for ip in self._routed if ip not in wanted]:
            due[ip] = (self._routed[ip], None, True)
        for ip in [ip for ip in self.hints if ip not in wanted]:
            del self.hints[ip]
        for ip, group in wanted.items():
            record = self._view.get(lease_name(str(ip))).record
            hint = steer_to(record, self.hints.get(ip))
            if hint is None:
                self.hints.pop(ip, None)  # the claim caught up (or is newer): it decides
            via = hint.address if hint is not None else owner_address(record)
            if hint is None and record is not None and record.free and self.current.get(ip) is not None:
                via = self.current[ip]  # between owners: keep the last route (see the module doc)
            if ip in self.current and self.current[ip] == via and self._routed.get(ip) == group:
                continue
            due[ip] = (group, via, False)
        for ip, (group, via, removal) in due.items():
            if ip in self._inflight or (not retry_now and self._not_before.get(ip, 0.0) > now):
                continue
            step = self._remove(ip, group) if removal else self._route(ip, group, via)
            task = asyncio.get_running_loop().create_task(step, name=f"steer:{ip}")
            self._inflight[ip] = task
            task.add_done_callback(functools.partial(self._ended, ip))

    def _ended(self, ip: IPAddress, task: asyncio.Task[bool]) -> None:
        """One IP's change ended: look again at once, or after ``retry`` if it failed."""
        self._inflight.pop(ip, None)
        ok = not task.cancelled() and task.exception() is None and task.result()
        if ok:
            self._not_before.pop(ip, None)
            self._wake.set()
            return
        loop = asyncio.get_running_loop()
        self._not_before[ip] = loop.time() + self._retry
        loop.call_later(self._retry, self._wake.set)

    async def _remove(self, ip: IPAddress, group: EgressGroup) -> bool:
        try:
            await self._steering.route(group, ip, None)
        except DataPlaneError as exc:
            log.error("removing steering group=%s ip=%s failed: %s", group.name, ip, exc)
            return False
        log.info("steering group=%s ip=%s removed (no longer steered here)", group.name, ip)
        self._routed.pop(ip, None)
        self.current.pop(ip, None)
        return True

    async def _route(self, ip: IPAddress, group: EgressGroup, via: IPAddress | None) -> bool:
        """Steer one IP; whether that worked (a failure is logged, the loop retries)."""
        try:
            await self._steering.route(group, ip, via)
        except DataPlaneError as exc:
            log.error("steering group=%s ip=%s via=%s failed: %s", group.name, ip, via, exc)
            return False
        if self.current.get(ip) != via or ip not in self.current:
            log.info("steering group=%s ip=%s via=%s (was %s)", group.name, ip, via or "-", self.current.get(ip, "-"))
        else:
            log.debug("steering group=%s ip=%s: sources or destinations updated", group.name, ip)
        self.current[ip] = via
        self._routed[ip] = group
        return True
