"""What this node has seen of the leases, and *when* it saw it.

The observation time of a lease is the local monotonic time at which this
node first saw its current resourceVersion (from the watch, a read, or the
answer to its own write). Expiry is measured from it, never from the
``renewTime`` another node wrote.

A lease that someone else wrote in a shape egressd cannot read is kept as a
*problem* entry: it is reported, and no member acts on it (it is neither free
nor expirable) until it is fixed or deleted.

Node leases (one per gateway candidate) are kept apart from the claims, by
node name (:meth:`LeaseView.node`): the observation time of a node's lease is
the holder's liveness as this node sees it. A node lease that cannot be read
is a problem entry too: the holder's liveness is then unknown, and nothing it
holds is taken over until it is readable again (or deleted).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from egressd.core.election import Observation
from egressd.core.lease import LeaseRecord
from egressd.core.node_lease import NODE_PREFIX, NodeLeaseRecord, is_node_lease
from egressd.ports import Clock, LeaseEvent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    record: LeaseRecord | None
    observed_at: float
    problem: str = ""
    provisional: bool = False
    """The record is a member's reconstruction of a write it was told of (a
    transfer, on the owner's word), not the API's copy: the API's copy of the
    same version replaces it."""

    @property
    def resource_version(self) -> str | None:
        return self.record.resource_version if self.record else None


@dataclass(frozen=True)
class NodeEntry:
    """A node lease as last seen, and when this node first saw its current
    version (the node's liveness by our own clock)."""

    record: NodeLeaseRecord | None
    observed_at: float
    problem: str = ""


def _same_kind(before: NodeEntry | None, after: NodeEntry) -> bool:
    """Whether a node lease changed only by a renewal (same process, readable before and after)."""
    if before is None or before.record is None or after.record is None or before.problem or after.problem:
        return False
    return before.record.incarnation == after.record.incarnation


def _newer(candidate: str, current: str) -> bool:
    """resourceVersions are opaque, but egressd must not let a late watch event
    replace the answer to its own newer write. Compare numerically when both
    are integers (etcd's are); otherwise accept the candidate."""
    if candidate.isdigit() and current.isdigit():
        return int(candidate) > int(current)
    return candidate != current


def _no_news(current: Entry | NodeEntry | None, record: LeaseRecord | NodeLeaseRecord | None, problem: str) -> bool:
    """Whether seeing ``record`` (None: gone), or ``problem``, tells nothing
    new over ``current``: the same or an older version, or gone again. A
    problem, or a readable lease after one, is always news."""
    if current is None or problem or current.problem:
        return False
    if record is not None and current.record is not None and isinstance(current, Entry) and current.provisional:
        return not _newer(record.resource_version, current.record.resource_version) and (
            record.resource_version != current.record.resource_version
        )
    if record is not None and current.record is not None:
        version = current.record.resource_version
        return record.resource_version == version or not _newer(record.resource_version, version)
    return record is None and current.record is None


class LeaseView:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._entries: dict[str, Entry] = {}
        self._nodes: dict[str, NodeEntry] = {}
        """Node leases by node name (the lease's name without its prefix)."""
        self.node_news = asyncio.Event()
        """Set whenever a node lease changes (the members of IPs held by that node look again)."""
        self._news: dict[str, asyncio.Event] = {}
        self.ready = asyncio.Event()
        """Set after the first full list (sync)."""
        self._listeners: list[asyncio.Event] = []
        self.any_news = self.listener()
        """Set whenever any entry changes (for steering)."""

    def listener(self, event: asyncio.Event | None = None) -> asyncio.Event:
        """An event (``event``, or a new one) set whenever any entry changes, for
        one more consumer of every lease (each clears its own). A consumer that
        also waits for other news passes its own event, so it waits on one."""
        event = event or asyncio.Event()
        self._listeners.append(event)
        return event

    def news(self, name: str) -> asyncio.Event:
        """An event set whenever the entry for ``name`` changes."""
        return self._news.setdefault(name, asyncio.Event())

    def get(self, name: str) -> Entry:
        entry = self._entries.get(name)
        if entry is None:
            entry = Entry(None, self._clock.monotonic())
            self._entries[name] = entry
        return entry

    def records(self) -> list[LeaseRecord]:
        return [e.record for e in self._entries.values() if e.record is not None]

    def observe(
        self,
        name: str,
        record: LeaseRecord | None,
        *,
        problem: str = "",
        notify: bool = True,
        provisional: bool = False,
    ) -> bool:
        """Record what was seen; returns whether it changed anything. A member
        recording the answer to its own write passes ``notify=False``: its own
        write is no news to itself. ``provisional``: see :attr:`Entry.provisional`."""
        current = self._entries.get(name)
        if _no_news(current, record, problem):
            return False
        self._entries[name] = Entry(record, self._clock.monotonic(), problem, provisional)
        if notify:
            self.news(name).set()
        for listener in self._listeners:
            listener.set()
        return True

    def problems(self) -> dict[str, str]:
        """The leases seen but unreadable now, by name: what is wrong with each."""
        problems = {name: e.problem for name, e in self._entries.items() if e.problem}
        problems |= {NODE_PREFIX + node: e.problem for node, e in self._nodes.items() if e.problem}
        return problems

    def observation(
        self, entry: Entry, stamped_by: Callable[[NodeLeaseRecord], float | None] = lambda _r: None
    ) -> Observation:
        """A claim as observed, with its holder's liveness: when we last saw
        the holder's node lease change (none: a holder of an earlier version,
        timed by its claim), or why that cannot be known; and the heartbeat
        bound of that node-lease version, by ``stamped_by`` (the mesh's
        receipts: ``NodeLiveness.stamped_by``)."""
        record = entry.record
        holder = self._nodes.get(record.holder) if record is not None and record.holder else None
        if holder is None:
            return Observation(entry.resource_version, entry.observed_at)
        if holder.problem:
            return Observation(entry.resource_version, entry.observed_at, holder_unknown=holder.problem)
        # a node lease seen deleted still times its holder from the deletion:
        # the holder's renewals failed from then on, so its right ends within
        # renewDeadline of it; only a holder never seen with a node lease (an
        # earlier version) is timed by its claim
        return Observation(
            entry.resource_version,
            entry.observed_at,
            holder_seen_at=holder.observed_at,
            holder_lease_duration=holder.record.lease_duration if holder.record is not None else None,
            holder_stamped_by=stamped_by(holder.record) if holder.record is not None else None,
        )

    def holder_observation(
        self, node: str, stamped_by: Callable[[NodeLeaseRecord], float | None] = lambda _r: None
    ) -> Observation | None:
        """The liveness of ``node`` as a holder of claims, as :meth:`observation`
        gives it for each claim, without the claim (``observed_at`` is -inf);
        None when its node lease is not readable now (never seen, deleted, or
        a problem): its claims are timed otherwise, each by its own decision."""
        holder = self._nodes.get(node)
        if holder is None or holder.record is None or holder.problem:
            return None
        return Observation(
            None,
            float("-inf"),
            holder_seen_at=holder.observed_at,
            holder_lease_duration=holder.record.lease_duration,
            holder_stamped_by=stamped_by(holder.record),
        )

    def node_entry(self, node: str) -> NodeEntry | None:
        """The node lease of ``node`` as last seen, deleted ones included (None: never seen)."""
        return self._nodes.get(node)

    def node(self, node: str) -> NodeEntry | None:
        """The node lease of ``node`` as last seen (None: never seen, or deleted)."""
        entry = self._nodes.get(node)
        if entry is None or (entry.record is None and not entry.problem):
            return None
        return entry

    def observe_node(self, node: str, record: NodeLeaseRecord | None, *, problem: str = "") -> bool:
        """Record a node lease as seen (None: deleted); whether it changed anything."""
        current = self._nodes.get(node)
        if _no_news(current, record, problem):
            return False
        if problem and (current is None or current.problem != problem):
            log.error("node lease of %s is unreadable; its claims will not be taken over: %s", node, problem)
        self._nodes[node] = NodeEntry(record, self._clock.monotonic(), problem)
        self.node_news.set()
        if _same_kind(current, self._nodes[node]):
            # a renewal only moves the holder's liveness later: the members
            # waiting on it look again at their recheck time, so a thousand
            # claims do not wake four times a second for nothing
            return True
        for name, e in self._entries.items():
            if e.record is not None and e.record.holder == node:
                self.news(name).set()
        return True

    def apply(self, event: LeaseEvent) -> None:
        if event.kind == "sync":
            self._sync(event.records, event.problems, event.nodes)
        elif event.kind == "upsert" and event.node is not None:
            self.observe_node(event.node.node, event.node)
        elif event.kind == "upsert" and event.record is not None:
            self.observe(event.name, event.record)
        elif event.kind == "delete" and is_node_lease(event.name):
            self.observe_node(event.name.removeprefix(NODE_PREFIX), None)
        elif event.kind == "delete":
            self.observe(event.name, None)
        elif event.kind == "invalid" and is_node_lease(event.name):
            self.observe_node(event.name.removeprefix(NODE_PREFIX), None, problem=event.problem)
        elif event.kind == "invalid":
            self._unreadable(event.name, event.problem)

    def _unreadable(self, name: str, problem: str) -> None:
        current = self._entries.get(name)
        if current is None or current.problem != problem:
            log.error("lease %s is unreadable and will not be acted on: %s", name or "-", problem)
        self.observe(name, None, problem=problem)

    def _sync(
        self,
        records: Iterable[LeaseRecord],
        problems: Iterable[tuple[str, str]] = (),
        nodes: Iterable[NodeLeaseRecord] = (),
    ) -> None:
        present = {r.name: r for r in records}
        unreadable = {name: p for name, p in problems if not is_node_lease(name)}
        node_problems = {name.removeprefix(NODE_PREFIX): p for name, p in problems if is_node_lease(name)}
        node_records = {n.node: n for n in nodes}
        for node in list(self._nodes):
            if node not in node_records and node not in node_problems:
                self.observe_node(node, None)
        for node, node_record in node_records.items():
            self.observe_node(node, node_record)
        for node, problem in node_problems.items():
            self.observe_node(node, None, problem=problem)
        for name in list(self._entries):
            if name not in present and name not in unreadable:
                self.observe(name, None)
        for name, record in present.items():
            self.observe(name, record)
        for name, problem in unreadable.items():
            self._unreadable(name, problem)
        self.ready.set()
