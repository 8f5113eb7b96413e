"""Connections survive a failover: the conntrack stream over the mesh, and the
install at takeover (DESIGN.md, "Connections survive a failover";
``docs/conntrack.md``).

**As holder of egress IPs** (:meth:`Replication.follow`, :meth:`Replication.run`):

1. follow the kernel's events of the flows egressd SNATs (marked by the
   SNAT rule), noting each change under its egress IP
   (:class:`~egressd.core.conntrack_stream.Outbox`);
2. every ``batchInterval``, send the changes of each IP this node serves to
   the IP's other candidates (the peers its heartbeats go to);
3. a **full resync** of an IP to a peer (one dump serves every resync due):
   when the peer answers a heartbeat for the first time, with a new
   incarnation, or after a silence; when the peer asks (it saw a gap); when
   the kernel lost events (``overflow``); and every ``resyncInterval``.
   One IP is resynced to one peer at most once per :data:`MIN_RESYNC_GAP`
   (what comes sooner waits), so a peer, or a replay of its requests,
   cannot make the holder dump its table continuously.
4. at a graceful handoff (and a shutdown), the changes not sent yet go
   out after the withdrawal and before the claim is released
   (:meth:`Replication.final_batch`).

**As candidate** (:meth:`Replication.on_batch`): keep what the holders send
(:class:`~egressd.core.conntrack_stream.Replica`), refusing and counting what
comes from a process of the peer whose heartbeat we did not take last
(``unknown-incarnation``), from a non-candidate, for an IP the sender does not
hold (by the view), or beyond ``maxEntriesPerPeer``; ask the holder for a
resync when the stream shows a gap.

**At takeover** (:meth:`Replication.takeover`, before the address and the
first gratuitous ARP): arm the guard for ``guardGrace`` (inbound packets of a
flow whose entry is not installed yet are dropped, not reset), install the
kept entries of the IP most recently updated first for at most
``installBudget``, and the rest right after, in the background. Entries are
never installed ahead of time on a node that does not hold the IP: there a
stale-steered packet would be translated by them (docs/conntrack.md
section 6).
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
from collections.abc import Callable, Iterable, Sequence

from egressd.core.conntrack_entries import Entry, Record
from egressd.core.conntrack_settings import ConntrackSettings
from egressd.core.conntrack_stream import Outbox, Replica, aged
from egressd.core.mesh_messages import CT_REQUEST, CtBatch
from egressd.ports import Clock, ConnectionGuard, Conntrack, MeshTransport

log = logging.getLogger(__name__)

MIN_RESYNC_GAP = 1.0
"""Seconds: the least time between two resyncs of one IP to one peer that a
peer's request (or a new incarnation) triggers, so that a peer, or someone
replaying its requests, cannot make the holder dump its table continuously."""
FIRST_CHUNK = 64
"""Entries installed in one call before the announcement, between two looks
at the budget (1-2 ms of kernel work each here: the budget is overrun by one
call at most)."""
INSTALL_CHUNK = 256
"""Entries installed in one call after the announcement."""
GUARD_READ_INTERVAL = 10.0
"""Seconds between two reads of the guard's drop counter (an ``nft`` listing)."""
DRAIN_TURNS = 256
DRAIN_SECONDS = 0.005
"""Turns of the event loop, and seconds, a final batch gives the events
socket at most: under a steady flood of new flows the socket is never empty,
and the handoff must not wait for it."""
AHEAD_VALID = 0.5
"""Seconds a guard armed beside the claim write (:meth:`Replication.arm_ahead`)
counts for the takeover that follows; later, the takeover arms it again, so
the guard always lasts about ``guardGrace`` after the announcement."""
"""Seconds between two reads of the guard's drop counter (an ``nft`` listing)."""
PACE_BURST = 16
PACE_GAP = 0.02
"""Datagrams sent back to back, and seconds between two such bursts: 800
datagrams (25,000 entries) a second, within what a candidate decodes (about
1.2 ms a datagram here) and what a socket's default receive buffer holds
meanwhile."""
QUIET = 1.0
"""Seconds a stream may stay without a whole resync and without news before
the candidate asks its holder again (the end of a resync may have been lost,
and no later datagram would show the gap)."""
SILENCE = 5.0
"""Seconds without a promise from a peer after which its next promise
triggers a resync (it may have lost datagrams while it was cut off)."""


