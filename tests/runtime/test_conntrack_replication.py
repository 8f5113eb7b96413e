"""Connections survive a failover, in the daemon on the virtual clock: the
holder streams the entries of its flows to the IP's other candidates, a
candidate keeps them and refuses what it must, and the new holder arms the
guard and installs them before its first gratuitous ARP."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable, Sequence
from ipaddress import ip_address

from egressd.adapters.recording import RecordingDataPlane
from egressd.core.conntrack_entries import Entry, Removal, snat_reply
from egressd.core.conntrack_settings import ConntrackSettings
from egressd.core.conntrack_stream import Outbox
from egressd.core.lease import LeaseRecord
from egressd.core.mesh_messages import encode
from egressd.core.mesh_settings import MeshSettings
from egressd.core.model import EgressGroup, IPAddress, NodeSettings, Settings
from egressd.ports import ConntrackFailure
from egressd.runtime.conntrack import QUIET, Replication
from egressd.runtime.daemon import Daemon
from egressd.runtime.member import DataPlane
from tests.core.test_conntrack_entries import ENTRY
from tests.fakes import FakeConntrack, FakeLeaseStore, FakeMeshNetwork
from tests.runtime.support import (
    ADDRESSES,
    KEY,
    MESH,
    PORT,
    TIMING,
    CutStore,
    RecordedNode,
    assert_no_two_owners,
    holder_and_other,
    owners,
    settle,
    stop_all,
)
from tests.virtual_time import VirtualClock, until

IPS = (ip_address("172.18.0.40"), ip_address("172.18.0.41"))
GROUP = EgressGroup(
    name="outpost", egress_ips=IPS, interface="net0", candidates=("gw-a", "gw-b"), source_cidrs=(), destination_cidrs=()
)
CT = ConntrackSettings(batch_interval=0.05, guard_grace=1.0, max_entries_per_peer=5000, resync_interval=0)


class PlaneConntrack(FakeConntrack):
    """The fake table, its installs recorded among the data plane's operations
    (so their order against the address and the GARP shows); each install
    call takes ``delay`` seconds."""

    def __init__(self, plane: RecordingDataPlane, delay: float = 0.0) -> None:
        super().__init__()
        self.plane = plane
        self.delay = delay

    async def install(self, entries: Sequence[Entry]) -> list[ConntrackFailure]:
        await asyncio.sleep(self.delay)
        self.plane._record("ct-install", n=len(entries))
        return await super().install(entries)


class PlaneGuard:
    def __init__(self, plane: RecordingDataPlane) -> None:
        self.plane = plane

    async def arm_guard(self, ips: Iterable[IPAddress], grace: float) -> None:
        self.plane._record("guard", ips=[str(ip) for ip in ips], grace=grace)

    async def guard_drops(self) -> int:
        return 7


class Node(RecordedNode):
    def __init__(
        self,
        name: str,
        store: FakeLeaseStore,
        net: FakeMeshNetwork,
        ct: ConntrackSettings = CT,
        delay: float = 0.0,
        groups: tuple[EgressGroup, ...] = (GROUP,),
    ) -> None:
        settings = Settings(
            node=NodeSettings(name=name, address=ip_address(ADDRESSES[name])),
            timing=TIMING,
            groups=groups,
            mesh=MeshSettings(key_file="/k", port=PORT, timing=MESH),
            conntrack=ct,
        )
        self.plane = RecordingDataPlane(name)
        self.table = PlaneConntrack(self.plane, delay)
        self.daemon = Daemon(
            settings,
            store=store,
            dataplane=DataPlane(self.plane, self.plane, self.plane),
            steering=self.plane,
            clock=VirtualClock(),
            repair_interval=3600,
            mesh_transport=net.socket(KEY),
            conntrack=self.table,
            guard=PlaneGuard(self.plane),
        )

    @property
    def replication(self) -> Replication:
        assert self.daemon.replication is not None
        return self.daemon.replication


def flow(port: int, egress: IPAddress) -> Entry:
    original = dataclasses.replace(ENTRY.original, sport=port)
    return dataclasses.replace(ENTRY, original=original, reply=snat_reply(original, egress, port))


def ports(entries: Sequence[Entry]) -> set[int]:
    return {e.original.sport for e in entries}


async def two(store: FakeLeaseStore, net: FakeMeshNetwork, **kw: float) -> list[Node]:
    nodes = [Node("gw-a", store, net, **kw), Node("gw-b", store, net, **kw)]  # type: ignore[arg-type]
    await settle(nodes, IPS)
    await asyncio.sleep(4 * TIMING.retry_period)  # promises answered: first resyncs sent
    return nodes


async def test_the_holder_streams_its_flows_and_the_candidate_keeps_them() -> None:
    store, net = FakeLeaseStore(), FakeMeshNetwork()
    nodes = await two(store, net)
    try:
        ip = IPS[0]
        owner, other = holder_and_other(nodes, ip)
        for port in (1001, 1002, 1003):
            owner.table.flow_new(flow(port, ip))
        owner.table.flow_update(dataclasses.replace(flow(1001, ip), timeout=77))
        owner.table.flow_gone(Removal(ENTRY.proto, flow(1003, ip).original))
        await asyncio.sleep(3 * CT.batch_interval)
        kept = other.replication.replica.entries_for(str(ip), asyncio.get_running_loop().time())
        assert ports(kept) == {1001, 1002}
        assert next(e for e in kept if e.original.sport == 1001).timeout <= 77
        assert other.replication.received[owner.name] == 3  # the latest change of each flow
        assert owner.replication.sent[other.name] == 3
        assert not other.replication.refused
        assert other.table.table == {}  # never installed ahead of time
        assert "conntrack" in other.daemon.status_report()
    finally:
        await stop_all(nodes)


async def test_a_candidate_joining_late_gets_a_full_resync() -> None:
    store, net = FakeLeaseStore(), FakeMeshNetwork()
    a = Node("gw-a", store, net)
    for i, ip in enumerate(IPS):
        for port in (2001 + 10 * i, 2002 + 10 * i):
            a.table.table[flow(port, ip).key] = flow(port, ip)  # flows before anyone listens
    await settle([a], IPS)
    b = Node("gw-b", store, net)
    nodes = [a, b]
    try:
        b.start()
        # b keeps the flows of the IP a holds, and installed those of the IP handed to it (spread)
        await until(lambda: sum(b.replication.replica.held_for(str(ip)) for ip in IPS) + len(b.table.table) == 4, 2.0)
        assert a.replication.resyncs >= 1
    finally:
        await stop_all(nodes)


async def test_a_lost_datagram_is_repaired_by_a_resync_the_candidate_asks_for() -> None:
    store, net = FakeLeaseStore(), FakeMeshNetwork()
    nodes = await two(store, net)
    try:
        ip = IPS[0]
        owner, other = holder_and_other(nodes, ip)
        net.cut_link(ADDRESSES["gw-a"], ADDRESSES["gw-b"])
        owner.table.flow_new(flow(3001, ip))
        await asyncio.sleep(2 * CT.batch_interval)  # sent into the cut: lost
        net.mend_link(ADDRESSES["gw-a"], ADDRESSES["gw-b"])
        owner.table.flow_new(flow(3002, ip))
        await until(lambda: other.replication.replica.held_for(str(ip)) == 2, 2.0)
        assert other.replication.resync_requests >= 1
    finally:
        await stop_all(nodes)


async def test_at_takeover_the_guard_and_the_entries_come_before_the_first_garp() -> None:
    shared, net = FakeLeaseStore(), FakeMeshNetwork()
    stores = [CutStore(shared), CutStore(shared)]
    nodes = [Node("gw-a", stores[0], net), Node("gw-b", stores[1], net)]
    try:
        await settle(nodes, IPS)
        await asyncio.sleep(4 * TIMING.retry_period)
        ip = IPS[0]
        owner, other = holder_and_other(nodes, ip)
        flows = [flow(p, ip) for p in range(4001, 4011)]
        for f in flows:
            owner.table.flow_new(f)
        stale = dataclasses.replace(flows[0], timeout=5)
        other.table.table[stale.key] = stale  # left from when the other held the IP before
        await asyncio.sleep(3 * CT.batch_interval)
        # the owner dies to the others: no API, no mesh
        stores[nodes.index(owner)].up.clear()
        net.cut_link(ADDRESSES["gw-a"], ADDRESSES["gw-b"])
        mark = len(other.plane.ops)
        await until(lambda: owners(nodes, ip) == [other.name], 6 * TIMING.lease_duration)
        await other.replication.settle()
        ops = [o for o in other.plane.ops[mark:] if o.get("ip") in (None, str(ip)) or o["op"] == "guard"]
        names = [o["op"] for o in ops]
        first = names.index("claim")
        assert names[:first].count("guard") == 1 and "ct-install" in names[:first]
        assert names.index("ct-install") < names.index("announce")
        assert ports(list(other.table.table.values())) == ports(flows)
        assert other.table.table[stale.key] == flows[0]  # the holder's state replaced the stale entry
        assert other.replication.installed == 10
        assert other.replication.replica.held_for(str(ip)) == 0  # installed, forgotten: its own stream now
        # the old owner clears its own entries of the IP once the guard's time is over
        assert any(str(e.egress_ip) == str(ip) for e in owner.table.table.values())
        await asyncio.sleep(CT.guard_grace + 0.1)
        assert not any(str(e.egress_ip) == str(ip) for e in owner.table.table.values())
        assert_no_two_owners(n.plane for n in nodes)
    finally:
        for s in stores:
            s.up.set()
        await stop_all(nodes)


class SlowClaims(CutStore):
    """Claim writes that take ``delay`` seconds, recorded in ``plane`` when they end."""

    def __init__(self, shared: FakeLeaseStore, delay: float) -> None:
        super().__init__(shared)
        self.delay = delay
        self.plane: RecordingDataPlane | None = None

    async def update(self, record: LeaseRecord, *, deadline: float) -> LeaseRecord:
        await asyncio.sleep(self.delay)
        written = await super().update(record, deadline=deadline)
        if self.plane is not None:
            self.plane._record("claim-written", ip=record.egress_ip)
        return written


async def test_the_guard_is_armed_beside_the_claim_write_not_after_it() -> None:
    """The guard's nftables transaction is off the takeover path: it runs
    while the claim write is on its way, and the takeover does not arm it again."""
    shared, net = FakeLeaseStore(), FakeMeshNetwork()
    stores = [SlowClaims(shared, 0.05), SlowClaims(shared, 0.05)]
    nodes = [Node("gw-a", stores[0], net), Node("gw-b", stores[1], net)]
    for node, store in zip(nodes, stores, strict=True):
        store.plane = node.plane
    try:
        await settle(nodes, IPS)
        await asyncio.sleep(4 * TIMING.retry_period)
        ip = IPS[0]
        owner, other = holder_and_other(nodes, ip)
        mark = len(other.plane.ops)
        # the owner dies to the others: no API, no mesh; the other takes over by a write
        stores[nodes.index(owner)].up.clear()
        net.cut_link(ADDRESSES["gw-a"], ADDRESSES["gw-b"])
        await until(lambda: owners(nodes, ip) == [other.name], 6 * TIMING.lease_duration)
        names = [o["op"] for o in other.plane.ops[mark:] if o.get("ip") in (None, str(ip)) or o["op"] == "guard"]
        assert names.count("guard") == 1
        assert names.index("guard") < names.index("claim-written") < names.index("claim")
    finally:
        for s in stores:
            s.up.set()
        await stop_all(nodes)


async def test_what_the_budget_leaves_is_installed_after_the_garp() -> None:
    shared, net = FakeLeaseStore(), FakeMeshNetwork()
    stores = [CutStore(shared), CutStore(shared)]
    nodes = [Node("gw-a", stores[0], net, delay=0.015), Node("gw-b", stores[1], net, delay=0.015)]
    try:
        await settle(nodes, IPS)
        await asyncio.sleep(4 * TIMING.retry_period)
        ip = IPS[0]
        owner, other = holder_and_other(nodes, ip)
        for p in range(1, 1201):
            owner.table.flow_new(flow(p, ip))
        await until(lambda: other.replication.replica.held_for(str(ip)) == 1200, 1.0)
        stores[nodes.index(owner)].up.clear()
        net.cut_link(ADDRESSES["gw-a"], ADDRESSES["gw-b"])
        mark = len(other.plane.ops)
        await until(lambda: owners(nodes, ip) == [other.name], 6 * TIMING.lease_duration)
        await other.replication.settle()
        names = [o["op"] for o in other.plane.ops[mark:] if o["op"] in ("ct-install", "announce")]
        garp = names.index("announce")
        # 15 ms a call, a budget of 20 ms: two calls of 64 before, the rest after in calls of 256
        assert names[:garp] == ["ct-install", "ct-install"]
        assert names[garp + 1 :].count("ct-install") == 5
        assert len(other.table.table) == 1200
    finally:
        for s in stores:
            s.up.set()
        await stop_all(nodes)


async def _slow_stream_pair() -> list[Node]:
    """Two nodes whose periodic batches are too slow to carry a flow before a
    handoff: only the final batch can; settled, promises given."""
    store, net = FakeLeaseStore(), FakeMeshNetwork()
    slow = dataclasses.replace(CT, batch_interval=2.0)
    nodes = [Node("gw-a", store, net, ct=slow), Node("gw-b", store, net, ct=slow)]
    await settle(nodes, IPS)
    await asyncio.sleep(4 * TIMING.retry_period)
    return nodes


async def test_a_graceful_handoff_sends_its_last_changes_before_the_release() -> None:
    nodes = await _slow_stream_pair()
    try:
        ip = IPS[0]
        owner, other = holder_and_other(nodes, ip)
        owner.table.flow_new(flow(5001, ip))
        await asyncio.sleep(0)
        await owner.stop()  # releases to the other candidate
        await until(lambda: owners(nodes, ip) == [other.name], 4 * TIMING.lease_duration)
        assert flow(5001, ip).key in other.table.table
    finally:
        await stop_all(nodes)


async def test_the_final_batch_reads_every_event_the_kernel_queued_before_it() -> None:
    """Flows opened just before the withdrawal: their events wait in the
    socket, one read per turn of the loop, when the final batch is taken."""
    nodes = await _slow_stream_pair()
    try:
        ip = IPS[0]
        owner, other = holder_and_other(nodes, ip)
        owner.table.socket_like = True
        young = [flow(p, ip) for p in range(5101, 5121)]
        for f in young:
            owner.table.flow_new(f)
        await owner.daemon.members[ip].shutdown()  # at once: withdraw, final batch, hand over
        await until(lambda: owners(nodes, ip) == [other.name], 4 * TIMING.lease_duration)
        assert ports([e for e in other.table.table.values() if e.original.sport > 5100]) == ports(young)
    finally:
        await stop_all(nodes)


async def test_entries_from_a_non_holder_a_stranger_or_a_replay_are_refused() -> None:
    store, net = FakeLeaseStore(), FakeMeshNetwork()
    nodes = await two(store, net)
    try:
        a, b = nodes
        held_by_a = next(ip for ip in IPS if a.serves(ip))
        source = (ADDRESSES["gw-b"], PORT)
        # gw-b (a candidate, with its true process) sends entries of an IP gw-a holds
        outbox = Outbox("gw-b", b.daemon.incarnation)
        outbox.datagrams("gw-a", str(held_by_a), [], resync=True)
        for batch in outbox.datagrams("gw-a", str(held_by_a), [flow(6001, held_by_a), flow(6002, held_by_a)]):
            net.inject(encode(batch, KEY), source, ADDRESSES["gw-a"])
        # a process of gw-b whose heartbeat gw-a never took
        for batch in Outbox("gw-b", "old-process").datagrams("gw-a", str(held_by_a), [flow(6003, held_by_a)]):
            net.inject(encode(batch, KEY), source, ADDRESSES["gw-a"])
        # a recorded datagram of gw-b's real stream, played again
        recorded = next(d for src, dst, d in net.delivered if (src, dst) == (ADDRESSES["gw-b"], ADDRESSES["gw-a"])
                        and d.startswith(b"EGC1"))  # fmt: skip
        net.inject(recorded, source, ADDRESSES["gw-a"])
        await asyncio.sleep(0.01)
        assert a.replication.refused["not-owned"] == 2
        assert a.replication.refused["unknown-incarnation"] == 1
        assert a.replication.refused["replayed"] == 1
        assert a.daemon.mesh is not None and a.daemon.mesh.transport.rejected["conntrack-not-owned"] == 1  # datagrams
        assert str(held_by_a) not in {ip for ip in map(str, IPS) if a.replication.replica.held_for(ip)}
    finally:
        await stop_all(nodes)


async def test_a_flood_is_bounded_per_peer() -> None:
    store, net = FakeLeaseStore(), FakeMeshNetwork()
    small = dataclasses.replace(CT, max_entries_per_peer=50)
    nodes = [Node("gw-a", store, net, ct=small), Node("gw-b", store, net, ct=small)]
    try:
        await settle(nodes, IPS)
        await asyncio.sleep(4 * TIMING.retry_period)
        ip = IPS[0]
        owner, other = holder_and_other(nodes, ip)
        for p in range(1, 121):
            owner.table.flow_new(flow(p, ip))
        await asyncio.sleep(3 * CT.batch_interval)
        assert other.replication.replica.held() == {owner.name: 50}
        assert other.replication.refused["over-limit"] == 70
    finally:
        await stop_all(nodes)


async def test_a_stream_left_without_a_whole_resync_is_asked_again_when_quiet() -> None:
    store, net = FakeLeaseStore(), FakeMeshNetwork()
    nodes = await two(store, net)
    try:
        ip = IPS[0]
        owner, other = holder_and_other(nodes, ip)
        owner.table.flow_new(flow(7001, ip))
        await asyncio.sleep(3 * CT.batch_interval)
        replica = other.replication.replica
        assert replica.unsynced(asyncio.get_running_loop().time(), 0.0) == []
        replica._streams[(owner.name, str(ip))].synced = False  # as if the end of its resync was lost
        asked = other.replication.resync_requests
        await until(lambda: other.replication.resync_requests > asked, 2 * QUIET)
        await until(lambda: not replica.unsynced(asyncio.get_running_loop().time(), 0.0), 2.0)
    finally:
        await stop_all(nodes)


async def test_entries_from_a_peer_that_is_no_candidate_of_the_ip_are_refused() -> None:
    store, net = FakeLeaseStore(), FakeMeshNetwork()
    other_ip = ip_address("172.18.0.50")
    other = EgressGroup(name="other", egress_ips=(other_ip,), interface="net0", candidates=("gw-a", "gw-c"),
                        source_cidrs=(), destination_cidrs=())  # fmt: skip
    c = Node("gw-c", store, net, groups=(GROUP, other))
    await settle([c], [other_ip])  # gw-c holds .50, so it heartbeats gw-a: gw-a knows its process
    a = Node("gw-a", store, net, groups=(GROUP, other))
    nodes = [c, a]
    try:
        a.start()
        await until(lambda: a.daemon.mesh is not None and "gw-c" in a.daemon.mesh.peer_incarnation, 2.0)
        # gw-c, a peer of gw-a through "other", sends entries of an IP of "outpost", which it is no candidate of
        outbox = Outbox("gw-c", c.daemon.incarnation)
        for batch in outbox.datagrams("gw-a", str(IPS[0]), [flow(8001, IPS[0]), flow(8002, IPS[0])], resync=True):
            net.inject(encode(batch, KEY), (ADDRESSES["gw-c"], PORT), ADDRESSES["gw-a"])
        await asyncio.sleep(0.01)
        assert a.replication.refused["not-candidate"] == 2
        assert a.replication.replica.held() == {}
    finally:
        await stop_all(nodes)


async def test_a_node_serving_the_ip_again_before_the_clear_keeps_its_entries() -> None:
    store, net = FakeLeaseStore(), FakeMeshNetwork()
    nodes = await two(store, net)
    try:
        ip = IPS[0]
        owner, _ = holder_and_other(nodes, ip)
        owner.table.flow_new(flow(9001, ip))
        await asyncio.sleep(3 * CT.batch_interval)
        owner.replication.left(str(ip))  # as if it had stepped down and taken the IP back at once
        await asyncio.sleep(CT.guard_grace + 0.1)
        assert owner.serves(ip)
        assert flow(9001, ip).key in owner.table.table
    finally:
        await stop_all(nodes)
