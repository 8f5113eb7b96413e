"""This gateway's node lease: renewed every ``retryPeriod``, the source of the
serving right of every IP the node holds, and the daemon fence that withdraws
them all when that right lapses.

* **Renew.** One write per retry period, whatever the number of IPs
  (:mod:`egressd.core.node_lease`). Only a gateway candidate renews; a node
  that only steers has no node lease. The renew carries the process's
  incarnation, the node's address, its lease duration and its published peer
  set, and (mesh on) the sequence of the last mesh datagram sent when the
  renew was stamped: read in the same step as the clock, no await between,
  so every datagram numbered above it left after the stamp the right counts
  from. The right runs from the *send* time of the last renew answered within
  ``renewDeadline`` (``rights.serving_right``); a retry of the write resends
  the same body within that deadline, never with a newer stamp.
* **Kernel fences.** After each successful renew the fences of every owned IP
  are re-armed at once, by a task of their own so a slow data plane never
  delays the next renewal: one nftables transaction for the set elements, then
  one batched netlink write for the addresses' lifetimes (a cost per renew,
  not per IP and renew); TTL ``rights.fence_ttl`` (under the API right, the
  election's ``fenceTtl``, which T1 keeps before any takeover).
* **Daemon fence.** When the right lapses every owned IP is withdrawn (reason
  ``renew-deadline``), whatever the members are doing; a hung API call never
  delays it. Every right it reads goes to ``observed`` (the daemon's
  :class:`~egressd.runtime.peer_rights.PeerRightWatch`), and under the API
  right it also wakes when that right ends, so a move onto peer rights is
  reported when it happens.
* **Identity clash.** A renew that loses a race reads the lease back; if it
  shows our node with another process's token after we wrote ours, a second
  daemon claims this node's identity: every IP is fenced and the renewals stop
  for the clash hold-off (the other process, finding ours, does the same).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

from egressd.core import rights
from egressd.core.backoff import Repeats
from egressd.core.election import CLASH_HOLD_OFF, MESH_OFF, api_right
from egressd.core.errors import ApiError, ApiTimeout, LostRace, MalformedLease, NotFound
from egressd.core.model import Settings
from egressd.core.node_lease import NodeLeaseRecord, node_lease_name
from egressd.ports import Clock, LeaseStore, Metrics
from egressd.runtime.sinks import NullMetrics
from egressd.runtime.supervisor import wait_event
from egressd.runtime.view import LeaseView

log = logging.getLogger(__name__)


class NodeLiveness:
    def __init__(
        self,
        settings: Settings,
        *,
        store: LeaseStore,
        view: LeaseView,
        clock: Clock,
        incarnation: str,
        peers: Callable[[], tuple[str, ...]],
        candidate: Callable[[], bool],
        rearm: Callable[[float], Awaitable[None]],
        lapsed: Callable[[str], Awaitable[None]],
        clash: Callable[[str], Awaitable[None]],
        metrics: Metrics | None = None,
        mesh: rights.MeshTiming | None = None,
        required_peers: Callable[[], frozenset[str]] = frozenset,
        promises: Callable[[], Mapping[str, float]] = dict,
    ) -> None:
        self._settings = settings
        self._timing = settings.timing
        self._store = store
        self._view = view
        self._clock = clock
        self.incarnation = incarnation
        self.name = node_lease_name(settings.node.name)
        self._peers = peers
        self._candidate = candidate
        self._rearm = rearm
        self._lapsed = lapsed
        self._clash = clash
        self.metrics = metrics or NullMetrics()
        self.mesh = mesh or MESH_OFF
        """The promises' timings (``MESH_OFF``: no mesh, the API right alone)."""
        self._required_peers = required_peers
        """The peers whose promises a peer right needs now."""
        self._promises = promises
        """Peer -> send time of the heartbeat its latest promise answered."""
        self.observed: Callable[[rights.Right, float], object] = lambda _right, _now: None
        """Told of every right the daemon fence reads, and when (the peer-right
        watch's :meth:`~egressd.runtime.peer_rights.PeerRightWatch.observe`)."""
        self.promised_until: Callable[[str], float | None] = lambda _holder: None
        """The end of our latest promise to a holder (the mesh's; none without it)."""
        self.heartbeat_seq: Callable[[], int | None] = lambda: None
        """The sequence of the last mesh datagram sent (the mesh's; None
        without it): each renew carries it."""
        self.sent_by: Callable[[str, str, int], float | None] = lambda _holder, _incarnation, _seq: None
        """When we first took a datagram of a holder's process numbered above
        a sequence (the mesh's receipts; None without them)."""
        self.last_api_write: float | None = None
        """Send time of the last successful API write of this process (a
        renew, or a claim write): a peer right lasts at most ``maxHold`` from it."""
        self._started_at: float | None = None
        self.last_renew_sent: float | None = None
        """Send time of the last renew answered within the renew deadline."""
        self.renews = 0
        """Successful renews so far."""
        self._rearm_due = asyncio.Event()
        """Set by a successful renew: :meth:`rearm_forever` re-arms the kernel fences."""
        self.changed = asyncio.Event()
        """Set after every successful renew (the fence recomputes its deadline)."""
        self._record: NodeLeaseRecord | None = None
        """Our node lease as last written or read back (its resourceVersion is the next write's base)."""
        self._published: frozenset[str] = frozenset()
        """Every peer the node lease may name now: the peer set of the last
        write that succeeded, joined with those of the writes whose outcome is
        unknown since (a timed-out renew may have landed) and of a read back."""
        self._base_on_view = True
        """Without a record of our own, write over the view's (False after a 404: create)."""
        self._wrote = False
        """This process has written the lease at least once (a later foreign token is a clash)."""
        self._clash_until: float | None = None
        self._failures = Repeats()
        self.log = logging.LoggerAdapter(log, {"node": settings.node.name})

    @property
    def started_at(self) -> float:
        """When this process started, as far as its claims are concerned: the
        first time anyone asked (the daemon does at start). Later than the real
        start only makes the waits that count from it longer."""
        if self._started_at is None:
            self._started_at = self._clock.monotonic()
        return self._started_at

    # --- the right -------------------------------------------------------------

    def right(self, now: float | None = None) -> rights.Right:
        """The serving right now: the API right of the last renew, a peer right
        from the promises (mesh on), or none (``rights.serving_right``)."""
        now = self._clock.monotonic() if now is None else now
        if self.mesh is MESH_OFF:
            return api_right(self.last_renew_sent, now, self._timing)
        holding = rights.Holding(
            last_renew_sent=self.last_renew_sent,
            last_api_write=self.last_api_write,
            required_peers=self._required_peers(),
            promises=self._promises(),
        )
        return rights.serving_right(holding, now, self._timing, self.mesh)

    @property
    def published_peers(self) -> frozenset[str]:
        """Every peer our node lease may name now (empty before the first
        write): the peer set last written, and after a renew whose outcome is
        unknown also the one it tried to write, until a write succeeds. A
        holder needs promises from all of them (``rights.required_peers``): a
        peer dropped from our groups that still sees itself in our lease takes
        over without waiting ``maxHold``."""
        return self._published

    def fence_ttl(self, now: float | None = None) -> float:
        """The kernel fence to arm now under the right now (0: none)."""
        now = self._clock.monotonic() if now is None else now
        return rights.fence_ttl(self.right(now), now, self._timing, self.mesh)

    def api_written(self, sent: float) -> None:
        """A claim write sent at ``sent`` succeeded (the API answers us)."""
        self.last_api_write = sent if self.last_api_write is None else max(self.last_api_write, sent)

    def extended(self) -> None:
        """A promise came in: the right may reach further; the daemon fence
        recomputes its deadline, and under a peer right the kernel fences are
        re-armed (under the API right the renewals re-arm them)."""
        if self.last_renew_sent is not None or self.last_api_write is not None:
            self.changed.set()
            if self.right().source is rights.Source.PEER:
                self._rearm_due.set()

    # --- renewing --------------------------------------------------------------

    def _record_to_write(self) -> NodeLeaseRecord:
        node = self._settings.node
        base = self._record
        if base is None and self._base_on_view:
            entry = self._view.node(node.name)
            base = entry.record if entry is not None else None
        return NodeLeaseRecord(
            name=self.name,
            node=node.name,
            incarnation=self.incarnation,
            lease_duration=self._timing.lease_duration,
            resource_version=base.resource_version if base is not None else "",
            address=str(node.address) if node.address else None,
            peers=tuple(sorted(set(self._peers()) - {node.name})),
            renew_time=self._clock.wall(),
            heartbeat_seq=self.heartbeat_seq(),
        )

    def stamped_by(self, record: NodeLeaseRecord) -> float | None:
        """The heartbeat bound of a holder's node-lease version: when we took a
        datagram of the renewing process sent after the renew was stamped (its
        sequence above the one the renew carries); None: none taken, or the
        lease carries no sequence (no mesh, an earlier version)."""
        if record.heartbeat_seq is None:
            return None
        return self.sent_by(record.node, record.incarnation, record.heartbeat_seq)

    async def renew_once(self) -> bool:
        """One renew (none while not a candidate or after a clash); whether it
        extended the right."""
        now = self._clock.monotonic()
        _ = self.started_at
        if not self._candidate() or (self._clash_until is not None and now < self._clash_until):
            return False
        # the stamp and the record (its heartbeat sequence) in one step, no
        # await between: every datagram numbered above it leaves after `started`
        started = self._clock.monotonic()
        record = self._record_to_write()
        written = await self._write(record, deadline=started + self._timing.renew_deadline)
        if written is None:
            return False
        if record.resource_version and written.resource_version == record.resource_version:
            # the API server keeps an update that changes nothing as it was:
            # no new version, no event, so standbys saw no renewal (the
            # renewTime makes each renewal differ unless the wall clock stands still)
            self.log.warning("node lease renew changed nothing (renewTime unchanged?): no right from it")
            return False
        self._record = written
        self._published = frozenset(written.peers)  # a write based on an older version can no longer land
        self._base_on_view = True
        self._wrote = True
        self._view.observe_node(self._settings.node.name, written)
        if self._clock.monotonic() - started >= self._timing.renew_deadline:
            self.log.warning("node lease renew answered after renewDeadline: no right from it")
            return False
        self.last_renew_sent = started
        self.api_written(started)
        self.renews += 1
        self.changed.set()
        self._rearm_due.set()
        return True

    async def _write(self, record: NodeLeaseRecord, *, deadline: float) -> NodeLeaseRecord | None:
        """The write of a renew; None when it failed (what failed is handled here)."""
        started = self._clock.monotonic()
        try:
            written = await self._store.write_node_lease(record, deadline=deadline)
        except ApiError as exc:
            self.metrics.renew("node", self._clock.monotonic() - started, ok=False, error=type(exc).__name__)
            self.metrics.api_error(type(exc).__name__)
            await self._failed(exc, record)
            return None
        self.metrics.renew("node", self._clock.monotonic() - started, ok=True)
        ended = self._failures.succeeded()
        if ended:
            self.log.info("node lease renewed after %d failure(s) in a row", ended)
        return written

    async def _failed(self, exc: ApiError, record: NodeLeaseRecord) -> None:
        """After a failed renew write: a lost race reads the lease back (a clash
        shows there), a deleted lease is created again, anything else is
        logged (the first failure, then at powers of two)."""
        if isinstance(exc, LostRace):
            self._failures.failed("LostRace")
            self.log.info("node lease renew lost a race (%s); reading it back", exc)
            await self._read_back()
        elif isinstance(exc, NotFound):
            self._failures.failed("NotFound")
            self.log.warning("node lease was deleted; creating it again at the next renew")
            self._record = None
            self._base_on_view = False
        else:
            level = logging.WARNING if self._failures.failed(type(exc).__name__) else logging.DEBUG
            self.log.log(level, "node lease renew failed (%d in a row): %s", self._failures.failures, exc)
            if isinstance(exc, ApiTimeout):
                self._record = None  # it may have landed: the next write bases on the view
                self._published |= frozenset(record.peers)  # and the lease may name its peers

    async def _read_back(self) -> None:
        try:
            deadline = self._clock.monotonic() + self._timing.api_timeout
            current = await self._store.get_node_lease(self.name, deadline=deadline)
        except MalformedLease as exc:
            # ours to write: overwrite it at the next renew
            self.log.error("node lease unreadable (%s); overwriting it", exc)
            self._record = None
            return
        except ApiError as exc:
            self.log.warning("could not read the node lease back: %s", exc)
            return
        self._record = current
        if current is not None:
            self._published |= frozenset(current.peers)
        self._base_on_view = current is not None
        if current is not None:
            self._view.observe_node(self._settings.node.name, current)
        if current is not None and self._wrote and current.incarnation != self.incarnation:
            hold = CLASH_HOLD_OFF * self._timing.lease_duration
            self._clash_until = self._clock.monotonic() + hold
            self.last_renew_sent = None
            self.last_api_write = None  # and no peer right either
            self.changed.set()
            detail = f"node lease renewed by incarnation {current.incarnation!r}, ours is {self.incarnation!r}"
            self.log.error("identity clash: %s; fencing every IP and pausing renewals for %.1fs", detail, hold)
            self._wrote = False
            await self._clash(detail)

    async def run(self) -> None:
        """Renew every retry period, forever."""
        _ = self.started_at
        while True:
            started = self._clock.monotonic()
            await self.renew_once()
            await self._clock.sleep(max(0.0, started + self._timing.retry_period - self._clock.monotonic()))

    async def rearm_forever(self) -> None:
        """Re-arm the kernel fences after each successful renew, apart from the
        renewals: a slow data plane must never delay the next renew (the right
        of every IP), and renewals that came meanwhile are served by one
        re-arm. Nothing is re-armed once the right has lapsed."""
        while True:
            await self._rearm_due.wait()
            self._rearm_due.clear()
            now = self._clock.monotonic()
            right = self.right(now)
            if right:
                await self._rearm(rights.fence_ttl(right, now, self._timing, self.mesh))

    # --- the daemon fence -------------------------------------------------------

    async def fence(self) -> None:
        """Withdraw every owned IP when the right lapses, whatever else is going on."""
        while True:
            self.changed.clear()
            timeout: float | None = None
            if self.last_renew_sent is not None:
                now = self._clock.monotonic()
                right = self.right(now)
                self.observed(right, now)
                if right:
                    timeout = self._next_look(right, now)
                else:
                    detail = f"no successful node-lease renew for {now - self.last_renew_sent:.3f}s ({right.reason})"
                    await self._lapsed(detail)
            await wait_event(self.changed, timeout)

    def _next_look(self, right: rights.Right, now: float) -> float:
        """Seconds until the right ends, or, under the API right with a peer
        right reaching further, until the API right ends: the move onto peer
        rights is seen (and reported) when it happens."""
        api_end = self.last_renew_sent + self._timing.renew_deadline if self.last_renew_sent is not None else now
        if right.source is rights.Source.API and now < api_end < right.until:
            return api_end - now
        return right.until - now
