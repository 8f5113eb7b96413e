"""The mesh in the daemon, on the virtual clock: heartbeats from holders,
promises from standbys, and everything forged, unsigned, replayed or from a
stranger dropped and counted."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from ipaddress import ip_address

from egressd.core import rights
from egressd.core.mesh_messages import Heartbeat, Promise, decode, encode
from egressd.core.model import EgressGroup
from tests.fakes import FakeLeaseStore, FakeMeshNetwork
from tests.runtime.support import (
    KEY,
    MESH,
    PORT,
    TIMING,
    CutStore,
    MeshNode,
    assert_no_two_owners,
    holder_and_other,
    owners,
    settle,
    stop_all,
)
from tests.virtual_time import until

IPS = tuple(ip_address(f"172.18.0.{n}") for n in range(40, 44))
GROUP = EgressGroup(
    name="outpost", egress_ips=IPS, interface="net0", candidates=("gw-a", "gw-b"), source_cidrs=(), destination_cidrs=()
)


class Node(MeshNode):
    def __init__(self, name: str, store: FakeLeaseStore, net: FakeMeshNetwork | None, key: bytes = KEY) -> None:
        super().__init__(name, store, net, GROUP, key=key)


async def test_holders_heartbeat_and_standbys_promise() -> None:
    store, net = FakeLeaseStore(), FakeMeshNetwork()
    nodes = [Node("gw-a", store, net), Node("gw-b", store, net)]
    try:
        await settle(nodes, IPS)
        await asyncio.sleep(5 * TIMING.retry_period)
        a, b = (n.daemon.mesh for n in nodes)
        assert a is not None and b is not None
        now = asyncio.get_running_loop().time()
        # both hold IPs (spread), so each heartbeats the other and each promises
        assert {n.name for n in nodes if any(n.serves(ip) for ip in IPS)} == {"gw-a", "gw-b"}
        for holder, standby in ((a, b), (b, a)):
            assert now - holder.promises[standby.node] < 2 * TIMING.retry_period
            assert standby.promised[holder.node] > now + MESH.promise_duration - 2 * TIMING.retry_period
            assert holder.heartbeats_sent > 0 and standby.promises_given > 0
        assert not a.rejected and not b.rejected
        assert not nodes[0].daemon.mesh.transport.rejected  # type: ignore[union-attr]
        assert {h for h, _, _ in net.delivered} == {"10.0.0.1", "10.0.0.2"}
        assert "mesh" in nodes[0].daemon.status_report()
        assert_no_two_owners(n.plane for n in nodes)
    finally:
        await stop_all(nodes)


async def test_a_node_that_holds_nothing_sends_no_heartbeat() -> None:
    store, net = FakeLeaseStore(), FakeMeshNetwork()
    lone = replace(GROUP, candidates=("gw-a",))
    nodes = [Node("gw-a", store, net), Node("gw-b", store, net)]
    for n in nodes:
        n.daemon.groups = (lone,)
        n.daemon.settings = replace(n.daemon.settings, groups=(lone,))
    try:
        await settle(nodes[:1], IPS)
        nodes[1].start()
        await asyncio.sleep(5 * TIMING.retry_period)
        # gw-a holds everything but has no other candidate; gw-b is candidate of nothing
        assert net.delivered == []
    finally:
        await stop_all(nodes)


async def test_forged_unsigned_replayed_and_strangers_datagrams_change_nothing() -> None:
    store, net = FakeLeaseStore(), FakeMeshNetwork()
    nodes = [Node("gw-a", store, net), Node("gw-b", store, net)]
    try:
        await settle(nodes, IPS)
        b = nodes[1].daemon.mesh
        assert b is not None
        await asyncio.sleep(2 * TIMING.retry_period)
        # a recorded heartbeat of gw-a, replayed: admitted once only
        recorded = next(
            d
            for src, dst, d in net.delivered
            if (src, dst) == ("10.0.0.1", "10.0.0.2") and isinstance(decode(d, KEY), Heartbeat)
        )
        given = b.promises_given
        source = ("10.0.0.66", PORT)
        fake_hb = Heartbeat("gw-a", nodes[0].daemon.incarnation, 10**9, "0" * 32, api_ok=True)
        net.inject(encode(fake_hb, b"x" * 32), source, "10.0.0.2")  # forged: another key
        net.inject(b"EGM1{}" + b"\0" * 32, source, "10.0.0.2")  # bad signature
        net.inject(b"hello, gateway" * 4, source, "10.0.0.2")  # unsigned
        net.inject(recorded, source, "10.0.0.2")  # replayed
        stranger = Heartbeat("gw-c", "inc", 1, "1" * 32, api_ok=True)
        net.inject(encode(stranger, KEY), source, "10.0.0.2")  # signed, but no candidate with us
        await asyncio.sleep(0.01)
        transport = b.transport
        assert transport.rejected["bad-signature"] == 2
        assert transport.rejected["unsigned"] == 1
        assert b.rejected == {"replayed": 1, "unknown-peer": 1}
        assert "gw-c" not in b.promised
        # no promise went to the injecting address, whatever the datagrams said
        assert not [d for src, dst, d in net.delivered if dst == "10.0.0.66"]
        assert b.promises_given - given <= 1  # at most gw-a's own heartbeat meanwhile
    finally:
        await stop_all(nodes)


async def test_a_promise_for_a_nonce_nobody_waits_for_is_stale() -> None:
    store, net = FakeLeaseStore(), FakeMeshNetwork()
    nodes = [Node("gw-a", store, net), Node("gw-b", store, net)]
    try:
        await settle(nodes, IPS)
        await asyncio.sleep(2 * TIMING.retry_period)
        a = nodes[0].daemon.mesh
        assert a is not None
        promise = next(
            d
            for src, dst, d in net.delivered
            if (src, dst) == ("10.0.0.2", "10.0.0.1") and isinstance(decode(d, KEY), Promise)
        )
        received = a.promises_received
        net.inject(promise, ("10.0.0.2", PORT), "10.0.0.1")  # the same promise again
        await asyncio.sleep(0.01)
        assert a.rejected["stale"] >= 1
        assert a.promises_received - received <= 1
    finally:
        await stop_all(nodes)


async def test_without_a_key_there_is_no_mesh() -> None:
    store = FakeLeaseStore()
    nodes = [Node("gw-a", store, None), Node("gw-b", store, None)]
    try:
        await settle(nodes, IPS)
        assert all(n.daemon.mesh is None and n.daemon.mesh_timing is None for n in nodes)
        assert "mesh" not in nodes[0].daemon.status_report()
    finally:
        await stop_all(nodes)


# --- rights from promises --------------------------------------------------------


async def test_api_down_for_everyone_owners_keep_serving_up_to_max_hold() -> None:
    store, net = FakeLeaseStore(), FakeMeshNetwork()
    nodes = [Node("gw-a", store, net), Node("gw-b", store, net)]
    loop = asyncio.get_running_loop()
    try:
        await settle(nodes, IPS)
        await asyncio.sleep(3 * TIMING.retry_period)
        before = {ip: owners(nodes, ip) for ip in IPS}
        store.pause()
        down = loop.time()
        await asyncio.sleep(TIMING.renew_deadline)
        fences = [sum(o["op"] == "fence" for o in n.plane.ops) for n in nodes]
        # long past the renew deadline and the lease duration: nothing moves
        while loop.time() - down < MESH.max_hold - 4 * TIMING.lease_duration:
            await asyncio.sleep(TIMING.retry_period)
            assert {ip: owners(nodes, ip) for ip in IPS} == before
            assert all(n.daemon.liveness.right().source is rights.Source.PEER for n in nodes)
        # the kernel fences were re-armed on promises, never longer than what they rest on
        for n, count in zip(nodes, fences, strict=True):
            armed = [o for o in n.plane.ops if o["op"] == "fence"][count:]
            assert len(armed) >= 5, f"{n.name}: the fences were not re-armed under the peer right"
            assert all(0 < o["ttl"] <= TIMING.fence_ttl for o in armed)
        # and not past maxHold after each owner's last API write
        last_writes = [n.daemon.liveness.last_api_write for n in nodes]
        assert all(w is not None and w <= down for w in last_writes)
        await until(lambda: not any(n.serves(ip) for n in nodes for ip in IPS), 4 * TIMING.lease_duration)
        latest = max(w for w in last_writes if w is not None)
        assert loop.time() <= latest + MESH.max_hold + TIMING.retry_period
        assert not any(n.daemon.liveness.right() for n in nodes)
        store.resume()
        await until(lambda: all(len(owners(nodes, ip)) == 1 for ip in IPS), 5 * TIMING.lease_duration)
        assert_no_two_owners(n.plane for n in nodes)
    finally:
        store.resume()
        await stop_all(nodes)


async def test_api_down_and_the_link_cut_the_owner_stops_before_any_promise_ends() -> None:
    store, net = FakeLeaseStore(), FakeMeshNetwork()
    nodes = [Node("gw-a", store, net), Node("gw-b", store, net)]
    loop = asyncio.get_running_loop()
    try:
        await settle(nodes, IPS)
        await asyncio.sleep(3 * TIMING.retry_period)
        a, b = nodes
        store.pause()
        await asyncio.sleep(TIMING.lease_duration)  # on peer rights now
        assert all(n.daemon.liveness.right().source is rights.Source.PEER for n in nodes)
        net.cut_link("10.0.0.1", "10.0.0.2")
        promised = {
            a.name: b.daemon.mesh.promised[a.name],  # type: ignore[union-attr]
            b.name: a.daemon.mesh.promised[b.name],  # type: ignore[union-attr]
        }
        stopped: dict[str, float] = {}

        def all_stopped() -> bool:
            for n in nodes:
                if n.name not in stopped and not any(n.serves(ip) for ip in IPS):
                    stopped[n.name] = loop.time()
            return len(stopped) == 2

        await until(all_stopped, MESH.promise_duration + 0.1)
        for name, at in stopped.items():
            # the owner's right (and its serving) ended before the standby's promise
            assert at < promised[name], f"{name} served until {at}, the promise to it ran to {promised[name]}"
        store.resume()
        await until(lambda: all(len(owners(nodes, ip)) == 1 for ip in IPS), 10 * TIMING.lease_duration)
        assert_no_two_owners(n.plane for n in nodes)
    finally:
        store.resume()
        await stop_all(nodes)


async def test_a_standby_never_takes_over_while_its_promise_runs() -> None:
    shared, net = FakeLeaseStore(), FakeMeshNetwork()
    stores = [CutStore(shared), CutStore(shared)]
    nodes = [Node("gw-a", stores[0], net), Node("gw-b", stores[1], net)]
    loop = asyncio.get_running_loop()
    try:
        await settle(nodes, IPS)
        await asyncio.sleep(3 * TIMING.retry_period)
        owner, other = holder_and_other(nodes, IPS[0])
        held = [ip for ip in IPS if owner.serves(ip)]
        stores[nodes.index(owner)].up.clear()  # the API cut from the owner only
        cut = loop.time()
        # the standby sees the owner's node lease stand still far past the
        # lease duration, but it promised: the owner serves on, alone
        while loop.time() - cut < 4 * TIMING.lease_duration:
            await asyncio.sleep(TIMING.retry_period)
            assert all(owners(nodes, ip) == [owner.name] for ip in held)
            if loop.time() - cut > TIMING.renew_deadline:
                assert owner.daemon.liveness.right().source is rights.Source.PEER
        promised = other.daemon.mesh.promised[owner.name]  # type: ignore[union-attr]
        assert promised > loop.time()
        # the owner also loses its peers: it stops, the promise runs out, then the standby takes over
        net.cut_link("10.0.0.1", "10.0.0.2")
        await until(lambda: all(owners(nodes, ip) == [other.name] for ip in held), 4 * TIMING.lease_duration)
        assert loop.time() >= other.daemon.mesh.promised[owner.name]  # type: ignore[union-attr]
        assert_no_two_owners(n.plane for n in nodes)
    finally:
        for s in stores:
            s.up.set()
        await stop_all(nodes)


async def test_forged_promises_give_no_right() -> None:
    store, net = FakeLeaseStore(), FakeMeshNetwork()
    nodes = [Node("gw-a", store, net), Node("gw-b", store, net, key=b"z" * 32)]  # gw-b signs with another key
    try:
        await settle(nodes, IPS)
        await asyncio.sleep(3 * TIMING.retry_period)
        assert nodes[0].daemon.mesh.transport.rejected["bad-signature"] > 0  # type: ignore[union-attr]
        assert nodes[0].daemon.mesh.promises == {}  # type: ignore[union-attr]
        store.pause()
        # without promises an API outage stops egress, as without a mesh
        await until(lambda: not any(n.serves(ip) for n in nodes for ip in IPS), TIMING.lease_duration)
    finally:
        store.resume()
        await stop_all(nodes)