class Replication:
    def __init__(
        self,
        *,
        node: str,
        incarnation: str,
        settings: ConntrackSettings,
        conntrack: Conntrack,
        transport: MeshTransport,
        port: int,
        clock: Clock,
        owned: Callable[[], Iterable[str]],
        peers_of: Callable[[str], frozenset[str]],
        address_of: Callable[[str], str | None],
        candidate: Callable[[str, str], bool],
        holder_of: Callable[[str], str | None],
        peer_incarnation: Callable[[str], str | None],
        guard: ConnectionGuard | None = None,
    ) -> None:
        self.node = node
        self.settings = settings
        self.conntrack = conntrack
        self.transport = transport
        self.port = port
        self.clock = clock
        self._owned = owned
        """The egress IPs this node serves now."""
        self._peers_of = peers_of
        """The other candidates of an egress IP."""
        self._address_of = address_of
        self._candidate = candidate
        """Whether a node is a candidate of an egress IP with us."""
        self._holder_of = holder_of
        """The holder of an egress IP's claim, by the view."""
        self._peer_incarnation = peer_incarnation
        """The incarnation of a peer's process whose heartbeat we took last."""
        self.guard = guard
        self.outbox = Outbox(node, incarnation)
        self.replica = Replica(settings.max_entries_per_peer)
        self._due: set[tuple[str, str]] = set()
        """(peer, IP) resyncs to send at the next flush."""
        self._resynced: dict[tuple[str, str], float] = {}
        self._asked: dict[tuple[str, str], float] = {}
        self._peers: dict[str, tuple[str, float]] = {}
        """Peer -> (incarnation, time) of its last promise."""
        self._last_periodic = clock.monotonic()
        self._installing: set[asyncio.Task[None]] = set()
        self._busy: set[str] = set()
        """IPs whose takeover's install runs (no resync of them meanwhile)."""
        self._rest: dict[str, tuple[list[Entry], Sequence[tuple[Entry, float]], float]] = {}
        """IP -> what its takeover left for after the announcement."""
        # what the operators see (status, metrics)
        self.sent: collections.Counter[str] = collections.Counter()
        """Entries and removals sent, per peer."""
        self.received: collections.Counter[str] = collections.Counter()
        """Entries and removals taken, per peer."""
        self.refused: collections.Counter[str] = collections.Counter()
        """Records (or datagrams) refused, by reason."""
        self.resyncs = 0
        self.resync_requests = 0
        self.installed = 0
        self.install_failed: collections.Counter[str] = collections.Counter()
        self.guard_drops = 0
        """Packets the guard dropped (read every :data:`GUARD_READ_INTERVAL` once it was armed)."""
        self._guard_armed = False
        self._guard_read = clock.monotonic()
        self._ahead: dict[str, tuple[asyncio.Task[bool], float]] = {}
        """IP -> the guard's arming started beside the claim write, and when."""
        self.install_seconds: list[float] = []
        """Seconds each takeover's install took (before and after the GARP), the last 100."""

    # --- the holder's side -----------------------------------------------------------------------

    async def follow(self) -> None:
        """Note every change of the flows egressd SNATs (until cancelled)."""
        async for event in self.conntrack.events():
            if event.kind == "overflow":
                log.warning("conntrack events were lost: resyncing every IP served to its peers")
                self.resync_all()
            elif event.record is not None:
                self.outbox.change(event.record)

    async def run(self) -> None:
        """Send the changes every ``batchInterval``, and the resyncs due."""
        # open the request socket now, not on a takeover's path (an empty
        # install opens it and sends nothing)
        await self.conntrack.install([])
        while True:
            await self.clock.sleep(self.settings.batch_interval)
            await self.flush()

    def resync_all(self, peer: str | None = None) -> None:
        """Make a resync due for every IP served, to ``peer`` (None: every peer)."""
        for ip in self._owned():
            for p in self._peers_of(ip):
                if peer is None or p == peer:
                    self._due.add((p, ip))

    async def flush(self) -> None:
        """Send the pending changes and the resyncs due."""
        owned = set(self._owned())
        for ip in self.outbox.pending():
            records = self.outbox.take(ip)
            if ip not in owned:
                self.outbox.forget(ip)  # no longer ours: its new holder streams it
                continue
            await self._send_changes(ip, records)
        self._periodic(owned)
        await self._resync(owned)
        await self._read_guard()
        for holder, ip in self.replica.unsynced(self.clock.monotonic(), QUIET):
            address = self._address_of(holder)
            if address is not None and self._holder_of(ip) == holder:
                self._ask(holder, ip, (address, self.port))

    async def _read_guard(self) -> None:
        now = self.clock.monotonic()
        if self.guard is None or not self._guard_armed or now - self._guard_read < GUARD_READ_INTERVAL:
            return
        self._guard_read = now
        try:
            self.guard_drops = await self.guard.guard_drops()
        except Exception as exc:
            log.warning("could not read the connection guard's counter: %s", exc)

    def _periodic(self, owned: set[str]) -> None:
        interval = self.settings.resync_interval
        now = self.clock.monotonic()
        if interval and now - self._last_periodic >= interval:
            self._last_periodic = now
            for ip in owned:
                self._due.update((p, ip) for p in self._peers_of(ip))

    async def _resync(self, owned: set[str]) -> None:
        """The resyncs due, of IPs still served; one resynced less than
        :data:`MIN_RESYNC_GAP` ago waits (stays due)."""
        now = self.clock.monotonic()
        self._due = {(p, ip) for p, ip in self._due if ip in owned}
        installing = set(self._rest) | self._busy  # a dump now would hold part of them; the stream carries them
        due = {
            (p, ip)
            for p, ip in self._due
            if now - self._resynced.get((p, ip), -MIN_RESYNC_GAP) >= MIN_RESYNC_GAP and ip not in installing
        }
        self._due -= due
        if not due:
            return
        try:
            table = await self.conntrack.dump()
        except Exception as exc:  # a failed dump is tried again at the next flush
            log.error("conntrack dump for a resync failed: %s", exc)
            self._due |= due
            return
        self.outbox.known(table)
        by_ip: dict[str, list[Entry]] = collections.defaultdict(list)
        for entry in table:
            by_ip[str(entry.egress_ip)].append(entry)
        for peer, ip in sorted(due):
            await self._send(peer, self.outbox.datagrams(peer, ip, by_ip.get(ip, []), resync=True))
            self._resynced[(peer, ip)] = now
            self.resyncs += 1
            log.info("ip=%s node=%s conntrack resync to %s: %d entries", ip, self.node, peer, len(by_ip.get(ip, [])))

    async def _send(self, peer: str, batches: Sequence[CtBatch]) -> None:
        """Send ``batches`` to ``peer``, :data:`PACE_BURST` datagrams per
        :data:`PACE_GAP` (a resync of 10,000 entries is 323 datagrams: sent at
        once they overflow the receiver's socket buffer, and a resync with a
        hole is no resync)."""
        address = self._address_of(peer)
        if address is None or not batches:
            return
        for at, batch in enumerate(batches):
            if at and at % PACE_BURST == 0:
                await self.clock.sleep(PACE_GAP)
            self.transport.send(batch, (address, self.port))
        self.sent[peer] += sum(b.payload[1] for b in batches if b.payload)  # the payload's record count

    def on_peer_promise(self, peer: str, incarnation: str) -> None:
        """A peer answered our heartbeat: resync it if it is new, restarted or
        was silent (it may have missed datagrams)."""
        now = self.clock.monotonic()
        last = self._peers.get(peer)
        self._peers[peer] = (incarnation, now)
        if last is None or last[0] != incarnation or now - last[1] > SILENCE:
            why = (
                "first answer"
                if last is None
                else "new incarnation"
                if last[0] != incarnation
                else "back after silence"
            )
            log.info("node=%s conntrack: resync due to %s (%s)", self.node, peer, why)
            self.resync_all(peer)

    async def _send_changes(self, ip: str, records: Sequence[Record]) -> None:
        """The changes of ``ip`` taken from the outbox, to each of its other candidates."""
        for peer in sorted(self._peers_of(ip)):
            await self._send(peer, self.outbox.datagrams(peer, ip, records))

    async def final_batch(self, ip: str) -> None:
        """After the withdrawal and before the release of ``ip`` (a handoff,
        a shutdown): read the events the kernel queued so far, then send its
        changes not sent yet to its candidates (the successor among them)."""
        await self._read_queued_events()
        records = self.outbox.take(ip)
        await self._send_changes(ip, records)
        self.outbox.forget(ip)
        log.info("ip=%s node=%s conntrack: final batch of %d changes sent", ip, self.node, len(records))

    async def _read_queued_events(self) -> None:
        """Let :meth:`follow` read every event the kernel queued so far (a
        flow opened just before the withdrawal), one socket read per turn of
        the loop; bounded, so a flood cannot hold a handoff back."""
        until = self.clock.monotonic() + DRAIN_SECONDS
        for _ in range(DRAIN_TURNS):
            await asyncio.sleep(0)
            if not self.conntrack.events_pending() or self.clock.monotonic() >= until:
                break
        await asyncio.sleep(0)  # the last read's events are noted

    # --- the candidate's side --------------------------------------------------------------------

    def on_batch(self, batch: CtBatch, sender: tuple[str, int]) -> None:
        """One conntrack datagram that passed the mesh's signature check."""
        if batch.flags & CT_REQUEST:
            self._requested(batch, sender)
            return
        if self._peer_incarnation(batch.sender) != batch.incarnation:
            self._refuse("unknown-incarnation", 1, sender, f"{batch.sender} process {batch.incarnation}")
            return
        taken = self.replica.take(
            batch,
            self.clock.monotonic(),
            candidate=self._candidate(batch.sender, batch.ip),
            holds=self._holder_of(batch.ip) == batch.sender,
        )
        self.received[batch.sender] += taken.taken
        for reason, n in taken.refused.items():
            self._refuse(reason, n, sender, taken.detail or f"{batch.sender} for {batch.ip}")
        if taken.resync:
            self._ask(batch.sender, batch.ip, sender)

    def _refuse(self, reason: str, n: int, sender: tuple[str, int], detail: str) -> None:
        self.refused[reason] += n
        self.transport.reject(f"conntrack-{reason}", sender, detail)

    def _ask(self, holder: str, ip: str, sender: tuple[str, int]) -> None:
        now = self.clock.monotonic()
        if now - self._asked.get((holder, ip), -MIN_RESYNC_GAP) < MIN_RESYNC_GAP:
            return
        self._asked[(holder, ip)] = now
        self.resync_requests += 1
        address = self._address_of(holder) or sender[0]
        log.info("ip=%s node=%s conntrack: asking %s for a resync", ip, self.node, holder)
        self.transport.send(CtBatch(self.node, self.outbox.incarnation, ip, 1, CT_REQUEST), (address, self.port))

    def _requested(self, batch: CtBatch, sender: tuple[str, int]) -> None:
        if batch.ip not in set(self._owned()) or batch.sender not in self._peers_of(batch.ip):
            self._refuse("request-not-held", 1, sender, f"{batch.sender} asks for {batch.ip}")
            return
        self._due.add((batch.sender, batch.ip))  # at most one per MIN_RESYNC_GAP (_resync)

    # --- takeover --------------------------------------------------------------------------------

    async def takeover(self, ip: str) -> None:
        """Before the address and the first gratuitous ARP of ``ip``: the
        guard, then the kept entries within the budget; the rest after."""
        started = self.clock.monotonic()
        ahead = self._ahead.pop(ip, None)
        if ahead is not None and started - ahead[1] <= AHEAD_VALID and await ahead[0]:
            pass  # armed beside the claim write, moments ago
        elif self.guard is not None:
            await self._arm(ip)
        kept = self.replica.kept(ip)
        self.replica.forget(ip)
        done = 0
        stale: list[Entry] = []
        while done < len(kept) and self.clock.monotonic() - started < self.settings.install_budget:
            stale += await self._install(ip, aged(kept[done : done + FIRST_CHUNK], started))
            done += FIRST_CHUNK
        before = min(done, len(kept))
        log.info(
            "ip=%s node=%s takeover: %d conntrack entries installed before the announcement in %.1f ms, %d after",
            ip, self.node, before, (self.clock.monotonic() - started) * 1000, len(kept) - before,
        )  # fmt: skip
        if before < len(kept) or stale:
            self._rest[ip] = (stale, kept[before:], started)
        else:
            self._record_install(started)

    def arm_ahead(self, ip: str) -> None:
        """About to write the claim of ``ip``: arm the guard now, beside the
        write, so the takeover does not wait for it. Harmless if the write
        fails: packets to ``ip`` reach this node only once it holds the address
        (its ARP), and the guard ends by itself after ``guardGrace``."""
        if self.guard is None:
            return
        task = asyncio.create_task(self._arm(ip), name=f"guard:{ip}")
        previous = self._ahead.get(ip)
        if previous is not None:
            previous[0].cancel()
        self._ahead[ip] = (task, self.clock.monotonic())

    async def _arm(self, ip: str) -> bool:
        """Arm the guard for ``ip``; whether that worked (a failure is logged)."""
        if self.guard is None:
            return False
        try:
            await self.guard.arm_guard([ipaddress.ip_address(ip)], self.settings.guard_grace)
        except Exception as exc:
            log.error("ip=%s node=%s could not arm the connection guard: %s", ip, self.node, exc)
            return False
        self._guard_armed = True
        return True

    def announced(self, ip: str) -> None:
        """The first gratuitous ARP of ``ip`` is out: install the rest now (not
        sooner: it would compete with the address, SNAT and ARP for the CPU)."""
        rest = self._rest.pop(ip, None)
        if rest is None:
            return
        task = asyncio.create_task(self._install_rest(ip, *rest), name=f"conntrack:{ip}")
        self._installing.add(task)
        task.add_done_callback(self._installing.discard)

    async def _install_rest(
        self, ip: str, stale: list[Entry], kept: Sequence[tuple[Entry, float]], started: float
    ) -> None:
        """After the announcement: replace the stale entries met before it,
        then install the rest (replacing what is stale among them at once)."""
        self._busy.add(ip)
        try:
            await self._replace(ip, stale)
            for at in range(0, len(kept), INSTALL_CHUNK):
                await self._replace(ip, await self._install(ip, aged(kept[at : at + INSTALL_CHUNK], started)))
        finally:
            self._busy.discard(ip)
        self._record_install(started)
        log.info("ip=%s node=%s takeover: all conntrack entries installed after %.1f ms",
                 ip, self.node, (self.clock.monotonic() - started) * 1000)  # fmt: skip

    async def _install(self, ip: str, entries: Sequence[Entry]) -> list[Entry]:
        """Install ``entries``; those refused because the flow has an entry
        already (``exists``), for :meth:`_replace`."""
        try:
            failures = await self.conntrack.install(entries)
        except Exception as exc:
            log.error("ip=%s node=%s conntrack install of %d entries failed: %s", ip, self.node, len(entries), exc)
            self.install_failed[type(exc).__name__] += len(entries)
            return []
        stale = [f.record for f in failures if f.reason == "exists" and isinstance(f.record, Entry)]
        self.installed += len(entries) - len(failures)
        for failure in failures:
            if failure.reason != "exists":
                self.install_failed[failure.reason] += 1
        return stale

    async def _replace(self, ip: str, stale: Sequence[Entry]) -> None:
        """Replace this node's own entries of these flows, left from when it
        held the IP before: their TCP state is older than what the holder
        sent, and their window tracking strict (until then the guard drops,
        never resets, what they would judge invalid). Done after the
        announcement: a delete and a create more per entry."""
        if not stale:
            return
        try:
            await self.conntrack.delete([e.key for e in stale])
            failures = await self.conntrack.install(stale)
        except Exception as exc:
            log.error("ip=%s node=%s replacing %d stale entries failed: %s", ip, self.node, len(stale), exc)
            return
        self.installed += len(stale) - len(failures)
        for failure in failures:
            self.install_failed[failure.reason] += 1

    def _record_install(self, started: float) -> None:
        self.install_seconds = [*self.install_seconds[-99:], self.clock.monotonic() - started]

    def left(self, ip: str) -> None:
        """This node stopped serving ``ip``: once the new holder had the
        time to install the flows (``guardGrace``), delete this node's own
        entries of it, unless it serves the IP again by then. Should the IP
        come back, its takeover then installs into a clean table: replacing
        an entry left here costs a delete and a create more, and 10,000 of
        them took about 3 s in the lab, as long as the guard lasts."""
        self._rest.pop(ip, None)
        task = asyncio.create_task(self._clear_later(ip), name=f"conntrack-clear:{ip}")
        self._installing.add(task)
        task.add_done_callback(self._installing.discard)

    async def _clear_later(self, ip: str) -> None:
        await self.clock.sleep(self.settings.guard_grace)
        if ip in set(self._owned()):
            return
        try:
            table = await self.conntrack.dump()
            ours = [e.key for e in table if str(e.egress_ip) == ip]
            if ip in set(self._owned()) or not ours:
                return
            failures = await self.conntrack.delete(ours)
        except Exception as exc:
            log.warning("ip=%s node=%s could not clear the entries left here: %s", ip, self.node, exc)
            return
        log.info("ip=%s node=%s cleared %d conntrack entries left from its tenure", ip, self.node,
                 len(ours) - len(failures))  # fmt: skip

    async def settle(self) -> None:
        """Wait for the installs under way (tests, shutdown)."""
        if self._installing:
            await asyncio.gather(*self._installing, return_exceptions=True)

    def status(self) -> dict[str, object]:
        """For ``egressd status``."""
        return {
            "entriesSent": dict(self.sent),
            "entriesReceived": dict(self.received),
            "entriesHeld": self.replica.held(),
            "installed": self.installed,
            "installFailed": dict(self.install_failed),
            "lastInstallSeconds": round(self.install_seconds[-1], 4) if self.install_seconds else None,
            "resyncs": self.resyncs,
            "resyncRequests": self.resync_requests,
            "refused": dict(self.refused),
            "guardDrops": self.guard_drops,
        }
