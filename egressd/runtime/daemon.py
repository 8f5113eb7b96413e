"""The daemon of one node: lease watch, start-up reconcile, one member per
egress IP this node is a candidate for, and an orderly shutdown.

The groups come from the static config, or (Kubernetes mode) from the
controller, which calls :meth:`Daemon.apply` with every new resolution of the
policies: members start for IPs this node became a candidate of, hand off for
IPs it is no longer one of, and take the new candidate lists and sources in
place otherwise.

Start-up, in order:

1. Stage SNAT for the groups this node may serve (so takeover is short).
2. Wait for the first full list of the leases (at most ``renewDeadline``),
   and renew this node's lease once (a gateway candidate), so the members
   decide with a serving right in hand (an adoption needs one).
3. Reconcile the kernel with the leases
   (:func:`egressd.runtime.reconcile.reconcile_at_start`): an egress IP this
   node still serves and holds the lease of is adopted; everything else is
   withdrawn.
4. Start the members, the node lease's renewals and the daemon fence
   (:mod:`egressd.runtime.liveness`), drift repair and the retirement of
   claims no group lists (:mod:`egressd.runtime.reconcile`).

Shutdown (SIGTERM, SIGINT or SIGHUP): every member withdraws, then frees its
lease for the next preferred candidate; bounded by ``shutdown_grace``.

Every task (the lease watch, the members and their fences, drift repair,
steering, the controller's) is supervised: one that ends unexpectedly is
logged, fails ``/healthz`` and is started again with backoff. What the daemon
says about itself (health, readiness, status) is :mod:`egressd.runtime.health`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import replace
from ipaddress import ip_address
from typing import Any

from egressd.core import rights
from egressd.core.errors import ConfigError, DataPlaneError, Problem
from egressd.core.lease import LeaseRecord, lease_name
from egressd.core.mesh_messages import Accept, Offer, Wake
from egressd.core.mesh_settings import DEFAULT_PORT
from egressd.core.model import EgressGroup, IPAddress, Settings
from egressd.core.states import State
from egressd.core.transfer import OfferVerdict
from egressd.core.wake import WakeAction, WakeVerdict, judge_wake
from egressd.ports import (
    Clock,
    ConnectionGuard,
    Conntrack,
    EventSink,
    LeaseStore,
    MeshTransport,
    Metrics,
    Steering,
)
from egressd.runtime import health, reconcile
from egressd.runtime.conntrack import Replication
from egressd.runtime.lapses import HolderLapses
from egressd.runtime.liveness import NodeLiveness
from egressd.runtime.member import DataPlane, Member, withdraw_together
from egressd.runtime.mesh import Mesh
from egressd.runtime.peer_rights import PeerRightWatch
from egressd.runtime.reconcile import ClaimRetirement
from egressd.runtime.sinks import FanoutEvents, LogEvents, NullMetrics
from egressd.runtime.steerer import Steerer
from egressd.runtime.supervisor import Supervisor
from egressd.runtime.view import LeaseView

log = logging.getLogger(__name__)


def _checked_timings(settings: Settings, mesh: rights.MeshTiming | None) -> rights.MeshTiming | None:
    """The promises' timings (``mesh``, else the settings'; None: no mesh);
    ConfigError naming each inequality the timings break."""
    problems = settings.timing.check()
    if mesh is None and settings.mesh is not None:
        mesh = settings.mesh.timing
    if mesh is not None and not problems:
        # the promises' inequalities (M1-M4); without the mesh nobody
        # promises and no peer right exists, so they do not apply
        problems = [Problem("timing", p) for p in rights.check(settings.timing, mesh)]
    if problems:
        # as client-go's NewLeaderElector: timings that break the safety
        # argument are refused however the daemon is built, in tests too
        raise ConfigError(problems, "timing")
    return mesh


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
        mesh: rights.MeshTiming | None = None,
        mesh_transport: MeshTransport | None = None,
        conntrack: Conntrack | None = None,
        guard: ConnectionGuard | None = None,
    ) -> None:
        self.settings = settings
        self.mesh_timing = _checked_timings(settings, mesh)
        """The promises' timings; None: the mesh is off, API rights alone."""
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
        self.mesh = self._build_mesh(mesh_transport)
        """Heartbeats and promises with the peers; None when the mesh is off."""
        self.liveness = NodeLiveness(
            settings,
            store=store,
            view=self.view,
            clock=clock,
            incarnation=self.incarnation,
            peers=self.peer_set,
            candidate=lambda: bool(self.candidate_groups()),
            rearm=self._rearm,
            lapsed=self._lapsed,
            clash=self._clash,
            metrics=self.metrics,
            mesh=self.mesh_timing if self.mesh is not None else None,
            required_peers=self.required_peers,
            promises=lambda: self.mesh.promises if self.mesh is not None else {},
        )
        """This node's lease: the serving right of every IP it holds."""
        if self.mesh is not None:
            self._wire_mesh(self.mesh)
        self.peer_rights = PeerRightWatch(
            node=settings.node.name,
            events=self.events,
            owned=lambda: [(str(m.ip), m.epoch) for m in self._owners()],
            last_api_write=lambda: self.liveness.last_api_write,
        )
        """Moves onto and off peer rights: events, log lines, time served on them."""
        self.liveness.observed = self.peer_rights.observe
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
        if self.mesh is not None:
            self.status_parts["mesh"] = self.mesh.status
        self.replication = self._build_replication(conntrack, guard)
        """The conntrack stream and the install at takeover; None when
        connections are not replicated (no mesh, ``conntrack.enabled: false``,
        or no conntrack port)."""
        self.ready_checks: list[Callable[[], list[str]]] = []
        """More readiness checks (the controller's), each returning its problems."""
        self.steerer = (
            Steerer(Steerer.for_node(settings.groups, settings.node.name), self.view, steering)
            if steering is not None
            else None
        )
        if self.mesh is not None and self.steerer is not None:
            self.mesh.news.on_serving = self.steerer.hear  # news of new owners steers at once
        self.reconciled = asyncio.Event()
        """Set once the start-up reconcile is done and the members run."""
        self.settled = asyncio.Event()
        """Set once every member made its first decision (adoptions included)."""
        self.retirement = ClaimRetirement(
            view=self.view,
            store=store,
            clock=clock,
            timing=settings.timing,
            node=settings.node.name,
            incarnation=self.incarnation,
            listed=lambda: {str(ip) for g in self.groups for ip in g.egress_ips},
            held=lambda: {m.name for m in self.members.values()},
            started_at=lambda: self.liveness.started_at,
        )
        """Claims to delete: IPs no group lists any more."""

    @functools.cached_property
    def lapses(self) -> HolderLapses:
        """One timer per holder node, waking the standbys of its claims when it may have lapsed."""
        settings = self.settings
        return HolderLapses(
            node=settings.node.name, view=self.view, liveness=self.liveness, clock=self.clock, timing=settings.timing
        )

    def _wire_mesh(self, mesh: Mesh) -> None:
        """The node lease and the mesh, both ways: our promises and receipts
        for the members' takeovers, the sequence each renew carries, promises
        taken extending the right, wakes and transfer offers."""
        self.liveness.promised_until = mesh.promised_until
        self.liveness.heartbeat_seq = lambda: mesh.seq
        self.liveness.sent_by = mesh.sent_by
        mesh.on_promise = self.liveness.extended
        mesh.on_wake = self._woken
        mesh.on_offer = self._offered

    def _build_mesh(self, transport: MeshTransport | None) -> Mesh | None:
        settings = self.settings
        clock = self.clock
        if self.mesh_timing is None or transport is None:
            return None
        return Mesh(
            node=settings.node.name,
            incarnation=self.incarnation,
            transport=transport,
            clock=clock,
            timing=settings.timing,
            mesh=self.mesh_timing,
            port=settings.mesh.port if settings.mesh is not None else DEFAULT_PORT,
            heartbeat_peers=self._heartbeat_targets,
            candidate_peers=lambda: frozenset(self.peer_set()) | self.liveness.published_peers,
            address_of=self._peer_address,
            api_ok=lambda: bool(self.liveness.right()),
            metrics=self.metrics,
            listen_peers=lambda: self.steerer.listens_to() if self.steerer is not None else frozenset(),
            incarnation_of=self._peer_incarnation,
        )

    def _build_replication(self, conntrack: Conntrack | None, guard: ConnectionGuard | None) -> Replication | None:
        settings = self.settings
        mesh = self.mesh
        if mesh is None or conntrack is None or not settings.conntrack.enabled:
            return None
        replication = Replication(
            node=settings.node.name,
            incarnation=self.incarnation,
            settings=settings.conntrack,
            conntrack=conntrack,
            transport=mesh.transport,
            port=mesh.port,
            clock=self.clock,
            owned=lambda: [str(m.ip) for m in self._owners()],
            peers_of=self._peers_of_ip,
            address_of=self._peer_address,
            candidate=self._candidate_with_us,
            holder_of=self._holder_of,
            peer_incarnation=mesh.peer_incarnation.get,
            guard=guard,
        )
        mesh.on_conntrack = replication.on_batch
        mesh.on_peer_promise = replication.on_peer_promise
        self.status_parts["conntrack"] = replication.status
        return replication

    def _group_of(self, ip: str) -> EgressGroup | None:
        return next((g for g in self.candidate_groups() if any(str(i) == ip for i in g.egress_ips)), None)

    def _peers_of_ip(self, ip: str) -> frozenset[str]:
        """The other candidates of ``ip`` (the conntrack stream's receivers)."""
        group = self._group_of(ip)
        return frozenset(group.candidates) - {self.settings.node.name} if group is not None else frozenset()

    def _candidate_with_us(self, node: str, ip: str) -> bool:
        return node in self._peers_of_ip(ip)

    def _holder_of(self, ip: str) -> str | None:
        record = self.view.get(lease_name(ip)).record
        return record.holder if record is not None and record.holder else None

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
        if self.mesh_timing is None:
            log.info("mesh off (no mesh.keyFile): serving on API rights alone; an API outage stops egress")
        elif self.mesh is None:
            log.info("mesh timings set but no mesh socket: serving on API rights alone")
        _ = self.liveness.started_at  # this process starts now
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

    def peer_set(self) -> tuple[str, ...]:
        """The other candidates of the groups this node is a candidate of, sorted
        (published in the node lease for the mesh)."""
        return tuple(sorted(rights.peer_set(self.settings.node.name, (g.candidates for g in self.groups))))

    def held_groups(self) -> tuple[EgressGroup, ...]:
        """The groups this node serves an IP of (owner)."""
        served = {m.ip for m in self._owners()}
        return tuple(g for g in self.candidate_groups() if any(ip in served for ip in g.egress_ips))

    def _heartbeat_targets(self) -> frozenset[str]:
        """Whom to send heartbeats now: our required peers while we serve on a
        right. Without one we ask for no promise: a standby takes over only
        once the promises it gave have run out, so a holder that lost its right
        must let them run out."""
        return self.required_peers() if self.liveness.right() else frozenset()

    def required_peers(self) -> frozenset[str]:
        """The peers whose promises our peer right needs (and who get our
        heartbeats): the other candidates of the groups we serve IPs of, and
        those of our last published peer set who are candidates no more (they
        may still count on it); empty while we serve nothing
        (``rights.required_peers``)."""
        served = (g.candidates for g in self.held_groups())
        return rights.required_peers(self.settings.node.name, served, self.peer_set(), self.liveness.published_peers)

    def _peer_incarnation(self, peer: str) -> str | None:
        entry = self.view.node(peer)
        return entry.record.incarnation if entry is not None and entry.record is not None else None

    def _peer_address(self, peer: str) -> str | None:
        entry = self.view.node(peer)
        return entry.record.address if entry is not None and entry.record is not None else None

    async def _open_mesh(self) -> None:
        """Bind the mesh socket on the node's address; the mesh's tasks start."""
        if self.mesh is None:
            return
        address = self.settings.node.address
        if address is None:  # steering only (a candidate needs an address): nothing to promise
            log.info("mesh off: this node has no node.address and is no gateway candidate")
            return
        await self.mesh.transport.open(str(address), self.mesh.port)
        self.mesh.open = True
        self.supervisor.spawn("mesh-receive", self.mesh.receive_forever)
        self.supervisor.spawn("mesh-heartbeat", self.mesh.heartbeat_forever)
        if self.steerer is not None:
            self.supervisor.spawn("mesh-listen", self.mesh.listen_forever)
        if self.replication is not None:
            self.supervisor.spawn("conntrack-events", self.replication.follow)
            self.supervisor.spawn("conntrack-stream", self.replication.run)

    def _wake_successor(self, released: LeaseRecord, successor: str) -> None:
        """A member released its claim to ``successor``: wake it over the mesh."""
        if self.mesh is not None and self.mesh.wake(
            released.egress_ip, released.transitions, released.resource_version, successor
        ):
            log.debug("ip=%s node=%s woke %s over the mesh", released.egress_ip, self.settings.node.name, successor)

    def _woken(self, wake: Wake) -> WakeVerdict:
        """A wake from a candidate peer: judged (``judge_wake``) and, if worth
        it, handed to the IP's member, which reads its claim at once."""
        try:
            member = self.members.get(ip_address(wake.ip))
        except ValueError:  # the parser let through only addresses; never here
            member = None
        verdict = judge_wake(
            wake,
            me=self.settings.node.name,
            candidates=member.group.candidates if member is not None else None,
            known=self.view.get(member.name).record if member is not None else None,
        )
        if member is not None and verdict.action is WakeAction.READ:
            member.woken(wake)
        return verdict

    def _offer_claim(self, ip: str, epoch: int, successor: str) -> asyncio.Future[Accept] | None:
        """A member leaving ``ip`` offers its claim to ``successor`` over the mesh."""
        return self.mesh.offer(ip, epoch, successor) if self.mesh is not None else None

    def _offered(self, offer: Offer) -> OfferVerdict:
        """An offer from a candidate peer: judged by the IP's member, which
        records it if it accepts."""
        try:
            member = self.members.get(ip_address(offer.ip))
        except ValueError:  # the parser let through only addresses; never here
            member = None
        if member is None:
            return OfferVerdict(False, "not-candidate", f"{offer.ip}: not a candidate here")
        return member.offered(offer)

    def _owners(self) -> list[Member]:
        return [m for m in self.members.values() if m.sm.state is State.OWNER]

    async def _rearm(self, ttl: float) -> None:
        """After a node-lease renew: re-arm the kernel fences of every owned IP
        at once, under every owner's data-plane lock (so no IP withdrawn
        meanwhile is armed again): one nftables transaction for the set
        elements, then one batched refresh of the addresses' lifetimes. Its
        cost per IP is what a thousand owned IPs pay four times a second, so
        the right is read twice, not once per IP. ``ttl`` is the right's fence
        (``rights.fence_ttl``); under the API right it is the configured
        ``fenceTtl`` the SNAT adapter arms."""
        if ttl <= 0:
            return
        # an owner whose data plane is busy (taking over, withdrawing) is left
        # out: its takeover arms its fences itself, a withdrawal needs none,
        # and waiting for it would hold every other IP's fences back
        owners = [m for m in self._owners() if not m.dp_lock.locked()]
        if not owners:
            return
        taken: list[asyncio.Lock] = []
        try:
            for member in owners:
                await member.dp_lock.acquire()  # free, as just checked: taken without a wait
                taken.append(member.dp_lock)
            await self._rearm_locked(owners)
        finally:
            for lock in taken:
                lock.release()

    async def _rearm_locked(self, owners: list[Member]) -> None:
        # the fences may only be re-armed within the right they rest on
        # (T1 counts their TTL from a moment before the renew deadline)
        if not self.liveness.right():
            return
        ttl = self.liveness.fence_ttl()  # now, after the locks: a peer right's fence ends before its promise
        if ttl <= 0:
            return
        armed = [m for m in owners if m.sm.state is State.OWNER and not m.serving_locally]
        if not armed:
            return
        try:
            await self.dataplane.snat.refresh_fence([m.ip for m in armed], ttl)
        except DataPlaneError as exc:
            log.error("could not re-arm the nftables fence of %d IP(s): %s", len(armed), exc)
        if not self.liveness.right():
            return  # the transaction outlasted the right: the daemon fence withdraws them all
        lifetime = self.settings.timing.address_lifetime
        try:
            await self.dataplane.addresses.refresh([(m.ip, m.group.interface) for m in armed], lifetime)
        except DataPlaneError as exc:
            log.error("could not re-arm the address lifetimes: %s", exc)

    async def _lapsed(self, detail: str) -> None:
        """The daemon fence: the node lease's right lapsed, every owner withdraws."""
        owners = self._owners()
        if owners:
            await asyncio.gather(*(m.step_down("renew-deadline", detail) for m in owners))
            for member in owners:
                member.wake()  # its loop waits for news while holding: it decides again (to take it back)

    async def _clash(self, detail: str) -> None:
        """Another process renews this node's lease: every member fences itself."""
        await asyncio.gather(*(m.fence_clash(detail) for m in self.members.values()))
        for member in self.members.values():
            member.wake()

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
            await self._hand_off_unwanted(wanted)
            try:
                await self.dataplane.snat.stage(self.candidate_groups())
            except DataPlaneError as exc:
                log.error("could not stage SNAT: %s", exc)
            self._start_wanted(wanted)
            for interface in sorted({g.interface for g in self.candidate_groups()} - self._prepared):
                if self.settled.is_set():
                    await self._prepare(interface)
            if self.members and "drift-repair" not in self.supervisor.running():
                self.supervisor.spawn("drift-repair", self._repair_forever)
            if self.steerer is not None and "steering" not in self.supervisor.running():
                self.supervisor.spawn("steering", self.steerer.run)

    async def _hand_off_unwanted(self, wanted: Mapping[IPAddress, EgressGroup]) -> None:
        """Removes the members of IPs not in ``wanted`` or whose group or
        interface changed; the claims of IPs no group lists go to retirement."""
        listed = {ip for g in self.groups for ip in g.egress_ips}
        for ip, member in list(self.members.items()):
            group = wanted.get(ip)
            if group is None or (group.name, group.interface) != (member.group.name, member.group.interface):
                await self._remove_member(ip, member, group)
                if ip not in listed:
                    self.retirement.add(member.name, str(ip))

    def _start_wanted(self, wanted: Mapping[IPAddress, EgressGroup]) -> None:
        """Starts a member for each IP of ``wanted`` that has none, and gives the
        others their group as it is now."""
        for ip, group in wanted.items():
            existing = self.members.get(ip)
            if existing is None:
                log.info(
                    "ip=%s node=%s now a candidate (group %s); starting its member",
                    ip,
                    self.settings.node.name,
                    group.name,
                )
                self._add_member(ip, group, adopt=False)
            elif existing.group != group:
                existing.group = group

    async def _remove_member(self, ip: IPAddress, member: Member, group: EgressGroup | None) -> None:
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
            liveness=self.liveness,
            events=self.events,
            metrics=self.metrics,
            serving_locally=adopt,
            wake=self._wake_successor,
            offer=self._offer_claim,
            announce=self.mesh.announce if self.mesh is not None else None,
            connections=self.replication,
            lapses=self.lapses,
        )
        self.members[ip] = member
        # the loop returns only after stop_soon(); a failure starts it again
        self.supervisor.spawn(f"member:{ip}", member.run, one_shot=True)

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
            adopt = await reconcile.reconcile_at_start(
                self.view, self.dataplane, self.settings.node.name, groups, self.settings.timing
            )
            self.liveness.metrics = self.metrics  # as the members: the metrics as they are at start
            self.peer_rights.events = self.events
            if self.mesh is not None:
                self.mesh.metrics = self.metrics
            await self._open_mesh()
            await self.liveness.renew_once()
            self.supervisor.spawn("node-lease", self._renew_after_first)
            self.supervisor.spawn("node-fence", self.liveness.fence)
            self.supervisor.spawn("fence-rearm", self.liveness.rearm_forever)
            self.supervisor.spawn("holder-lapses", self.lapses.run)
            for group in groups:
                for ip in group.egress_ips:
                    self._add_member(ip, group, adopt=ip in adopt)
            listed = {str(ip) for g in self.groups for ip in g.egress_ips}
            for record in self.view.records():
                if record.egress_ip not in listed:  # left by a policy deleted or an IP removed meanwhile
                    self.retirement.retiring[record.name] = record.egress_ip
            self.supervisor.spawn("retire-claims", self.retirement.run)
            self.reconciled.set()
            log.info("started %d member(s): %s", len(self.members), ", ".join(map(str, self.members)) or "-")
            self.supervisor.spawn("settle", lambda: self._settle(groups), one_shot=True)
            if self.members:
                self.supervisor.spawn("drift-repair", self._repair_forever)
            if self.steerer is not None and (self.steerer.groups or self.settings.mode == "kubernetes"):
                self.supervisor.spawn("steering", self.steerer.run)

    async def _renew_after_first(self) -> None:
        await self.clock.sleep(self.settings.timing.retry_period)
        await self.liveness.run()

    def health(self) -> tuple[bool, list[str]]:
        """Liveness (:func:`egressd.runtime.health.liveness`)."""
        return health.liveness(
            self.members,
            self.supervisor,
            self.clock.monotonic(),
            self.settings.timing,
            started=self.reconciled.is_set(),
        )

    def readiness(self) -> tuple[bool, list[str]]:
        """Readiness: the initial reconcile is done and the API is reachable."""
        return health.readiness(
            reconciled=self.reconciled.is_set(), connected=self.store.connected(), checks=self.ready_checks
        )

    def status_report(self) -> dict[str, Any]:
        """This daemon's own view, for ``egressd status`` (served on /status)."""
        ok, problems = self.health()
        now = self.clock.monotonic()
        right = self.liveness.right(now)
        left = round(right.until - now, 3) if right else None
        return {
            "node": self.settings.node.name,
            "incarnation": self.incarnation,
            "healthy": ok,
            "problems": problems,
            "members": health.members_report(self.members, now, right),
            "right": {"source": right.source.value, "reason": right.reason, "secondsLeft": left},
            "peerRightSeconds": round(self.peer_rights.seconds(now), 3),
            "steering": health.steering_report(self.steerer),
        } | {name: part() for name, part in self.status_parts.items()}

    def serving_rights(self) -> dict[tuple[str, ...], float]:
        """(egress IP, ``api``/``peer``) -> 1/0 for each IP this node serves
        (:func:`egressd.runtime.health.serving_rights`)."""
        return health.serving_rights(self.members, self.liveness.right())

    def renew_ages(self) -> dict[str, float]:
        """Seconds since the last successful renew of each IP this node owns."""
        return health.renew_ages(self.members, self.clock.monotonic())

    def may_announce(self, ip: IPAddress) -> bool:
        """Whether this node may still claim ``ip`` on the wire right now."""
        member = self.members.get(ip)
        return member is not None and member.serving

    def report_conflict(self, ip: IPAddress, mac: str) -> None:
        """Another MAC claims an IP we serve (from the announcer's ARP listener)."""
        member = self.members.get(ip)
        health.report_conflict(
            ip,
            mac,
            node=self.settings.node.name,
            epoch=member.epoch if member else 0,
            at=self.clock.monotonic(),
            metrics=self.metrics,
            events=self.events,
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
        """One pass of drift repair (:func:`egressd.runtime.reconcile.repair_drift`)."""
        return await reconcile.repair_drift(
            self.dataplane, self.members, self.candidate_groups(), right=lambda: bool(self.liveness.right())
        )

    async def _repair_forever(self) -> None:
        await reconcile.repair_forever(self.repair_interval, self.repair_drift)

    async def _shutdown(self) -> None:
        sup = self.supervisor
        for member in self.members.values():
            member.stop_soon()  # ends the loop even if a cancellation were lost on the way
        for ip in self.members:
            await sup.cancel(f"member:{ip}")
        if self.members:
            # every owned IP at once: offers first (their accepts come back
            # meanwhile), one withdrawal of all, then each claim handed over
            owners = self._owners()
            offers = {}
            for m in owners:
                successor = m.next_candidate()
                offer = m.offer(successor) if successor is not None else None
                if offer is not None:
                    offers[m.ip] = offer
            try:
                left = await asyncio.wait_for(withdraw_together(owners, "shutdown"), self.shutdown_grace)
            except TimeoutError:
                log.error("the withdrawal of %d IPs did not finish in %.1fs", len(owners), self.shutdown_grace)
                left = {}
            done = await asyncio.wait(
                [
                    asyncio.create_task(
                        m.shutdown(offered=offers.get(ip), withdrawn=left.get(ip)), name=f"shutdown:{ip}"
                    )
                    for ip, m in self.members.items()
                ],
                timeout=self.shutdown_grace,
            )
            for task in done[1]:
                log.error("shutdown of %s did not finish in %.1fs", task.get_name(), self.shutdown_grace)
        await sup.shutdown(grace=1.0)
        if self.mesh is not None:
            self.mesh.open = False
            self.mesh.transport.close()
        await self.store.close()
        log.info("egressd stopped (%s)", sup.stop_reason or "no reason")
