"""Fakes at egressd's own interfaces (ports), never mocks of libraries.

:class:`FakeLeaseStore` keeps leases in memory with the API server's
optimistic concurrency (a global resourceVersion, LostRace on a stale one)
and fans changes out to watchers. ``pause()`` makes every call hang until
``resume()``, like a frozen API server (a call gives up at its deadline);
``wedge()`` makes every call hang past its deadline too, like a client stuck
in a call; ``fail()`` makes calls raise ApiUnavailable.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from egressd.adapters.mesh import MeshSocket
from egressd.core.conntrack_entries import Entry, Removal
from egressd.core.errors import ApiTimeout, ApiUnavailable, LostRace, NotFound
from egressd.core.kube_objects import RESOURCES
from egressd.core.lease import LeaseRecord, released
from egressd.core.mesh_messages import Message, encode
from egressd.core.node_lease import NodeLeaseRecord
from egressd.ports import ClusterEvent, ConntrackEvent, ConntrackFailure, LeaseEvent


class FakeLeaseStore:
    def __init__(self) -> None:
        self.leases: dict[str, LeaseRecord] = {}
        self.node_leases: dict[str, NodeLeaseRecord] = {}
        """Node leases by name, apart from the claims as the API's list is split by the store."""
        self.node_writes: list[NodeLeaseRecord] = []
        self.rv = 0
        self.writes: list[tuple[str, LeaseRecord]] = []
        self._watchers: list[asyncio.Queue[LeaseEvent]] = []
        self._running = asyncio.Event()
        self._running.set()
        self._failing = False
        self._wedged = False

    # --- test controls ---
    def pause(self) -> None:
        self._running.clear()

    def wedge(self) -> None:
        self._wedged = True
        self._running.clear()

    def resume(self) -> None:
        self._wedged = False
        self._running.set()

    def fail(self, failing: bool = True) -> None:
        self._failing = failing

    def put(self, record: LeaseRecord) -> LeaseRecord:
        """Write directly, as another client would (no concurrency check)."""
        self.rv += 1
        stored = replace(record, resource_version=str(self.rv))
        self.leases[record.name] = stored
        self._publish(LeaseEvent(kind="upsert", name=record.name, record=stored))
        return stored

    def put_node(self, record: NodeLeaseRecord) -> NodeLeaseRecord:
        """Write a node lease directly, as another client would."""
        self.rv += 1
        stored = replace(record, resource_version=str(self.rv))
        self.node_leases[record.name] = stored
        self._publish(LeaseEvent(kind="upsert", name=record.name, node=stored))
        return stored

    def delete_node(self, name: str) -> None:
        self.rv += 1
        del self.node_leases[name]
        self._publish(LeaseEvent(kind="delete", name=name))

    # --- LeaseStore ---
    async def _gate(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        if self._wedged:
            await self._running.wait()
        try:
            async with asyncio.timeout(max(0.0, deadline - loop.time())):
                await self._running.wait()
        except TimeoutError:
            raise ApiTimeout("fake API server paused") from None
        if self._failing:
            raise ApiUnavailable("fake API server failing")

    async def get(self, name: str, *, deadline: float) -> LeaseRecord | None:
        await self._gate(deadline)
        return self.leases.get(name)

    async def create(self, record: LeaseRecord, *, deadline: float) -> LeaseRecord:
        await self._gate(deadline)
        if record.name in self.leases:
            raise LostRace(f"{record.name} already exists")
        self.writes.append(("create", record))
        return self.put(record)

    async def update(self, record: LeaseRecord, *, deadline: float) -> LeaseRecord:
        await self._gate(deadline)
        current = self.leases.get(record.name)
        if current is None or current.resource_version != record.resource_version:
            raise LostRace(f"{record.name}: stale resourceVersion {record.resource_version}")
        self.writes.append(("update", record))
        return self.put(record)

    async def release(self, record: LeaseRecord, *, successor: str | None, deadline: float) -> LeaseRecord:
        now = record.renew_time or datetime(2026, 1, 1)
        return await self.update(
            released(record, successor=successor, now=now + timedelta(seconds=1)), deadline=deadline
        )

    async def delete(self, record: LeaseRecord, *, deadline: float) -> bool:
        await self._gate(deadline)
        current = self.leases.get(record.name)
        if current is None:
            return False
        if current.resource_version != record.resource_version:
            raise LostRace(f"{record.name}: precondition failed: resourceVersion {record.resource_version}")
        self.writes.append(("delete", record))
        self.rv += 1
        del self.leases[record.name]
        self._publish(LeaseEvent(kind="delete", name=record.name))
        return True

    async def list_leases(self, *, deadline: float) -> list[LeaseRecord]:
        await self._gate(deadline)
        return list(self.leases.values())

    async def get_node_lease(self, name: str, *, deadline: float) -> NodeLeaseRecord | None:
        await self._gate(deadline)
        return self.node_leases.get(name)

    async def write_node_lease(self, record: NodeLeaseRecord, *, deadline: float) -> NodeLeaseRecord:
        await self._gate(deadline)
        current = self.node_leases.get(record.name)
        if (current.resource_version if current else "") != record.resource_version:
            raise LostRace(f"{record.name}: stale resourceVersion {record.resource_version!r}")
        self.node_writes.append(record)
        return self.put_node(record)

    async def watch(self) -> AsyncIterator[LeaseEvent]:
        queue: asyncio.Queue[LeaseEvent] = asyncio.Queue()
        self._watchers.append(queue)
        try:
            await self._running.wait()
            yield LeaseEvent(kind="sync", records=tuple(self.leases.values()), nodes=tuple(self.node_leases.values()))
            while True:
                event = await queue.get()
                await self._running.wait()
                yield event
        finally:
            self._watchers.remove(queue)

    def connected(self) -> bool:
        return self._running.is_set() and not self._failing

    async def close(self) -> None:
        pass

    def _publish(self, event: LeaseEvent) -> None:
        for queue in self._watchers:
            queue.put_nowait(event)


class FakeCluster:
    """:class:`egressd.ports.ClusterSource` in memory: objects per resource,
    watchers that get a ``RELISTED`` of each resource and then every change,
    status writes with the API server's optimistic concurrency, and the Events
    created."""

    RESOURCES = RESOURCES

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, dict[str, Any]]] = {r: {} for r in self.RESOURCES}
        self.rv = 0
        self.events: list[dict[str, Any]] = []
        self.status_writes = 0
        self._watchers: list[asyncio.Queue[ClusterEvent]] = []

    @staticmethod
    def key(obj: dict[str, Any]) -> str:
        meta = obj["metadata"]
        return f"{meta.get('namespace', '')}/{meta['name']}"

    def put(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace an object (spec changes bump a policy's generation)."""
        stored = copy.deepcopy(obj)
        meta = stored.setdefault("metadata", {})
        old = self.objects[resource].get(self.key(stored))
        self.rv += 1
        meta["resourceVersion"] = str(self.rv)
        meta.setdefault("uid", f"uid-{meta['name']}")
        meta.setdefault("creationTimestamp", f"2026-11-24T10:00:{self.rv:02d}Z")
        if old is not None:
            meta["creationTimestamp"] = old["metadata"]["creationTimestamp"]
            generation = old["metadata"].get("generation", 1)
            meta["generation"] = generation + (1 if old.get("spec") != stored.get("spec") else 0)
            stored.setdefault("status", old.get("status", {}))
        else:
            meta["generation"] = 1
        self.objects[resource][self.key(stored)] = stored
        self._publish(ClusterEvent(resource, "MODIFIED" if old else "ADDED", copy.deepcopy(stored)))  # type: ignore[arg-type]
        return stored

    def get(self, resource: str, name: str, namespace: str = "") -> dict[str, Any]:
        return self.objects[resource][f"{namespace}/{name}"]

    def delete(self, resource: str, name: str, namespace: str = "") -> None:
        obj = self.objects[resource].pop(f"{namespace}/{name}")
        self._publish(ClusterEvent(resource, "DELETED", obj))  # type: ignore[arg-type]

    def relabel(self, resource: str, name: str, labels: Mapping[str, str | None], namespace: str = "") -> None:
        obj = copy.deepcopy(self.get(resource, name, namespace))
        current = obj["metadata"].setdefault("labels", {})
        for k, v in labels.items():
            if v is None:
                current.pop(k, None)
            else:
                current[k] = v
        self.put(resource, obj)

    async def watch(self) -> AsyncIterator[ClusterEvent]:
        queue: asyncio.Queue[ClusterEvent] = asyncio.Queue()
        for resource in self.RESOURCES:
            objs = tuple(copy.deepcopy(o) for o in self.objects[resource].values())
            queue.put_nowait(ClusterEvent(resource, "RELISTED", objects=objs))
        self._watchers.append(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._watchers.remove(queue)

    async def write_policy_status(
        self, name: str, status: Mapping[str, Any], resource_version: str, *, deadline: float
    ) -> Mapping[str, Any]:
        current = self.objects["policies"].get(f"/{name}")
        if current is None:
            raise NotFound(f"policy {name} not found")
        if current["metadata"]["resourceVersion"] != resource_version:
            raise LostRace(f"policy {name}: resourceVersion {resource_version} is stale")
        self.status_writes += 1
        updated = copy.deepcopy(current)
        updated["status"] = copy.deepcopy(dict(status))
        self.rv += 1
        updated["metadata"]["resourceVersion"] = str(self.rv)
        self.objects["policies"][f"/{name}"] = updated
        self._publish(ClusterEvent("policies", "MODIFIED", copy.deepcopy(updated)))
        return copy.deepcopy(updated)

    async def create_event(self, event: Mapping[str, Any], *, deadline: float) -> None:
        name = event["metadata"]["name"]
        if any(e["metadata"]["name"] == name for e in self.events):
            raise LostRace(f'events "{name}" already exists')  # 409 AlreadyExists, as the API server answers
        self.events.append(dict(event))

    def reasons(self, kind: str | None = None, name: str | None = None) -> list[str]:
        """Reasons of the Events created, optionally only those about one object."""
        return [
            e["reason"]
            for e in self.events
            if (kind is None or e["involvedObject"]["kind"] == kind)
            and (name is None or e["involvedObject"]["name"] == name)
        ]

    def _publish(self, event: ClusterEvent) -> None:
        for queue in self._watchers:
            queue.put_nowait(event)


class FakeMeshNetwork:
    """The node network of the mesh tests: datagrams between
    :class:`FakeMeshSocket` s by address, delivered at once unless the link
    between the two addresses is cut; ``inject`` delivers raw bytes as from
    anyone (forged, unsigned, recorded datagrams)."""

    def __init__(self) -> None:
        self.sockets: dict[str, FakeMeshSocket] = {}
        self.cut: set[frozenset[str]] = set()
        self.delivered: list[tuple[str, str, bytes]] = []
        """(from host, to host, datagram) of every datagram delivered."""

    def socket(self, key: bytes) -> FakeMeshSocket:
        return FakeMeshSocket(key, self)

    def cut_link(self, a: str, b: str) -> None:
        self.cut.add(frozenset((a, b)))

    def mend_link(self, a: str, b: str) -> None:
        self.cut.discard(frozenset((a, b)))

    def deliver(self, data: bytes, source: tuple[str, int], to: tuple[str, int]) -> None:
        target = self.sockets.get(to[0])
        if target is None or frozenset((source[0], to[0])) in self.cut:
            return
        self.delivered.append((source[0], to[0], data))
        target.feed(data, source)

    def inject(self, data: bytes, source: tuple[str, int], to: str) -> None:
        self.deliver(data, source, (to, 0))


class FakeMeshSocket(MeshSocket):
    """The mesh socket with its checks (signature, fields, counters), on the
    fake network instead of UDP."""

    def __init__(self, key: bytes, network: FakeMeshNetwork) -> None:
        super().__init__(key)
        self.network = network
        self.bound: tuple[str, int] | None = None

    async def open(self, host: str, port: int) -> tuple[str, int]:
        self.bound = (host, port)
        self.network.sockets[host] = self
        return self.bound

    def close(self) -> None:
        if self.bound is not None and self.network.sockets.get(self.bound[0]) is self:
            del self.network.sockets[self.bound[0]]
        self.bound = None

    def send(self, message: Message, peer: tuple[str, int]) -> None:
        if self.bound is None:
            raise RuntimeError("the mesh socket is not open")
        self.sent += 1
        self.network.deliver(encode(message, self._key), self.bound, peer)


_READABLE = ConntrackEvent("update")
"""What wakes :meth:`FakeConntrack.events` to read what is queued (never yielded)."""


class FakeConntrack:
    """One kernel's conntrack table of egressd's flows (the Conntrack port),
    keyed like the kernel's by protocol and original tuple. ``install``
    refuses an entry whose flow is there (``exists``), ``delete`` a flow that
    is not (``absent``), as the kernel does. The owner's side of a test
    changes the table with ``flow_new``/``flow_update``/``flow_gone``, which
    also emit the events; ``overflow`` emits the kernel's "events lost"."""

    def __init__(self) -> None:
        self.table: dict[Removal, Entry] = {}
        self.installs: list[list[Entry]] = []
        """Every batch :meth:`install` was given, in order."""
        self._watchers: list[asyncio.Queue[ConntrackEvent]] = []
        self.socket_like = False
        """Deliver one event per turn of the event loop, as a socket read
        each: events published at once wait in ``_queued`` meanwhile."""
        self._queued: list[ConntrackEvent] = []

    async def dump(self) -> list[Entry]:
        return list(self.table.values())

    async def events(self) -> AsyncIterator[ConntrackEvent]:
        queue: asyncio.Queue[ConntrackEvent] = asyncio.Queue()
        self._watchers.append(queue)
        try:
            while True:
                if self._queued:
                    await asyncio.sleep(0)  # one read per turn
                    yield self._queued.pop(0)
                    continue
                event = await queue.get()
                if event is not _READABLE:
                    yield event
        finally:
            self._watchers.remove(queue)

    def events_pending(self) -> bool:
        return bool(self._queued) or any(q.qsize() for q in self._watchers)

    async def install(self, entries: Sequence[Entry]) -> list[ConntrackFailure]:
        self.installs.append(list(entries))
        failures = []
        for entry in entries:
            if entry.key in self.table:
                failures.append(ConntrackFailure(entry, 17, "exists"))
            else:
                self.table[entry.key] = entry
        return failures

    async def delete(self, flows: Sequence[Removal]) -> list[ConntrackFailure]:
        failures = []
        for flow in flows:
            if self.table.pop(flow, None) is None:
                failures.append(ConntrackFailure(flow, 2, "absent"))
        return failures

    async def close(self) -> None:
        self._watchers.clear()

    def flow_new(self, entry: Entry) -> None:
        self.table[entry.key] = entry
        self._publish(ConntrackEvent("new", entry))

    def flow_update(self, entry: Entry) -> None:
        self.table[entry.key] = entry
        self._publish(ConntrackEvent("update", entry))

    def flow_gone(self, flow: Removal) -> None:
        self.table.pop(flow, None)
        self._publish(ConntrackEvent("destroy", flow))

    def overflow(self) -> None:
        self._publish(ConntrackEvent("overflow"))

    def _publish(self, event: ConntrackEvent) -> None:
        if self.socket_like and self._watchers:
            self._queued.append(event)
            if len(self._queued) == 1:
                self._watchers[0].put_nowait(_READABLE)  # wakes the reader
            return
        for queue in self._watchers:
            queue.put_nowait(event)
