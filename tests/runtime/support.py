"""What the runtime tests share: a daemon run as a task (with the mesh on a
fake network: :class:`MeshNode`), the check that no two recorded data planes
served one IP at once, a lease store that holds Lease objects egressd may not
be able to read, and one whose calls the test can cut (:class:`CutStore`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import replace
from ipaddress import ip_address
from typing import Any, TypeVar

from egressd.adapters.recording import RecordingDataPlane
from egressd.core import rights
from egressd.core.errors import ApiTimeout, LostRace, MalformedLease
from egressd.core.lease import ANN_DURATION_MS, LeaseRecord, lease_name, object_from_record, record_from_object
from egressd.core.mesh_settings import MeshSettings
from egressd.core.model import EgressGroup, IPAddress, NodeSettings, Settings, Timing
from egressd.core.node_lease import NodeLeaseRecord
from egressd.ports import Clock, LeaseEvent, LeaseStore
from egressd.runtime.daemon import Daemon
from egressd.runtime.liveness import NodeLiveness
from egressd.runtime.member import DataPlane
from egressd.runtime.view import LeaseView
from tests.fakes import FakeLeaseStore, FakeMeshNetwork
from tests.journal import intervals, overlaps
from tests.virtual_time import VirtualClock, until

TIMING = Timing(
    lease_duration=0.6,
    renew_deadline=0.25,
    retry_period=0.05,
    address_lifetime=1,
    api_timeout=0.1,
    non_preferred_delay=0.1,
    handoff_grace=0.6,
    fence_ttl=0.15,
)
"""Timings of the runtime tests: a takeover within a second of virtual time,
with the protocol's inequalities kept (T1: 0.6 > 0.25 + 0.15 + 0.05 + 0.1)."""


class RunsDaemon:
    """A test node: ``daemon`` run as ``task``."""

    daemon: Daemon
    task: asyncio.Task[int] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.daemon.run(install_signals=False))

    async def stop(self) -> None:
        self.daemon.supervisor.request_stop("test")
        assert self.task is not None
        await asyncio.wait_for(self.task, 5)

    async def crash(self) -> None:
        """Vanish without withdrawing (SIGKILL): nothing renews, nothing is released."""
        assert self.task is not None
        for name in self.daemon.supervisor.running():
            await self.daemon.supervisor.cancel(name)
        self.daemon.members.clear()
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


class RecordedNode(RunsDaemon):
    """A test node whose daemon records its data plane in ``plane``."""

    plane: RecordingDataPlane

    @property
    def name(self) -> str:
        return self.daemon.settings.node.name

    def serves(self, ip: IPAddress) -> bool:
        return ip in self.plane.snat


KEY = b"k" * 32
"""The mesh tests' cluster key."""
MESH = rights.MeshTiming(promise_duration=0.5, margin=0.01, max_hold=3.0, rtt_bound=0.05)
PORT = 7946
ADDRESSES = {"gw-a": "10.0.0.1", "gw-b": "10.0.0.2", "gw-c": "10.0.0.3", "wk-1": "10.0.0.9"}
"""Node addresses on the fake mesh network."""


class MeshNode(RecordedNode):
    """A test node of ``group`` with the mesh on ``net`` (None: no mesh key)."""

    def __init__(
        self, name: str, store: LeaseStore, net: FakeMeshNetwork | None, group: EgressGroup, key: bytes = KEY
    ) -> None:
        mesh = MeshSettings(key_file="/k", port=PORT, timing=MESH) if net is not None else None
        settings = Settings(
            node=NodeSettings(name=name, address=ip_address(ADDRESSES[name])),
            timing=TIMING,
            groups=(group,),
            mesh=mesh,
        )
        self.plane = RecordingDataPlane(name)
        self.daemon = Daemon(
            settings,
            store=store,
            dataplane=DataPlane(self.plane, self.plane, self.plane),
            steering=self.plane,
            clock=VirtualClock(),
            repair_interval=3600,
            mesh_transport=net.socket(key) if net is not None else None,
        )


Node_ = TypeVar("Node_", bound=RecordedNode)


def holder_and_other(nodes: Sequence[Node_], ip: IPAddress) -> tuple[Node_, Node_]:
    """The node serving ``ip`` now and the first of the others (a pair's
    standby)."""
    owner = next(n for n in nodes if n.serves(ip))
    return owner, next(n for n in nodes if n is not owner)


