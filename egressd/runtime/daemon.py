"""The daemon of one node: lease watch, start-up reconcile, one member per
egress IP this node is a candidate for, and an orderly shutdown.

The groups come from the static config, or (Kubernetes mode) from the
controller, which calls :meth:`Daemon.apply` with every new resolution of the
policies: members start for IPs this node became a candidate of, hand off for
IPs it is no longer one of, and take the new candidate lists and sources in
place otherwise.

Start-up, in order:

1. Stage SNAT for the groups this node may serve (so takeover is short).
2. Wait for the first full list of the leases (at most ``renewDeadline``).
3. Reconcile the kernel with the leases: an egress IP present on this node
   whose lease names this node is kept (a crash with a quick restart must not
   interrupt traffic) and its member adopts the tenure; everything else
   egressd finds is withdrawn. If the leases cannot be read in time, nothing
   can prove ownership, so everything is withdrawn.
4. Start the members and their fences.

Shutdown (SIGTERM, SIGINT or SIGHUP): every member withdraws, then frees its
lease for the next preferred candidate; bounded by ``shutdown_grace``.

Every task (the lease watch, the members and their fences, drift repair,
steering, the controller's) is supervised: one that ends unexpectedly is
logged, fails ``/healthz`` and is started again with backoff.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from egressd.core.election import Action, Me, Observation, retire
from egressd.core.errors import ApiError, ConfigError, DataPlaneError, LostRace
from egressd.core.lease import LeaseRecord, lease_name
from egressd.core.model import EgressGroup, IPAddress, Settings
from egressd.core.ownership_events import OwnershipEvent
from egressd.core.states import State
from egressd.ports import Clock, EventSink, LeaseStore, Metrics, Steering
from egressd.runtime.member import DataPlane, Member
from egressd.runtime.steerer import Steerer
from egressd.runtime.supervisor import Supervisor, wait_event
from egressd.runtime.view import LeaseView

log = logging.getLogger(__name__)


class LogEvents:
    """An EventSink that writes ownership events to the log."""

    def emit(self, event: OwnershipEvent) -> None:
        log.info(
            "event %s ip=%s node=%s epoch=%d reason=%s %s",
            event.kind,
            event.egress_ip,
            event.node,
            event.epoch,
            event.reason,
            event.detail,
        )


@dataclass
class FanoutEvents:
    """Sends each event to every sink; a failing sink never affects the others."""

    sinks: list[EventSink] = field(default_factory=list)

    def emit(self, event: OwnershipEvent) -> None:
        for sink in self.sinks:
            try:
                sink.emit(event)
            except Exception:
                log.exception("event sink %r failed", sink)


class NullMetrics:
    def owned(self, ip: str, owned: bool) -> None:
        pass

    def transition(self, ip: str, kind: str, reason: str) -> None:
        pass

    def renew(self, ip: str, seconds: float, ok: bool, error: str = "") -> None:
        pass

    def takeover_phase(self, ip: str, phase: str, seconds: float) -> None:
        pass

    def conflict(self, ip: str) -> None:
        pass

    def drift(self, ip: str, what: str) -> None:
        pass

    def api_error(self, kind: str) -> None:
        pass


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        store: LeaseStore,
        dataplane: DataPlane,
        clock: Clock,
        steering: Steering | None = None,
        events: EventSink | None = None,
        metrics: Metrics | None = None,
        incarnation: str | None = None,
        shutdown_grace: float = 5.0,
        repair_interval: float = 2.0,
    ) -> None:
        problems = settings.timing.check()
        if problems:
            # as client-go's NewLeaderElector: timings that break the safety
            # argument are refused however the daemon is built, in tests too
            raise ConfigError(problems, "timing")
        self.settings = settings
        self.store = store
        self.dataplane = dataplane
        self.clock = clock
        self.events = events or FanoutEvents([LogEvents()])
        self.metrics = metrics or NullMetrics()
        self.incarnation = incarnation or uuid.uuid4().hex[:16]
        self.shutdown_grace = shutdown_grace
        self.repair_interval = repair_interval
        """Seconds between drift-repair passes."""
        self.supervisor = Supervisor(now=clock.monotonic)
        self.view = LeaseView(clock)
        self.members: dict[IPAddress, Member] = {}
        self.groups: tuple[EgressGroup, ...] = settings.groups
        """The egress groups as known now (static config, or the policies' resolution)."""
        self.inputs_ready = asyncio.Event()
        """Set once the groups are known: at once in static mode, after the
        first resolution of the policies in Kubernetes mode."""
        if settings.mode == "static":
            self.inputs_ready.set()
        self._apply_lock = asyncio.Lock()
        self._prepared: set[str] = set()
        self._extra_tasks: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = []
        self.status_parts: dict[str, Callable[[], Any]] = {}
        """More sections of :meth:`status_report` (the controller's ``policies``)."""
        self.ready_checks: list[Callable[[], list[str]]] = []
        """More readiness checks (the controller's), each returning its problems."""
        self.steerer = (
            Steerer(Steerer.for_node(settings.groups, settings.node.name), self.view, steering)
            if steering is not None
            else None
        )
        self.reconciled = asyncio.Event()
        """Set once the start-up reconcile is done and the members run."""
        self.settled = asyncio.Event()
        """Set once every member made its first decision (adoptions included)."""
        self.retiring: dict[str, str] = {}
        """Claims to delete (lease name -> egress IP): IPs no group lists any more."""
        self._retire_news = self.view.listener()
        self._retire_said: dict[str, str] = {}

    async def run(self, *, install_signals: bool = True) -> int:
        """Run until a stop is requested; returns the process exit code."""
        sup = self.supervisor
        if install_signals:
            sup.install_signal_handlers()
        log.info(
            "egressd starting: node=%s incarnation=%s groups=%s",
            self.settings.node.name,
            self.incarnation,
            ",".join(g.name for g in self.settings.groups) or "-",
        )
        sup.spawn("lease-watch", self._watch)
        for name, factory in self._extra_tasks:
            sup.spawn(name, factory)
        try:
            if not sup.stop_requested.is_set() and await self._inputs():
                await self._start()
            await sup.stop_requested.wait()
        finally:
            await self._shutdown()
        return 0

    def add_task(self, name: str, factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``factory()`` as a supervised task of the daemon (the controller's),
        started again if it ends unexpectedly."""
        self._extra_tasks.append((name, factory))

    async def _inputs(self) -> bool:
        """Wait until the groups are known; False if a stop came first."""
        if self.inputs_ready.is_set():
            return True
        log.info("waiting for the first resolution of the policies")
        stop = asyncio.create_task(self.supervisor.stop_requested.wait())
        ready = asyncio.create_task(self.inputs_ready.wait())
        try:
            await asyncio.wait({stop, ready}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            ready.cancel()
        return self.inputs_ready.is_set()

    def candidate_groups(self) -> tuple[EgressGroup, ...]:
        """Groups of which this node is a candidate now."""
        return tuple(g for g in self.groups if self.settings.node.name in g.candidates)

    async def apply(self, groups: Sequence[EgressGroup], steering: Sequence[EgressGroup] | None = None) -> None:
        """Make ``groups`` the egress groups (Kubernetes mode), and ``steering``
        the groups this node steers (None: those it is no candidate of).

        IPs this node is no longer a candidate of (label removed, policy
        deleted or changed) are handed off first: withdrawn, then their lease
        written free for the next preferred candidate. Then the SNAT table is
        staged again (sources only, when nothing else changed), and members
        start for the IPs this node became a candidate of."""
        async with self._apply_lock:
            self.groups = tuple(groups)
            me = self.settings.node.name
            if self.steerer is not None:
                self.steerer.set_groups(steering if steering is not None else Steerer.for_node(groups, me))
            if not self.reconciled.is_set():
                self.inputs_ready.set()
                return
            wanted = {ip: g for g in self.candidate_groups() for ip in g.egress_ips}
            listed = {ip for g in self.groups for ip in g.egress_ips}
            for ip, member in list(self.members.items()):
                group = wanted.get(ip)
                if group is None or (group.name, group.interface) != (member.group.name, member.group.interface):
                    await self._leave(ip, member, group)
                    if ip not in listed:
                        self.retiring[member.name] = str(ip)
                        self._retire_news.set()
            try:
                await self.dataplane.snat.stage(self.candidate_groups())
            except DataPlaneError as exc:
                log.error("could not stage SNAT: %s", exc)
            for ip, group in wanted.items():
                existing = self.members.get(ip)
                if existing is None:
                    log.info("ip=%s node=%s now a candidate (group %s); starting its member", ip, me, group.name)
                    self._add_member(ip, group, adopt=False)
                elif existing.group != group:
                    existing.group = group
            for interface in sorted({g.interface for g in self.candidate_groups()} - self._prepared):
                if self.settled.is_set():
                    await self._prepare(interface)
            if self.members and "drift-repair" not in self.supervisor.running():
                self.supervisor.spawn("drift-repair", self._repair_forever)
            if self.steerer is not None and "steering" not in self.supervisor.running():
                self.supervisor.spawn("steering", self.steerer.run)

    async def _leave(self, ip: IPAddress, member: Member, group: EgressGroup | None) -> None:
        """Hand ``ip`` off: this node is no longer a candidate (or the IP moved)."""
        me = self.settings.node.name
        if group is None:
            reason = "no longer a candidate (node selector, policy or interface changed)"
            member.group = replace(member.group, candidates=tuple(c for c in member.group.candidates if c != me))
        else:
            reason = f"group or interface changed to {group.name}/{group.interface}"
        log.info("ip=%s node=%s epoch=%d handing off: %s", ip, me, member.epoch, reason)
        member.stop_soon()
        await self.supervisor.cancel(f"member:{ip}")
        await self.supervisor.cancel(f"fence:{ip}")
        await member.shutdown(reason="not-candidate")
        del self.members[ip]

    def _add_member(self, ip: IPAddress, group: EgressGroup, *, adopt: bool) -> None:
        member = Member(
            ip,
            group,
            self.settings,
            store=self.store,
            view=self.view,
            dataplane=self.dataplane,
            clock=self.clock,
            incarnation=self.incarnation,
            events=self.events,
            metrics=self.metrics,
            serving_locally=adopt,
        )
        self.members[ip] = member
        # the loop returns only after stop_soon(); a failure starts it again
        self.supervisor.spawn(f"member:{ip}", member.run, one_shot=True)
        self.supervisor.spawn(f"fence:{ip}", member.fence)

    async def _watch(self) -> None:
        async for event in self.store.watch():
            self.view.apply(event)

    async def _start(self) -> None:
        async with self._apply_lock:
            groups = self.candidate_groups()
            if groups:
                try:
                    await self.dataplane.snat.stage(groups)
                except DataPlaneError as exc:
                    log.error("could not stage SNAT: %s", exc)
            adopt = await self._reconcile()
            for group in groups:
                for ip in group.egress_ips:
                    self._add_member(ip, group, adopt=ip in adopt)
            listed = {str(ip) for g in self.groups for ip in g.egress_ips}
            for record in self.view.records():
                if record.egress_ip not in listed:  # left by a policy deleted or an IP removed meanwhile
                    self.retiring[record.name] = record.egress_ip
            self.supervisor.spawn("retire-claims", self._retire_forever)
            self.reconciled.set()
            log.info("started %d member(s): %s", len(self.members), ", ".join(map(str, self.members)) or "-")
            self.supervisor.spawn("settle", lambda: self._settle(groups), one_shot=True)
            if self.members:
                self.supervisor.spawn("drift-repair", self._repair_forever)
            if self.steerer is not None and (self.steerer.groups or self.settings.mode == "kubernetes"):
                self.supervisor.spawn("steering", self.steerer.run)

    def health(self) -> tuple[bool, list[str]]:
        """Liveness: fails when the daemon should have stepped down but has not,
        or when a supervised task ended unexpectedly and is down or keeps
        dying. A restart is the cure for both."""
        problems = self.supervisor.problems()
        now = self.clock.monotonic()
        overdue = self.settings.timing.renew_deadline + 0.5
        for ip, member in sorted(self.members.items(), key=lambda kv: str(kv[0])):
            if member.sm.state is State.OWNER and member.last_renew is not None and now - member.last_renew > overdue:
                problems.append(
                    f"{ip}: still owner {now - member.last_renew:.1f}s after its last renew (should have stepped down)"
                )
        if self.reconciled.is_set() and not self.supervisor.stop_requested.is_set():
            missing = {"lease-watch"} | {f"{kind}:{ip}" for ip in self.members for kind in ("member", "fence")}
            missing -= set(self.supervisor.running())
            missing -= set(self.supervisor.states)  # ended unexpectedly: listed by the supervisor
            problems += [f"task {name} is not running" for name in sorted(missing)]
        return not problems, problems

    def readiness(self) -> tuple[bool, list[str]]:
        """Readiness: the initial reconcile is done and the API is reachable."""
        problems = []
        if not self.reconciled.is_set():
            problems.append("initial reconcile not done")
        if not self.store.connected():
            problems.append("Kubernetes API not reachable")
        for check in self.ready_checks:
            problems += check()
        return not problems, problems

    def status_report(self) -> dict[str, Any]:
        """This daemon's own view, for ``egressd status`` (served on /status)."""
        now = self.clock.monotonic()
        members = []
        for ip, m in sorted(self.members.items(), key=lambda kv: str(kv[0])):
            d = m.last_decision
            members.append(
                {
                    "egressIP": str(ip),
                    "group": m.group.name,
                    "state": m.sm.state.value,
                    "epoch": m.epoch,
                    "lastTransition": m.last_transition or None,
                    "lastDecision": {"action": d.action.value, "reason": d.reason, "detail": d.detail} if d else None,
                    "lastRenewAgeSeconds": round(now - m.last_renew, 3) if m.last_renew is not None else None,
                }
            )
        steering = (
            {str(ip): str(via) if via else None for ip, via in self.steerer.current.items()} if self.steerer else {}
        )
        ok, problems = self.health()
        return {
            "node": self.settings.node.name,
            "incarnation": self.incarnation,
            "healthy": ok,
            "problems": problems,
            "members": members,
            "steering": steering,
        } | {name: part() for name, part in self.status_parts.items()}

    def renew_ages(self) -> dict[str, float]:
        """Seconds since the last successful renew of each IP this node owns."""
        now = self.clock.monotonic()
        return {
            str(ip): now - m.last_renew
            for ip, m in self.members.items()
            if m.sm.state is State.OWNER and m.last_renew is not None
        }

    def may_announce(self, ip: IPAddress) -> bool:
        """Whether this node may still claim ``ip`` on the wire right now."""
        member = self.members.get(ip)
        return member is not None and member.serving

    def report_conflict(self, ip: IPAddress, mac: str) -> None:
        """Another MAC claims an IP we serve (from the announcer's ARP listener)."""
        member = self.members.get(ip)
        epoch = member.epoch if member else 0
        log.warning(
            "ip=%s node=%s epoch=%d ARP conflict: %s also claims this IP", ip, self.settings.node.name, epoch, mac
        )
        self.metrics.conflict(str(ip))
        self.events.emit(
            OwnershipEvent(
                kind="conflict",
                egress_ip=str(ip),
                node=self.settings.node.name,
                epoch=epoch,
                reason="arp-conflict",
                detail=f"claimed by {mac}",
                at=self.clock.monotonic(),
            )
        )

    async def _settle(self, groups: tuple[EgressGroup, ...]) -> None:
        """After every member's first decision (an adoption after a restart is one):
        the work that may wait, so it does not delay re-arming the fences."""
        await asyncio.gather(*(m.first_step.wait() for m in self.members.values()))
        self.settled.set()
        for interface in sorted({g.interface for g in groups}):
            await self._prepare(interface)

    async def _prepare(self, interface: str) -> None:
        self._prepared.add(interface)
        try:
            await self.dataplane.announcer.prepare(interface)
        except DataPlaneError as exc:
            log.error("could not prepare announcements on %s: %s", interface, exc)

    async def repair_drift(self) -> list[str]:
        """One pass of drift repair: compare the kernel with the members and mend.

        Someone flushing the ruleset or deleting an address must not leave an
        owner that cannot serve, nor a non-owner that still does."""
        dp = self.dataplane
        present = {ip for ip, _ in await dp.addresses.owned()}
        active = await dp.snat.active()
        serving_without_snat = [ip for ip, m in self.members.items() if m.serving and ip not in active]
        if serving_without_snat:
            log.warning("drift: SNAT of %s missing; staging the table again", ", ".join(map(str, serving_without_snat)))
            await dp.snat.stage(self.candidate_groups())
        repaired: list[str] = []
        for ip, member in self.members.items():
            repaired += [f"{ip}:{what}" for what in await member.reconcile(present, active)]
        for ip in present - set(self.members):
            log.warning("drift: removing egress IP %s that this node has no member for", ip)
            for address, interface in await dp.addresses.owned():
                if address == ip:
                    await dp.addresses.release(address, interface)
            repaired.append(f"{ip}:foreign-address")
        return repaired

    async def _retire_forever(self) -> None:
        while True:
            self._retire_news.clear()
            await wait_event(self._retire_news, await self.retire_claims())

    async def retire_claims(self) -> float | None:
        """Delete the claims of IPs that no group lists any more, where
        :func:`~egressd.core.election.retire` says so (each delete is
        conditional on the resourceVersion it decided on). Returns when to
        look again without news (None: on news only)."""
        listed = {str(ip) for g in self.groups for ip in g.egress_ips}
        serving = {m.name for m in self.members.values()}
        me = self.settings.node.name
        recheck: float | None = None
        for name, ip in sorted(self.retiring.items()):
            entry = self.view.get(name)
            if ip in listed or name in serving:
                del self.retiring[name]  # listed again
                continue
            if entry.problem:
                continue  # never act on a claim we cannot read
            now = self.clock.monotonic()
            decision = retire(
                entry.record,
                Observation(entry.resource_version, entry.observed_at),
                now,
                Me(identity=me, incarnation=self.incarnation, egress_ip=ip, candidates=()),
                self.settings.timing,
            )
            if self._retire_said.get(name) != decision.reason:
                self._retire_said[name] = decision.reason
                log.info(
                    "ip=%s node=%s claim of an IP no longer configured: %s %s %s",
                    ip,
                    me,
                    decision.action.value,
                    decision.reason,
                    decision.detail,
                )
            if decision.action is Action.DELETE and entry.record is not None:
                await self._delete_claim(name, ip, entry.record)
            elif decision.reason == "already-gone":
                del self.retiring[name]
            elif decision.recheck is not None:
                recheck = decision.recheck if recheck is None else min(recheck, decision.recheck)
        if not self.retiring:
            self._retire_said.clear()
        return recheck

    async def _delete_claim(self, name: str, ip: str, record: LeaseRecord) -> None:
        me = self.settings.node.name
        try:
            existed = await self.store.delete(
                record, deadline=self.clock.monotonic() + self.settings.timing.renew_deadline
            )
        except LostRace as exc:
            # written since we decided (an acquire by a daemon that still lists the IP,
            # or a renew): kept; decided again on the news of that write
            log.info("ip=%s node=%s claim not deleted, it changed meanwhile: %s", ip, me, exc)
            return
        except ApiError as exc:
            log.warning("ip=%s node=%s could not delete the claim: %s", ip, me, exc)
            return
        del self.retiring[name]
        if existed:
            log.info("ip=%s node=%s deleted the claim %s (resourceVersion %s)", ip, me, name, record.resource_version)
        else:
            log.info("ip=%s node=%s claim %s was already deleted", ip, me, name)

    async def _repair_forever(self) -> None:
        while True:
            await asyncio.sleep(self.repair_interval)
            try:
                await self.repair_drift()
            except DataPlaneError as exc:
                log.error("drift repair failed: %s", exc)

    async def _reconcile(self) -> set[IPAddress]:
        """Withdraw what this node serves but does not hold; return what it may adopt."""
        leases_known = await wait_event(self.view.ready, self.settings.timing.renew_deadline)
        if not leases_known:
            log.warning("reconcile: leases not readable within renewDeadline; withdrawing everything found")
        try:
            present = await self.dataplane.addresses.owned()
            snat_active = await self.dataplane.snat.active()
        except DataPlaneError as exc:
            log.error("reconcile: cannot read the kernel state: %s", exc)
            return set()
        me = self.settings.node.name
        mine = {str(ip) for g in self.candidate_groups() for ip in g.egress_ips}
        keep: set[IPAddress] = set()
        # An egress IP still has kernel state here (its address, or its SNAT rule,
        # which has no lifetime) only because a previous process of this node
        # served it: a second daemon with our name elsewhere cannot put it here.
        for ip in {ip for ip, _ in present} | snat_active:
            record = self.view.get(lease_name(str(ip))).record if leases_known else None
            if str(ip) in mine and record is not None and record.holder == me:
                keep.add(ip)
        for ip, interface in present:
            if ip not in keep:
                log.info("reconcile: removing egress IP %s from %s (this node does not hold its lease)", ip, interface)
                await self._quietly(self.dataplane.announcer.stop(ip))
                await self._quietly(self.dataplane.snat.deactivate(ip))
                await self._quietly(self.dataplane.addresses.release(ip, interface))
        for ip in snat_active - keep:
            log.info("reconcile: removing SNAT to %s (not held)", ip)
            await self._quietly(self.dataplane.snat.deactivate(ip))
        for ip in keep:
            log.info("reconcile: keeping egress IP %s (lease names this node); adopting it", ip)
        return keep

    @staticmethod
    async def _quietly(op: Awaitable[None]) -> None:
        try:
            await op
        except DataPlaneError as exc:
            log.error("reconcile: %s", exc)

    async def _shutdown(self) -> None:
        sup = self.supervisor
        for member in self.members.values():
            member.stop_soon()  # ends the loop even if a cancellation were lost on the way
        for ip in self.members:
            await sup.cancel(f"member:{ip}")
            await sup.cancel(f"fence:{ip}")
        if self.members:
            done = await asyncio.wait(
                [asyncio.create_task(m.shutdown(), name=f"shutdown:{ip}") for ip, m in self.members.items()],
                timeout=self.shutdown_grace,
            )
            for task in done[1]:
                log.error("shutdown of %s did not finish in %.1fs", task.get_name(), self.shutdown_grace)
        await sup.shutdown(grace=1.0)
        await self.store.close()
        log.info("egressd stopped (%s)", sup.stop_reason or "no reason")
