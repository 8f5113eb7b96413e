"""One member loop per egress IP: observe, decide, apply.

The loop is woken by watch news about its lease or by the recheck time of the
last decision, asks :func:`egressd.core.election.decide` what to do, and does
it through the ports. Order matters and is fixed here:

* takeover: lease written → address claimed (with lifetime) → SNAT on → first GARP;
* withdraw: GARP stopped → address removed → SNAT off, and only then any API
  write (release). A member never serves before its write succeeded, and never
  writes a release while still serving. SNAT goes last because traffic stops
  with it: in a handoff the outage then starts as late as it can, right
  before the release is sent.

The claim is written on acquire, handoff, release and adoption only, never
renewed: the right to serve comes from this node's lease
(:class:`egressd.runtime.liveness.NodeLiveness`), renewed once per retry
period for all IPs. The daemon fence is the liveness's task: it steps every
owner down when that right lapses, whatever the loops are waiting for, so a
hung API call can never keep an IP served; the kernel fences are re-armed
after each renew for all owned IPs at once (by the daemon).

Every way out of OWNER (renew deadline, lost lease, failed takeover, handoff,
identity clash, shutdown) goes through :meth:`Member._leave`, which keeps that
order and records the reason in the state machine, metrics, events and log.

A release naming a successor is followed at once by a wake over the mesh
(``wake``, the daemon's): the successor's member, woken (:meth:`Member.woken`),
reads its claim at once beside its loop instead of waiting for the watch to
bring the release, and then decides and writes as it would on the watch's news.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from egressd.core import transfer
from egressd.core.backoff import Repeats
from egressd.core.election import (
    WAITS_ON_HOLDER,
    Action,
    Decision,
    Me,
    api_right,
    decide,
    hold_off,
    next_look,
    spread_rank,
)
from egressd.core.errors import ApiError, ApiTimeout, ConfigError, DataPlaneError, LostRace, MalformedLease
from egressd.core.lease import LeaseRecord, held_by, lease_name
from egressd.core.mesh_messages import Accept, Offer, Wake
from egressd.core.model import EgressGroup, IPAddress, Settings
from egressd.core.node_lease import node_lease_name
from egressd.core.ownership_events import OwnershipEvent
from egressd.core.states import Event, State, StateMachine
from egressd.ports import Addresses, Announcer, Clock, EventSink, LeaseStore, Metrics, Snat
from egressd.runtime.conntrack import Replication
from egressd.runtime.lapses import HolderLapses
from egressd.runtime.liveness import NodeLiveness
from egressd.runtime.supervisor import wait_event
from egressd.runtime.view import LeaseView

log = logging.getLogger(__name__)

Offered = tuple["asyncio.Future[Accept]", float]
"""An offer of the claim on its way: the accept awaited, and when the offer left."""


class ContextLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefixes every message with the IP, node and epoch it concerns."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        ctx = self.extra or {}
        kwargs.setdefault("extra", {}).update(ctx)
        return f"ip={ctx.get('egress_ip')} node={ctx.get('node')} epoch={ctx.get('epoch')} {msg}", kwargs


@dataclass
class DataPlane:
    addresses: Addresses
    snat: Snat
    announcer: Announcer


class Member:
    _priming: asyncio.Task[None] | None = None
    """SNAT primed ahead of a transfer we accepted (:meth:`_prime`)."""
    _parked_on: str | None = None
    """The holder node whose timer wakes this standby (:meth:`_park`)."""
    _primed_until: float | None = None
    """While set: our SNAT rule is primed, its fence not armed, until then at
    the latest (drift repair leaves it alone)."""

    def __init__(
        self,
        ip: IPAddress,
        group: EgressGroup,
        settings: Settings,
        *,
        store: LeaseStore,
        view: LeaseView,
        dataplane: DataPlane,
        clock: Clock,
        liveness: NodeLiveness,
        events: EventSink,
        metrics: Metrics,
        serving_locally: bool = False,
        wake: Callable[[LeaseRecord, str], None] | None = None,
        offer: Callable[[str, int, str], asyncio.Future[Accept] | None] | None = None,
        connections: Replication | None = None,
        announce: Callable[[str, int], None] | None = None,
        lapses: HolderLapses | None = None,
    ) -> None:
        problems = settings.timing.check()
        if problems:
            # as the daemon: a member never runs on timings that break the safety argument
            raise ConfigError(problems, "timing")
        self.ip = ip
        self.group = group
        self.name = lease_name(str(ip))
        self._settings = settings
        self._timing = settings.timing
        self._store = store
        self._view = view
        self._dp = dataplane
        self._clock = clock
        self._liveness = liveness
        self._incarnation = liveness.incarnation
        self._events = events
        self._metrics = metrics
        self.sm = StateMachine()
        self._preference: tuple[tuple[Any, Any], list[str]] | None = None
        self.epoch = 0
        self.serving_locally = serving_locally
        self.last_decision: Decision | None = None
        self.last_transition = ""
        self.first_step = asyncio.Event()
        """Set after the first decision and its action."""
        self._dp_lock = asyncio.Lock()
        self._hold_off_until: float | None = None
        self._hold_off_reason = ""
        self._takeover_failures = 0
        """Takeovers in a row whose data plane failed (the hold-off grows with it)."""
        self._write_failures = Repeats()
        """Lease writes failed in a row: a fault that lasts logs a handful of lines, not one per try."""
        self._read_failures = Repeats()
        self._stopping = False
        self._sent = 0.0
        """Monotonic send time of the last successful lease write."""
        self._write_unsure = False
        """A write naming us was sent and its answer never came (cancelled,
        timed out): it may have landed, so a release must read the lease back."""
        self._wake = wake or (lambda _released, _successor: None)
        """Wakes the successor of a release (the mesh's; nothing without it)."""
        self._offer = offer or (lambda _ip, _epoch, _successor: None)
        """Offers the claim to a successor before leaving (the mesh's; nothing
        without it): see :mod:`egressd.core.transfer`."""
        # tells the steering nodes that we serve the IP now (the mesh's news)
        self._announce = announce or (lambda _ip, _epoch: None)
        self._accepted: transfer.Accepted | None = None
        """The transfer of our claim we accepted last (as a successor)."""
        self._wake_read: asyncio.Task[None] | None = None
        """The read of the claim a wake asked for, beside the loop (see :meth:`woken`)."""
        # the holders' timers (the daemon's): a standby waiting for its holder
        # to lapse parks there instead of timing the holder itself (None: it does)
        self._lapses = lapses
        self._connections = connections
        """The conntrack stream: entries installed before the first GARP of a
        takeover, a final batch before a release; None: not replicated."""
        self.log = ContextLog(log, {"egress_ip": str(ip), "node": settings.node.name, "epoch": 0})

    # --- the loop ------------------------------------------------------------------

    @property
    def last_renew(self) -> float | None:
        """While we hold the IP: the send time of the node lease's last
        successful renew (the serving right's source); None otherwise."""
        return self._liveness.last_renew_sent if self.sm.state is State.OWNER else None

    def _me(self) -> Me:
        me = self._settings.node.name
        last_renew = self.last_renew
        holder = self._view.get(self.name).record
        holder_name = holder.holder if holder is not None else None
        in_peer_set = True
        if holder_name is not None and holder_name != me:
            entry = self._view.node(holder_name)
            if entry is not None and entry.record is not None:  # none: an earlier version, no mesh
                in_peer_set = me in entry.record.peers
        return Me(
            identity=me,
            incarnation=self._incarnation,
            egress_ip=str(self.ip),
            candidates=self.group.candidates,
            last_renew=last_renew,
            node_renew=self._liveness.last_renew_sent,
            started_at=self._liveness.started_at,
            serving_locally=self.serving_locally,
            preference=tuple(self.preference()),
            hold_off_until=self._hold_off_until,
            hold_off_reason=self._hold_off_reason,
            serving_until=self._liveness.right().until if last_renew is not None else None,
            mesh=self._liveness.mesh,
            promised_until=self._liveness.promised_until(holder_name) if holder_name else None,
            in_holder_peer_set=in_peer_set,
            accepted=self._accepted,
        )

    def preference(self) -> list[str]:
        """The candidates of this IP, most preferred first (spread over the group's IPs).

        Kept until the group's IPs or candidates change: it costs a hash per
        IP of the group, and a thousand members deciding four times a second
        would otherwise spend the daemon's CPU on it."""
        key = (self.group.egress_ips, self.group.candidates)
        if self._preference is None or self._preference[0] != key:
            ranking = spread_rank(str(self.ip), [str(ip) for ip in self.group.egress_ips], self.group.candidates)
            self._preference = (key, ranking)
        return list(self._preference[1])

    async def run(self) -> None:
        """Decide and act until stopped (cancellation)."""
        await self._view.ready.wait()
        news = self._view.news(self.name)
        try:
            while not self._stopping:
                news.clear()
                wait = await self.step()
                self.first_step.set()
                await wait_event(news, max(0.0, wait))
        finally:
            self._unpark()

    def wake(self) -> None:
        """Make the loop decide again now: the daemon left OWNER for it (the
        fence, a clash), and an owner's loop waits for news only, or long."""
        self._view.news(self.name).set()

    async def step(self) -> float:
        """One decision and its action; returns how long to wait for news at most."""
        self._unpark()
        entry = self._view.get(self.name)
        now = self._clock.monotonic()
        if self.sm.state is State.FENCED and (self._hold_off_until is None or now >= self._hold_off_until):
            self._fire(Event.HOLD_OFF_OVER, "hold-off-over")
        if entry.problem:
            # Never act on a claim we cannot read. An owner withdraws: it can no
            # longer show its tenure, and nobody takes over an unreadable claim.
            if self.sm.state is State.OWNER:
                await self.step_down("claim-unreadable", entry.problem)
            return next_look(None, owner=self.sm.state is State.OWNER, timing=self._timing)
        observation = self._view.observation(entry, self._liveness.stamped_by)
        decision = decide(entry.record, observation, now, self._me(), self._timing)
        self._note(decision)
        if (
            self.serving_locally
            and decision.action not in (Action.ACQUIRE, Action.ASSUME)
            and decision.reason not in ("no-node-lease-right", "hold-off")
        ):
            # waiting for our node lease's first renew is no reason to give up
            # what the kernel serves: the kernel fence ends it if nobody adopts
            await self._withdraw(f"not-adopted:{decision.reason}")
            self.serving_locally = False
        action = decision.action
        if action is Action.ACQUIRE:
            await self._acquire(entry.record, decision)
        elif action is Action.ASSUME:
            await self._assume(entry.record, decision)
        elif action is Action.STEP_DOWN:
            await self.step_down(decision.reason, decision.detail)
        elif action is Action.HANDOFF:
            await self._handoff(entry.record, decision)
        elif action is Action.FENCE:
            await self._fence_clash(decision)
        owner = self.sm.state is State.OWNER
        parked = not owner and self._park(entry.record, decision)
        return next_look(decision, owner=owner, timing=self._timing, parked=parked)

    def _park(self, record: LeaseRecord | None, decision: Decision) -> bool:
        """A standby waiting for the holder of ``record`` to lapse: park on
        the holder's timer (:mod:`egressd.runtime.lapses`), which wakes this
        loop when the holder may have lapsed; whether it did."""
        if (
            self._lapses is None
            or decision.action is not Action.STANDBY
            or decision.reason not in WAITS_ON_HOLDER
            or record is None
            or not record.holder
        ):
            return False
        if not self._lapses.park(record.holder, self.name, self.wake):
            return False
        self._parked_on = record.holder
        return True

    def _unpark(self) -> None:
        if self._parked_on is not None and self._lapses is not None:
            self._lapses.unpark(self._parked_on, self.name)
        self._parked_on = None

    def woken(self, wake: Wake) -> None:
        """The old owner says it released or transferred this IP's claim to
        us. The wake of the transfer we accepted stands for that write
        (:func:`egressd.core.transfer.confirmed_by`): the transfer is put in
        the view, provisional, and decided on at once. Any other wake makes
        us read the claim now, beside the loop, which goes on waiting for
        news: whichever brings the release first, the read or the watch,
        wakes it (a read never holds back news the watch has brought); what
        is read is decided on as the watch's news would be."""
        if self.sm.state is State.OWNER or self._stopping:
            return
        known = self._view.get(self.name).record
        address = self._settings.node.address
        if transfer.confirmed_by(self._accepted, wake, known) and known is not None and address is not None:
            # the owner's word that it wrote the transfer we accepted: decide on
            # it now, as on the claim read back (the watch's copy replaces it)
            self.log.info(
                "woken by %s: transferred to us at epoch %d (version %s)",
                wake.sender,
                wake.epoch,
                wake.resource_version,
            )
            record = transfer.transferred(
                known,
                wake,
                me=self._settings.node.name,
                address=str(address),
                incarnation=self._incarnation,
                lease_duration=self._timing.lease_duration,
                now=self._clock.wall(),
            )
            self._view.observe(self.name, record, provisional=True)
            return
        if self._wake_read is not None and not self._wake_read.done():
            return  # a read is on its way; it sees this release too
        self._wake_read = asyncio.get_running_loop().create_task(self._read_on_wake(wake), name=f"wake-read:{self.ip}")
        self._wake_read.add_done_callback(self._wake_read_done)

    async def _read_on_wake(self, wake: Wake) -> None:
        if self._view.get(self.name).resource_version == wake.resource_version:
            return  # the watch brought the release meanwhile
        self.log.info(
            "woken by %s: released to us at epoch %d (version %s); reading the claim",
            wake.sender,
            wake.epoch,
            wake.resource_version,
        )
        try:
            record = await self._store.get(self.name, deadline=self._clock.monotonic() + self._timing.api_timeout)
        except MalformedLease as exc:
            self._view.observe(self.name, None, problem=str(exc))
            return
        except ApiError as exc:
            self.log.info("could not read the claim a wake announced (the watch will bring it): %s", exc)
            return
        if self.sm.state is State.OWNER:
            return  # taken meanwhile (the watch was first): our write's answer is newer than this read
        self._view.observe(self.name, record)

    def offered(self, offer: Offer) -> transfer.OfferVerdict:
        """The owner offers us its claim (:mod:`egressd.core.transfer`):
        accept if we could take it now by a write of our own, and record it;
        the guard is armed at once, ahead of the takeover."""
        now = self._clock.monotonic()
        verdict = transfer.judge_offer(
            offer,
            me=self._settings.node.name,
            candidates=self.group.candidates,
            known=self._view.get(self.name).record,
            standby=self.sm.state is not State.OWNER and not self.serving_locally,
            api_right=bool(api_right(self._liveness.last_renew_sent, now, self._timing)),
            held_off=self._hold_off_until is not None and now < self._hold_off_until,
            stopping=self._stopping,
        )
        if verdict.accept:
            self._accepted = transfer.accepted(offer, now)
            if self._connections is not None:
                self._connections.arm_ahead(str(self.ip))
            self.log.info("accepted %s's offer of the claim (epoch %d)", offer.sender, offer.epoch)
            if self._priming is None or self._priming.done():
                self._priming = asyncio.create_task(self._prime(self._accepted), name=f"prime:{self.ip}")
        else:
            self.log.info("refused %s's offer of the claim: %s %s", offer.sender, verdict.reason, verdict.detail)
        return verdict

    async def _prime(self, acceptance: transfer.Accepted) -> None:
        """Ahead of the transfer we accepted: our SNAT rule in place, its fence
        not armed, so it fails closed (``Snat.prime``) and serving on the
        transfer only arms the fence. Undone if we do not serve by the end of
        the window in which we may serve on that transfer
        (:func:`egressd.core.transfer.may_assume`). Nothing leaves with the IP
        before the fence is armed, which only serving does, so this is no
        serving: it moves the slow part of SNAT's activation, a ruleset
        transaction, before the old owner's withdrawal instead of after it."""
        until = acceptance.at + self._timing.renew_deadline
        async with self._dp_lock:
            if self.sm.state is State.OWNER or self.serving_locally or self._stopping:
                return
            try:
                primed = await self._dp.snat.prime(self.ip, self.group.name)
            except DataPlaneError as exc:
                self.log.warning("could not prime SNAT ahead of the transfer: %s", exc)
                return
            if not primed:
                return
            self._primed_until = until
        try:
            await self._clock.sleep(max(0.0, until - self._clock.monotonic()))
        finally:
            async with self._dp_lock:
                self._primed_until = None
                if not self._still_owner() and not self.serving_locally:
                    await self._unprime()

    async def _unprime(self) -> None:
        """The transfer we primed SNAT for did not come in time: SNAT off again."""
        try:
            await self._dp.snat.deactivate(self.ip)
        except DataPlaneError as exc:
            self.log.error("could not remove the SNAT primed ahead of a transfer: %s (drift repair will)", exc)
        else:
            self.log.info("SNAT primed ahead of a transfer removed: the transfer did not come in time")

    def _wake_read_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.log.error("the read of the claim a wake announced failed: %r", task.exception())

    def _note(self, decision: Decision) -> None:
        last = self.last_decision
        if last is None or (last.action, last.reason) != (decision.action, decision.reason):
            level = logging.DEBUG if decision.reason == "holding" else logging.INFO
            if decision.reason == "handoff-target-not-candidate":
                level = logging.WARNING
            self.log.log(level, "decision %s (%s) %s", decision.action.value, decision.reason, decision.detail)
        self.last_decision = decision

    # --- actions -------------------------------------------------------------------

    def _deadline(self, started: float) -> float:
        return started + self._timing.renew_deadline

    async def _write_holder(self, base: LeaseRecord | None, reason: str = "") -> LeaseRecord | None:
        """Write ourselves as holder; returns the written record, or None if we
        lost a race or the API failed (the view is refreshed on a lost race)."""
        node = self._settings.node
        record = held_by(
            base,
            name=self.name,
            egress_ip=str(self.ip),
            holder=node.name,
            holder_address=str(node.address) if node.address else None,
            incarnation=self._incarnation,
            lease_duration=self._timing.lease_duration,
            now=self._clock.wall(),
            reason=reason,
        )
        started = self._clock.monotonic()
        self._write_unsure = True  # stays so if this task is cancelled before the answer
        try:
            if base is None:
                written = await self._store.create(record, deadline=self._deadline(started))
            else:
                written = await self._store.update(record, deadline=self._deadline(started))
        except LostRace as exc:
            self._write_unsure = False
            level = logging.INFO if self._write_failures.failed("LostRace") else logging.DEBUG
            failures = self._write_failures.failures
            self.log.log(level, "lost race for the lease (%s, %d in a row); reading it again", exc, failures)
            self._metrics.api_error("LostRace")
            await self._refresh()
            return None
        except ApiError as exc:
            self._write_unsure = isinstance(exc, ApiTimeout)  # a timed-out write may have landed
            level = logging.WARNING if self._write_failures.failed(type(exc).__name__) else logging.DEBUG
            self.log.log(level, "lease write failed (%d in a row): %s", self._write_failures.failures, exc)
            self._metrics.renew(str(self.ip), self._clock.monotonic() - started, ok=False, error=type(exc).__name__)
            self._metrics.api_error(type(exc).__name__)
            return None
        self._write_unsure = False
        ended = self._write_failures.succeeded()
        if ended:
            self.log.info("lease write worked after %d failure(s) in a row", ended)
        self._metrics.renew(str(self.ip), self._clock.monotonic() - started, ok=True)
        self._view.observe(self.name, written, notify=False)
        if self._view.get(self.name).resource_version == written.resource_version:
            # the watch may have delivered our own write before its answer came back:
            # if nothing newer is known, that was no news
            self._view.news(self.name).clear()
        self._sent = started
        self._liveness.api_written(started)
        return written

    async def _refresh(self) -> bool:
        """Read the lease into the view; whether that worked."""
        try:
            record = await self._store.get(self.name, deadline=self._clock.monotonic() + self._timing.api_timeout)
        except MalformedLease as exc:
            self._view.observe(self.name, None, problem=str(exc))
        except ApiError as exc:
            level = logging.WARNING if self._read_failures.failed(type(exc).__name__) else logging.DEBUG
            self.log.log(level, "could not read the lease (%d in a row): %s", self._read_failures.failures, exc)
        else:
            self._read_failures.succeeded()
            self._view.observe(self.name, record)
            return True
        return False

    async def _holder_still_silent(self, base: LeaseRecord | None) -> bool:
        """Before taking a claim from a holder timed by its node lease: read
        that node lease (a quorum read) and check it is still the version we
        timed. A watch that stopped delivering could otherwise show a live
        holder as silent, and the claim's write, not renewed by its holder,
        would not catch it. A renewal the holder sent after our observation
        has landed by now (it answers within renewDeadline, and leaseDuration
        is longer), so the read shows it. Whether to go on with the takeover."""
        if base is None or not base.holder:
            return True
        entry = self._view.node_entry(base.holder)
        if entry is None:
            return True  # timed by the claim itself: the claim's write is a CAS on what we timed
        name = node_lease_name(base.holder)
        try:
            deadline = self._clock.monotonic() + self._timing.api_timeout
            current = await self._store.get_node_lease(name, deadline=deadline)
        except MalformedLease as exc:
            self._view.observe_node(base.holder, None, problem=str(exc))
            return False
        except ApiError as exc:
            self.log.info("takeover postponed: could not read %s: %s", name, exc)
            return False
        seen = entry.record.resource_version if entry.record is not None else None
        now = current.resource_version if current is not None else None
        if now == seen:
            return True
        self.log.warning("takeover called off: %s changed unseen (watch behind); timing it again", name)
        self._view.observe_node(base.holder, current)
        return False

    async def _acquire(self, base: LeaseRecord | None, decision: Decision) -> None:
        if decision.reason.startswith("expired") and not await self._holder_still_silent(base):
            return
        if self._connections is not None:
            self._connections.arm_ahead(str(self.ip))  # beside the write, off the takeover path
        written = await self._write_holder(base, decision.reason)
        if written is None:
            return
        await self._start_serving(written, decision, self._sent, "acquired the lease")

    async def _assume(self, record: LeaseRecord | None, decision: Decision) -> None:
        """The old owner transferred the claim to us as we accepted: serve on
        its write (:mod:`egressd.core.transfer`)."""
        self._accepted = None  # one transfer, one tenure
        if record is None:
            return
        await self._start_serving(record, decision, self._clock.monotonic(), "took the transferred lease")

    async def _start_serving(self, written: LeaseRecord, decision: Decision, sent: float, what: str) -> None:
        """The claim names us (``written``): serve if our node lease's right
        still holds, else wait (3e of decide writes it again later)."""
        self._set_epoch(written.transitions)
        right = self._liveness.right()
        if not right:
            # the claim names us, but our node lease's right lapsed meanwhile:
            # serve only after a renew and a fresh claim write (3e of decide)
            self.log.warning("%s but the node lease's right lapsed (%s); not serving", what, right.reason)
            return
        self._fire(Event.ACQUIRED, decision.reason)
        self.serving_locally = False
        self.log.info("%s (%s); serving", what, decision.reason)
        self._emit("acquired", decision.reason, decision.detail)
        try:
            await self._serve(sent)
        except DataPlaneError as exc:
            self._takeover_failures += 1
            self._hold(hold_off("dataplane-failed", self._takeover_failures, self._timing), "dataplane-failed")
            successor = self._next_candidate()
            self.log.error(
                "cannot serve: %s; giving the lease back to %s and holding off %.1fs (failure %d in a row)",
                exc,
                successor or "whoever takes it",
                (self._hold_off_until or 0.0) - self._clock.monotonic(),
                self._takeover_failures,
            )
            await self._leave(Event.STEPPED_DOWN, "dataplane-failed", str(exc), release=True, successor=successor)
        else:
            self._takeover_failures = 0

    @property
    def dp(self) -> DataPlane:
        """The data plane this member serves through (the daemon's)."""
        return self._dp

    def withdrawn_metric(self) -> None:
        """The metrics' view after a withdrawal made for this member."""
        self._metrics.owned(str(self.ip), False)

    @property
    def dp_lock(self) -> asyncio.Lock:
        """The lock that orders this IP's data-plane changes."""
        return self._dp_lock

    async def _serve(self, sent: float) -> None:
        async with self._dp_lock:
            if self.sm.state is not State.OWNER:
                return
            ip, phases = str(self.ip), self._metrics
            if self._connections is not None:
                # before the address answers ARP and before the first GARP: the
                # server's next segment must meet an installed entry or the guard
                await self._connections.takeover(ip)
                phases.takeover_phase(ip, "conntrack", self._clock.monotonic() - sent)
            # the address and SNAT at once (two threads): neither needs the
            # other, and both come before the first GARP
            failures = [
                exc
                for exc in await asyncio.gather(
                    self._phase(
                        "address",
                        sent,
                        self._dp.addresses.claim(self.ip, self.group.interface, self._timing.address_lifetime),
                    ),
                    self._phase("snat", sent, self._dp.snat.activate(self.ip, self.group.name)),
                    return_exceptions=True,
                )
                if exc is not None
            ]
            if failures:
                raise failures[0]  # after both ended: a withdrawal never races a step still running
            # the address answers and SNAT is on: the steering nodes may send
            # now (news over the mesh, ahead of their watch of the claim)
            self._announce(ip, self.epoch)
            await self._dp.announcer.start(self.ip, self.group.interface)
            phases.takeover_phase(ip, "garp", self._clock.monotonic() - sent)
            if self._connections is not None:
                self._connections.announced(ip)  # the entries the budget left, under the guard
            self._metrics.owned(ip, True)

    async def _phase(self, phase: str, sent: float, step: Awaitable[None]) -> None:
        """Run one step of a takeover and record when it ended (from the claim write's send)."""
        await step
        self._metrics.takeover_phase(str(self.ip), phase, self._clock.monotonic() - sent)

    async def _withdraw(self, reason: str) -> None:
        """Stop serving: announcements, address, SNAT — each attempted even if one fails."""
        async with self._dp_lock:
            await self._withdraw_locked(reason)

    async def _withdraw_locked(self, reason: str) -> None:
        """:meth:`_withdraw` for callers that hold the data-plane lock already."""
        # SNAT (with its nftables fence) goes last: traffic stops only with it
        # (the flows' replies are un-NATed before routing, so they still pass
        # once the address is gone), and what follows it until a release
        # leaves is the start of the handoff's outage: nothing but the release
        steps: tuple[tuple[str, Callable[[], Awaitable[None]]], ...] = (
            ("announcer", lambda: self._dp.announcer.stop(self.ip)),
            ("address", lambda: self._dp.addresses.release(self.ip, self.group.interface)),
            ("snat", lambda: self._dp.snat.deactivate(self.ip)),
        )
        for what, op in steps:
            try:
                await op()
            except DataPlaneError as exc:
                self.log.error("withdraw (%s): %s failed: %s", reason, what, exc)
        self._metrics.owned(str(self.ip), False)

    async def _leave(
        self,
        event: Event,
        reason: str,
        detail: str = "",
        *,
        withdraw_as: str | None = None,
        release: bool = False,
        successor: str | None = None,
        base: LeaseRecord | None = None,
        offered: Offered | None = None,
        withdrawn: bool | None = None,
    ) -> None:
        """The one way out of OWNER: withdraw the data plane, fire ``event``
        (STEPPED_DOWN, RELEASED or CLASH) with ``reason``, end the tenure, say
        so (log, event; the transition metric comes with the event), and then,
        with ``release``, write the lease free for ``successor``: always
        withdraw first, release second.

        The fence task and the member loop may both get here; whichever comes
        second finds the state changed after its withdrawal and fires nothing.
        A release is written whatever the state (a handoff whose release did
        not land, a write that landed unseen): :meth:`_release` writes only a
        lease that names this process. ``withdraw_as`` names the withdrawal in
        the log when it differs from ``reason``. ``offered`` and ``withdrawn``
        (whether this member left OWNER then): the offer sent and the
        withdrawal made already by :func:`withdraw_together`."""
        if offered is None and release and successor is not None and self.sm.state is State.OWNER:
            offered = self.offer(successor)  # before the withdrawal: the accept comes back while we withdraw
        if withdrawn is None:
            left = False
            if self.sm.state is State.OWNER:
                await self._withdraw(withdraw_as or reason)
                left = self.mark_left(event, reason)
        else:
            left = withdrawn
        if event is Event.STEPPED_DOWN and left:
            self.log.warning("stepped down: %s %s", reason, detail)
            self._emit("stepped-down" if reason != "lost-lease" else "lost", reason, detail)
        elif event is Event.CLASH:
            self._hold(hold_off("identity-clash", 1, self._timing), "identity-clash")
            self.log.error("identity clash: another daemon writes this node's name (%s); fenced", detail)
            self._emit("fenced", reason, detail)
        if not release:
            if offered is not None:
                offered[0].cancel()
            return
        await self._hand_over(event, reason, successor, base, left=left, offered=offered)

    def offer(self, successor: str) -> Offered | None:
        """Offer the claim to ``successor`` now (before the withdrawal); None:
        no offer left (no mesh, no address for it)."""
        future = self._offer(str(self.ip), self.epoch, successor)
        return (future, self._clock.monotonic()) if future is not None else None

    def mark_left(self, event: Event, reason: str) -> bool:
        """Right after a withdrawal (no await between): leave OWNER with
        ``event``; whether this call left it (not the fence task before it)."""
        if not self._still_owner():
            return False
        self._fire(event, reason)
        if self._connections is not None:
            self._connections.left(str(self.ip))  # its entries here, cleared later
        return True

    async def _hand_over(
        self,
        event: Event,
        reason: str,
        successor: str | None,
        base: LeaseRecord | None,
        *,
        left: bool,
        offered: Offered | None,
    ) -> None:
        """After the withdrawal: transfer the claim to a successor that accepted
        our offer, else write it free naming ``successor``; then wake the successor."""
        if left and self._connections is not None:
            # withdrawn: no new flow gets this IP here; the successor gets the
            # changes not sent yet before it is woken by the release
            await self._connections.final_batch(str(self.ip))
        released, how = None, "released"
        if offered is not None:
            accept = await self._accept_of(*offered)
            if accept is not None and left and successor is not None:
                released = await self._transfer(successor, accept, base)
                how = "transferred" if released is not None else how
        if released is None:
            released = await self._release(successor=successor, base=base)
        if released is not None and successor is not None:
            self._wake(released, successor)
        if released is not None and event is Event.RELEASED:
            # the release is the leaving itself (handoff, shutdown): it is what is announced
            self.log.info("%s the lease (%s; successor %s)", how, reason, successor or "-")
            self._emit("released", reason, f"{how} to {successor}" if successor else "")

    async def _accept_of(self, future: asyncio.Future[Accept], offered_at: float) -> Accept | None:
        """The successor's accept of our offer, if it comes within
        ``ACCEPT_WAIT`` of the offer (None: release instead)."""
        try:
            if not future.done():
                remaining = offered_at + transfer.ACCEPT_WAIT - self._clock.monotonic()
                await asyncio.wait({future}, timeout=max(0.0, remaining))
            if future.done() and not future.cancelled():
                return future.result()
            self.log.info("no accept of our offer within %.0f ms: releasing instead", transfer.ACCEPT_WAIT * 1000)
            return None
        finally:
            future.cancel()

    async def _transfer(self, successor: str, accept: Accept, base: LeaseRecord | None) -> LeaseRecord | None:
        """Write the claim held by the successor's process that accepted
        (withdrawn already): the transfer; None if it was not written (the
        caller releases instead, which reads back a write of unknown outcome)."""
        record = base or self._view.get(self.name).record
        node = self._view.node(successor)
        address = node.record.address if node is not None and node.record is not None else None
        if not self._names_us(record) or address is None or accept.sender != successor:
            return None
        assert record is not None
        to = transfer.transfer_record(
            record,
            successor=successor,
            address=address,
            incarnation=accept.incarnation,
            lease_duration=self._timing.lease_duration,
            now=self._clock.wall(),
        )
        started = self._clock.monotonic()
        try:
            written = await self._store.update(to, deadline=started + self._timing.renew_deadline)
        except LostRace as exc:
            self.log.info("transfer to %s lost a race (%s); releasing instead", successor, exc)
            return None
        except ApiError as exc:
            self._write_unsure = self._write_unsure or isinstance(exc, ApiTimeout)
            self.log.warning("transfer to %s failed (%s); releasing instead", successor, exc)
            return None
        self._view.observe(self.name, written, notify=False)
        return written

    async def step_down(self, reason: str, detail: str = "") -> None:
        """Withdraw now (deadline passed, lease lost)."""
        await self._leave(Event.STEPPED_DOWN, reason, detail)

    async def _handoff(self, record: LeaseRecord | None, decision: Decision) -> None:
        if record is None:
            return
        await self._leave(
            Event.RELEASED,
            decision.reason,
            withdraw_as="handoff",
            release=True,
            successor=record.preferred_holder,
            base=record,
        )

    def _names_us(self, record: LeaseRecord | None) -> bool:
        return (
            record is not None and record.holder == self._settings.node.name and record.incarnation == self._incarnation
        )

    async def _release(self, *, successor: str | None, base: LeaseRecord | None = None) -> LeaseRecord | None:
        """Write the lease free if it names this process; the released lease
        as written (None: not released).

        The view may be behind our own last write (its answer never came: the
        loop was cancelled in flight, or it timed out): then the lease is read
        back first, so a write that landed is released, not left held by
        nobody alive. A lease changed under us (409) is read back and released
        once more if it still names us (our own renew landed meanwhile)."""
        record = base or self._view.get(self.name).record
        deadline = self._clock.monotonic() + self._timing.renew_deadline
        for attempt in range(2):
            if not self._names_us(record) and self._write_unsure:
                self.log.info("release: our last write may have landed unseen; reading the lease back")
                if await self._refresh():
                    self._write_unsure = False
                record = self._view.get(self.name).record
            if not self._names_us(record):
                why = "it does not exist" if record is None else f"it is held by {record.holder or 'nobody'}"
                if record is not None and record.holder == self._settings.node.name:
                    why += f" (incarnation {record.incarnation}, ours is {self._incarnation})"
                self.log.info("release not needed: %s", why)
                return None
            assert record is not None
            try:
                written = await self._store.release(record, successor=successor, deadline=deadline)
            except LostRace:
                self.log.info("release lost a race (attempt %d); reading the lease back", attempt + 1)
                await self._refresh()
                record = self._view.get(self.name).record
                continue
            except ApiError as exc:
                self._write_unsure = self._write_unsure or isinstance(exc, ApiTimeout)
                self.log.warning("release failed: %s", exc)
                return None
            self._view.observe(self.name, written, notify=False)
            return written
        self.log.warning("release gave up: the lease kept changing under us")
        return None

    async def _fence_clash(self, decision: Decision) -> None:
        await self._leave(Event.CLASH, decision.reason, decision.detail, withdraw_as="identity-clash")

    async def fence_clash(self, detail: str) -> None:
        """Another process writes this node's lease: withdraw and hold off."""
        await self._leave(Event.CLASH, "identity-clash", detail, withdraw_as="identity-clash")

    # --- drift repair ----------------------------------------------------------------

    @property
    def serving(self) -> bool:
        """Owner with a serving right: the kernel should show our state."""
        return self.sm.state is State.OWNER and bool(self._liveness.right())

    async def reconcile(self, present: set[IPAddress], active: set[IPAddress]) -> list[str]:
        """Repair what the kernel shows against what this member is. ``present``
        and ``active`` were read just before; repairs are idempotent, so a read
        that raced a takeover or a withdrawal only repeats it. Returns what was repaired."""
        repaired: list[str] = []
        async with self._dp_lock:
            if self.serving_locally:
                return repaired  # adoption pending; the member decides at once
            if self.serving:
                if self.ip not in present:
                    await self._dp.addresses.claim(self.ip, self.group.interface, self._timing.address_lifetime)
                    repaired.append("address-missing")
                if self.ip not in active:  # the daemon re-staged the table first if it was gone
                    await self._dp.snat.activate(self.ip, self.group.name)
                    await self._dp.snat.refresh_fence((self.ip,), self._liveness.fence_ttl())
                    repaired.append("snat-missing")
                if repaired:
                    await self._dp.announcer.start(self.ip, self.group.interface)
            elif self.ip in present or (self.ip in active and self._primed_until is None):
                await self._withdraw_locked("stale-state")
                repaired.append("stale-state")
        for what in repaired:
            self.log.warning("drift repaired: %s", what)
            self._metrics.drift(str(self.ip), what)
            self._emit("drift", what)
        return repaired

    # --- shutdown --------------------------------------------------------------------

    def stop_soon(self) -> None:
        """Make the loop end at its next turn (shutdown cancels it as well),
        and a read a wake asked for end now."""
        self._stopping = True
        if self._wake_read is not None:
            self._wake_read.cancel()

    async def shutdown(
        self, reason: str = "shutdown", *, offered: Offered | None = None, withdrawn: bool | None = None
    ) -> None:
        """Withdraw first, then free the lease for the next preferred candidate
        (``reason``: ``shutdown``, or ``not-candidate`` when this node stopped
        being a candidate of the IP). ``offered``, ``withdrawn``: see
        :meth:`_leave` (the daemon's shutdown withdraws all IPs together)."""
        self._stopping = True
        if self._priming is not None and not self._priming.done():
            self._priming.cancel()  # its end removes what it primed (we take no transfer now)
            await asyncio.gather(self._priming, return_exceptions=True)
        if self.sm.state is not State.OWNER and self.serving_locally and withdrawn is None:
            await self._withdraw(reason)  # adoption pending: the kernel serves without a tenure
        await self._leave(
            Event.RELEASED,
            reason,
            release=True,
            successor=self._next_candidate(),
            offered=offered,
            withdrawn=withdrawn,
        )
        if self.sm.state is State.FENCED or self.sm.state is State.STANDBY:
            self._fire(Event.STOP, reason)

    # --- helpers ---------------------------------------------------------------------

    def next_candidate(self) -> str | None:
        """The most preferred other candidate of this IP (a release names it)."""
        return self._next_candidate()

    def _next_candidate(self) -> str | None:
        """The most preferred other candidate of this IP (a release names it)."""
        others = [c for c in self.preference() if c != self._settings.node.name]
        return others[0] if others else None

    def _hold(self, seconds: float, reason: str) -> None:
        """Take nothing for ``seconds`` (read by :func:`decide` in every state)."""
        self._hold_off_until = self._clock.monotonic() + seconds
        self._hold_off_reason = reason

    def _still_owner(self) -> bool:
        """The state now, after an await during which another task (the fence,
        the member loop) may have stepped down."""
        return self.sm.state is State.OWNER

    def _fire(self, event: Event, reason: str) -> None:
        before, after = self.sm.fire(event)
        if before is not after:
            self.last_transition = f"{before.value}->{after.value} ({event.value}: {reason})"
            self._metrics.transition(str(self.ip), event.value, reason)

    def _set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.log.extra = {**(self.log.extra or {}), "epoch": epoch}

    def _emit(self, kind: str, reason: str, detail: str = "") -> None:
        self._events.emit(
            OwnershipEvent(
                kind=kind,  # type: ignore[arg-type]
                egress_ip=str(self.ip),
                node=self._settings.node.name,
                epoch=self.epoch,
                reason=reason,
                detail=detail,
                at=self._clock.monotonic(),
            )
        )


async def withdraw_together(members: Sequence[Member], reason: str) -> dict[IPAddress, bool]:
    """Withdraw every member's data plane at once (a shutdown): the
    announcements, then the addresses, then SNAT and its fence for all IPs in
    one nftables transaction, each step attempted even if one fails, and
    each member leaves OWNER right after, with no await between (so no
    re-arm of the fences can come in between). Per IP: whether its member
    left OWNER then (see :meth:`Member.mark_left`)."""
    members = sorted((m for m in members if m.sm.state is State.OWNER), key=lambda m: (m.ip.version, int(m.ip)))
    if not members:
        return {}
    dp = members[0].dp
    async with contextlib.AsyncExitStack() as locks:
        for m in members:
            await locks.enter_async_context(m.dp_lock)
        for m in members:
            try:
                await dp.announcer.stop(m.ip)
            except DataPlaneError as exc:
                m.log.error("withdraw (%s): announcer failed: %s", reason, exc)
        released = await asyncio.gather(
            *(dp.addresses.release(m.ip, m.group.interface) for m in members), return_exceptions=True
        )
        for m, outcome in zip(members, released, strict=True):
            if isinstance(outcome, DataPlaneError):
                m.log.error("withdraw (%s): address failed: %s", reason, outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
        try:
            await dp.snat.deactivate_all([m.ip for m in members])
        except DataPlaneError as exc:
            log.error("withdraw (%s): SNAT of %d IPs at once failed (%s); one by one", reason, len(members), exc)
            for m in members:
                try:
                    await dp.snat.deactivate(m.ip)
                except DataPlaneError as one:
                    m.log.error("withdraw (%s): snat failed: %s", reason, one)
        left = {}
        for m in members:
            m.withdrawn_metric()
            left[m.ip] = m.mark_left(Event.RELEASED, reason)
    return left