def owners(nodes: Iterable[RecordedNode], ip: IPAddress) -> list[str]:
    """The nodes serving ``ip`` now."""
    return [n.name for n in nodes if n.serves(ip)]


async def settle(nodes: Sequence[RecordedNode], ips: Iterable[IPAddress]) -> None:
    """Start ``nodes`` and wait until each of ``ips`` has exactly one owner."""
    for node in nodes:
        node.start()
    wanted = tuple(ips)
    await until(lambda: all(len(owners(nodes, ip)) == 1 for ip in wanted), 5.0)


async def stop_all(nodes: Iterable[RecordedNode]) -> None:
    """Stop every node still running (the test's cleanup)."""
    for node in nodes:
        if node.task is not None and not node.task.done():
            await node.stop()


def assert_no_two_owners(planes: Iterable[RecordingDataPlane]) -> None:
    ops = [op for plane in planes for op in plane.ops]
    # the recording data plane stamps its operations with the process's
    # monotonic clock, not the loop's: order is what the check is about
    bad = overlaps(intervals(ops, until=time.monotonic()))
    assert not bad, f"two nodes served one IP: {bad}"


class CutStore(FakeLeaseStore):
    """One node's way to the shared store, which the test can cut: calls then
    time out at their deadline, as towards an API server that does not answer."""

    def __init__(self, shared: FakeLeaseStore) -> None:
        self.shared = shared
        self.up = asyncio.Event()
        self.up.set()

    async def _through(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(max(0.0, deadline - loop.time())):
                await self.up.wait()
        except TimeoutError:
            raise ApiTimeout("cut from the API") from None

    async def get(self, name: str, *, deadline: float) -> LeaseRecord | None:
        await self._through(deadline)
        return await self.shared.get(name, deadline=deadline)

    async def create(self, record: LeaseRecord, *, deadline: float) -> LeaseRecord:
        await self._through(deadline)
        return await self.shared.create(record, deadline=deadline)

    async def update(self, record: LeaseRecord, *, deadline: float) -> LeaseRecord:
        await self._through(deadline)
        return await self.shared.update(record, deadline=deadline)

    async def release(self, record: LeaseRecord, *, successor: str | None, deadline: float) -> LeaseRecord:
        await self._through(deadline)
        return await self.shared.release(record, successor=successor, deadline=deadline)

    async def delete(self, record: LeaseRecord, *, deadline: float) -> bool:
        await self._through(deadline)
        return await self.shared.delete(record, deadline=deadline)

    async def list_leases(self, *, deadline: float) -> list[LeaseRecord]:
        await self._through(deadline)
        return await self.shared.list_leases(deadline=deadline)

    async def get_node_lease(self, name: str, *, deadline: float) -> NodeLeaseRecord | None:
        await self._through(deadline)
        return await self.shared.get_node_lease(name, deadline=deadline)

    async def write_node_lease(self, record: NodeLeaseRecord, *, deadline: float) -> NodeLeaseRecord:
        await self._through(deadline)
        return await self.shared.write_node_lease(record, deadline=deadline)

    def watch(self) -> AsyncIterator[LeaseEvent]:
        return self.shared.watch()

    def connected(self) -> bool:
        return self.up.is_set()


class ObjectLeaseStore(FakeLeaseStore):
    """The fake store, plus Lease *objects* written by another client. Like the
    API server it stores an object whatever it holds; like the Kubernetes
    adapter, readers decode it with :func:`record_from_object` (the watch per
    event and per sync, ``get`` per call), so whatever the parser raises
    reaches the daemon where the adapter's would."""

    def __init__(self) -> None:
        super().__init__()
        self.objects: dict[str, dict[str, Any]] = {}
        """Objects the parser refused when they were written, by name."""
        self.attempts: list[tuple[str, str]] = []
        """Every create/update/release asked for, by verb and lease name (won or not)."""

    ROUND_TRIP = 0.002
    """Seconds a call about an unreadable object takes, as over a network: a
    member that kept writing one would spin without time passing otherwise."""

    def put_object(self, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        try:
            record = record_from_object({**obj, "metadata": {**obj["metadata"], "resourceVersion": "0"}})
        except Exception:  # stored as it is, whatever it holds; the readers find out
            self.rv += 1
            self.leases.pop(name, None)
            self.objects[name] = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self.rv)}}
            self._publish(LeaseEvent(kind="upsert", name=name))  # no record: each watch decodes the object
            return
        self.objects.pop(name, None)
        self.put(record)

    def remove_object(self, name: str) -> None:
        """Delete a Lease as another writer would (no precondition)."""
        self.leases.pop(name, None)
        self.objects.pop(name, None)
        self._publish(LeaseEvent(kind="delete", name=name))

    async def get(self, name: str, *, deadline: float) -> LeaseRecord | None:
        record = await super().get(name, deadline=deadline)
        if name in self.objects:
            await asyncio.sleep(self.ROUND_TRIP)
            return record_from_object(self.objects[name])
        return record

    async def create(self, record: LeaseRecord, *, deadline: float) -> LeaseRecord:
        self.attempts.append(("create", record.name))
        if record.name in self.objects:
            await self._gate(deadline)
            await asyncio.sleep(self.ROUND_TRIP)
            raise LostRace(f"{record.name} already exists")
        return await super().create(record, deadline=deadline)

    async def update(self, record: LeaseRecord, *, deadline: float) -> LeaseRecord:
        self.attempts.append(("update", record.name))
        if record.name in self.objects:
            await self._gate(deadline)
            await asyncio.sleep(self.ROUND_TRIP)
            raise LostRace(f"{record.name}: stale resourceVersion {record.resource_version}")
        return await super().update(record, deadline=deadline)

    async def watch(self) -> AsyncIterator[LeaseEvent]:
        async for event in super().watch():
            if event.kind == "sync":
                records, problems = list(event.records), []
                for name, obj in self.objects.items():
                    try:
                        records.append(record_from_object(obj))
                    except MalformedLease as exc:
                        problems.append((name, str(exc)))
                yield replace(event, records=tuple(records), problems=tuple(problems))
            elif event.kind == "upsert" and event.record is None and event.node is None:
                if event.name in self.objects:
                    try:
                        record = record_from_object(self.objects[event.name])
                    except MalformedLease as exc:
                        yield LeaseEvent(kind="invalid", name=event.name, problem=str(exc))
                    else:
                        yield LeaseEvent(kind="upsert", name=event.name, record=record)
            else:
                yield event


