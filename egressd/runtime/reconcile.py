"""The kernel and the API made to agree with the members: the start-up
reconcile, drift repair, and the retirement of claims no group lists.

* Start-up (:func:`reconcile_at_start`): an egress IP present on this node
  whose lease names this node is kept (a crash with a quick restart must not
  interrupt traffic) and its member adopts the tenure; everything else
  egressd finds is withdrawn. If the leases cannot be read in time, nothing
  can prove ownership, so everything is withdrawn.
* Drift repair (:func:`repair_drift`, every ``repair_interval``): someone
  flushing the ruleset or deleting an address must not leave an owner that
  cannot serve, nor a non-owner that still does.
* Retirement (:class:`ClaimRetirement`): the claims of IPs that no group
  lists any more are deleted where :func:`~egressd.core.election.retire`
  says so. A delete the API refuses (Forbidden, unavailable) is tried again
  after :data:`~egressd.core.backoff.WATCH_BACKOFF`, not on the next lease
  news: the other claims' renewals are news every retry period, and a claim
  that cannot be deleted must not turn them into a request and a warning
  each.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence

from egressd.core.backoff import WATCH_BACKOFF, Streak
from egressd.core.election import Action, Me, retire
from egressd.core.errors import ApiError, DataPlaneError, LostRace
from egressd.core.lease import LeaseRecord, lease_name
from egressd.core.model import EgressGroup, IPAddress, Timing
from egressd.core.states import State
from egressd.ports import Clock, LeaseStore
from egressd.runtime.member import DataPlane, Member
from egressd.runtime.supervisor import wait_event
from egressd.runtime.view import LeaseView

log = logging.getLogger(__name__)


async def reconcile_at_start(
    view: LeaseView, dataplane: DataPlane, node: str, groups: Sequence[EgressGroup], timing: Timing
) -> set[IPAddress]:
    """Withdraw what this node serves but does not hold; return what it may
    adopt (``groups``: those this node is a candidate of)."""
    leases_known = await wait_event(view.ready, timing.renew_deadline)
    if not leases_known:
        log.warning("reconcile: leases not readable within renewDeadline; withdrawing everything found")
    try:
        present = await dataplane.addresses.owned()
        snat_active = await dataplane.snat.active()
    except DataPlaneError as exc:
        log.error("reconcile: cannot read the kernel state: %s", exc)
        return set()
    mine = {str(ip) for g in groups for ip in g.egress_ips}
    keep: set[IPAddress] = set()
    # An egress IP still has kernel state here (its address, or its SNAT rule,
    # which has no lifetime) only because a previous process of this node
    # served it: a second daemon with our name elsewhere cannot put it here.
    for ip in {ip for ip, _ in present} | snat_active:
        record = view.get(lease_name(str(ip))).record if leases_known else None
        if str(ip) in mine and record is not None and record.holder == node:
            keep.add(ip)
    for ip, interface in present:
        if ip not in keep:
            log.info("reconcile: removing egress IP %s from %s (this node does not hold its lease)", ip, interface)
            await _quietly(dataplane.announcer.stop(ip))
            await _quietly(dataplane.snat.deactivate(ip))
            await _quietly(dataplane.addresses.release(ip, interface))
    for ip in snat_active - keep:
        log.info("reconcile: removing SNAT to %s (not held)", ip)
        await _quietly(dataplane.snat.deactivate(ip))
    for ip in keep:
        log.info("reconcile: keeping egress IP %s (lease names this node); adopting it", ip)
    return keep


async def _quietly(op: Awaitable[None]) -> None:
    try:
        await op
    except DataPlaneError as exc:
        log.error("reconcile: %s", exc)


async def repair_drift(
    dataplane: DataPlane,
    members: Mapping[IPAddress, Member],
    groups: Sequence[EgressGroup],
    right: Callable[[], bool] | None = None,
) -> list[str]:
    """One pass of drift repair: compare the kernel with the members and mend
    (``groups``: those this node is a candidate of, to stage SNAT again).
    ``right``: whether this node's serving right runs now (the members'
    liveness, which they all share): read once per look at the members
    instead of once per member (None: each member's ``serving``)."""
    dp = dataplane
    present = {ip for ip, _ in await dp.addresses.owned()}
    active = await dp.snat.active()
    serving = _serving(members, right)
    # a member whose lock is held is changing its kernel state now (a takeover
    # waiting for its activation): its SNAT missing is no sign of a lost table,
    # and staging the table again (seconds of nftables work at 1,000 IPs) would
    # hold back every activation and fence re-arm queued behind it
    serving_without_snat = [ip for ip in serving if ip not in active and not members[ip].dp_lock.locked()]
    if serving_without_snat:
        log.warning("drift: SNAT of %s missing; staging the table again", ", ".join(map(str, serving_without_snat)))
        await dp.snat.stage(groups)
    repaired: list[str] = []
    for ip, member in members.items():
        # what member.reconcile would find to mend, looked at without its lock:
        # at rest nothing, and a thousand members need not queue for their locks
        # every pass to say so. A member whose lock is held is changing its
        # kernel state now (a takeover waiting for its transactions): mended
        # after it with what was read before it, it would be set up twice
        # (hundreds of "drift repaired" at start-up); the next pass looks at it
        shown = ip in present, ip in active
        if (shown == (True, True) and ip in serving) or (shown == (False, False) and ip not in serving):
            continue
        if member.dp_lock.locked():
            continue
        # reconcile decides under the member's lock with what it is then; the
        # right may have moved during its awaits: the look after it reads it again
        repaired += [f"{ip}:{what}" for what in await member.reconcile(present, active)]
        serving = _serving(members, right)
    for ip in present - set(members):
        log.warning("drift: removing egress IP %s that this node has no member for", ip)
        for address, interface in await dp.addresses.owned():
            if address == ip:
                await dp.addresses.release(address, interface)
        repaired.append(f"{ip}:foreign-address")
    return repaired


def _serving(members: Mapping[IPAddress, Member], right: Callable[[], bool] | None) -> set[IPAddress]:
    """The IPs whose member serves now (``Member.serving``)."""
    if right is None:
        return {ip for ip, m in members.items() if m.serving}
    if not right():
        return set()
    owner = State.OWNER
    return {ip for ip, m in members.items() if m.sm.state is owner}


async def repair_forever(interval: float, repair: Callable[[], Awaitable[list[str]]]) -> None:
    """``repair()`` every ``interval`` seconds; a pass the kernel refuses is logged."""
    while True:
        await asyncio.sleep(interval)
        try:
            await repair()
        except DataPlaneError as exc:
            log.error("drift repair failed: %s", exc)


class ClaimRetirement:
    """The claims to delete: IPs that no group lists any more.

    ``listed`` gives the egress IPs the groups list now, ``held`` the lease
    names this node has members for; either puts a claim back out of reach."""

    def __init__(
        self,
        *,
        view: LeaseView,
        store: LeaseStore,
        clock: Clock,
        timing: Timing,
        node: str,
        incarnation: str,
        listed: Callable[[], set[str]],
        held: Callable[[], set[str]],
        draw: Callable[[], float] = random.random,
        started_at: Callable[[], float] | None = None,
    ) -> None:
        self._view = view
        self._store = store
        self._clock = clock
        self._timing = timing
        self._node = node
        self._incarnation = incarnation
        self._listed = listed
        self._held = held
        self._started_at = started_at
        """When this process started (our previous process's claims are timed from it)."""
        self.retiring: dict[str, str] = {}
        """Claims to delete (lease name -> egress IP)."""
        self.news = view.listener()
        """Set by lease news and by :meth:`add`: wakes :meth:`run`."""
        self._said: dict[str, str] = {}
        self._draw = draw
        self._refused: dict[str, tuple[Streak, float]] = {}
        """Lease name -> the failures in a row of its delete, and the monotonic
        time before which it is not tried again."""

    def add(self, name: str, ip: str) -> None:
        self.retiring[name] = ip
        self.news.set()

    async def run(self) -> None:
        while True:
            self.news.clear()
            await wait_event(self.news, await self.retire_claims())

    async def retire_claims(self) -> float | None:
        """Delete the claims of IPs that no group lists any more, where
        :func:`~egressd.core.election.retire` says so (each delete is
        conditional on the resourceVersion it decided on). Returns when to
        look again without news (None: on news only)."""
        listed = self._listed()
        serving = self._held()
        me = self._node
        recheck: float | None = None
        for name, ip in sorted(self.retiring.items()):
            entry = self._view.get(name)
            if ip in listed or name in serving:
                del self.retiring[name]  # listed again
                self._refused.pop(name, None)
                continue
            if entry.problem:
                continue  # never act on a claim we cannot read
            now = self._clock.monotonic()
            refused = self._refused.get(name)
            if refused is not None and now < refused[1]:
                # a delete failed: wait out its backoff whatever news arrives
                wake = refused[1] - now
                recheck = wake if recheck is None else min(recheck, wake)
                continue
            decision = retire(
                entry.record,
                self._view.observation(entry),
                now,
                Me(
                    identity=me,
                    incarnation=self._incarnation,
                    egress_ip=ip,
                    candidates=(),
                    started_at=self._started_at() if self._started_at is not None else 0.0,
                ),
                self._timing,
            )
            if self._said.get(name) != decision.reason:
                self._said[name] = decision.reason
                log.info(
                    "ip=%s node=%s claim of an IP no longer configured: %s %s %s",
                    ip,
                    me,
                    decision.action.value,
                    decision.reason,
                    decision.detail,
                )
            if decision.action is Action.DELETE and entry.record is not None:
                retry = await self._delete_claim(name, ip, entry.record)
                if retry is not None:
                    recheck = retry if recheck is None else min(recheck, retry)
            elif decision.reason == "already-gone":
                del self.retiring[name]
                self._refused.pop(name, None)
            elif decision.recheck is not None:
                recheck = decision.recheck if recheck is None else min(recheck, decision.recheck)
        if not self.retiring:
            self._said.clear()
            self._refused.clear()
        return recheck

    async def _delete_claim(self, name: str, ip: str, record: LeaseRecord) -> float | None:
        """Delete one claim; after a failure, the seconds until it may be tried again."""
        me = self._node
        try:
            existed = await self._store.delete(record, deadline=self._clock.monotonic() + self._timing.renew_deadline)
        except LostRace as exc:
            # written since we decided (an acquire by a daemon that still lists the IP,
            # or a renew): kept; decided again on the news of that write
            log.info("ip=%s node=%s claim not deleted, it changed meanwhile: %s", ip, me, exc)
            self._refused.pop(name, None)
            return None
        except ApiError as exc:
            streak = self._refused[name][0] if name in self._refused else Streak(WATCH_BACKOFF, self._draw)
            step = streak.failed(type(exc).__name__, retry_after=getattr(exc, "retry_after", None))
            self._refused[name] = (streak, self._clock.monotonic() + step.delay)
            log.log(
                logging.WARNING if step.report else logging.DEBUG,
                "ip=%s node=%s could not delete the claim (%d in a row): %s; trying again in %.1fs",
                ip,
                me,
                step.failures,
                exc,
                step.delay,
            )
            return step.delay
        del self.retiring[name]
        self._refused.pop(name, None)
        if existed:
            log.info("ip=%s node=%s deleted the claim %s (resourceVersion %s)", ip, me, name, record.resource_version)
        else:
            log.info("ip=%s node=%s claim %s was already deleted", ip, me, name)
        return None