def poisoned(ip: str, holder: str | None = "someone") -> dict[str, Any]:
    """A Lease for ``ip`` whose duration annotation has 400 digits."""
    record = LeaseRecord(
        name=lease_name(ip),
        egress_ip=ip,
        holder=holder,
        lease_duration=2.5,
        transitions=3,
        resource_version="",
        holder_address="10.0.0.7",
        incarnation="elsewhere",
    )
    obj = object_from_record(record, "egressd")
    obj["metadata"]["annotations"][ANN_DURATION_MS] = "9" * 400
    return obj


def virtual_daemons(
    store: FakeLeaseStore, group: EgressGroup, names: Iterable[str] = ("gw-a", "gw-b")
) -> tuple[dict[str, RecordingDataPlane], list[Daemon]]:
    """Daemons of ``group`` on recording data planes and the virtual clock
    (run them under :func:`tests.virtual_time.run_virtual`), with their planes by node."""
    planes = {name: RecordingDataPlane(name) for name in names}
    return planes, [
        Daemon(
            Settings(node=NodeSettings(name=name, address=ip_address("10.0.0.1")), timing=TIMING, groups=(group,)),
            store=store,
            dataplane=DataPlane(plane, plane, plane),
            clock=VirtualClock(),
            repair_interval=3600,
        )
        for name, plane in planes.items()
    ]


def standalone_liveness(
    settings: Settings, store: LeaseStore, view: LeaseView, clock: Clock, incarnation: str
) -> NodeLiveness:
    """A node lease for a member run without its daemon: renewed only when
    the test calls ``renew_once``; nothing owned to re-arm or fence."""

    async def nothing(*_: object) -> None:
        return None

    return NodeLiveness(
        settings,
        store=store,
        view=view,
        clock=clock,
        incarnation=incarnation,
        peers=lambda: (),
        candidate=lambda: True,
        rearm=nothing,
        lapsed=nothing,
        clash=nothing,
    )
