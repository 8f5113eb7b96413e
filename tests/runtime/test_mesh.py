"""The mesh in the daemon, on the virtual clock: heartbeats from holders,
promises from standbys, and everything forged, unsigned, replayed or from a
stranger dropped and counted."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from ipaddress import ip_address

from egressd.adapters.recording import RecordingDataPlane
from egressd.core import rights
from egressd.core.mesh_messages import Heartbeat, Promise, decode, encode
from egressd.core.mesh_settings import MeshSettings
from egressd.core.model import EgressGroup, IPAddress, NodeSettings, Settings
from egressd.runtime.daemon import Daemon
from egressd.runtime.member import DataPlane
from tests.fakes import FakeLeaseStore, FakeMeshNetwork
from tests.runtime.support import TIMING, RunsDaemon, assert_no_two_owners
from tests.virtual_time import VirtualClock, until

KEY = b"k" * 32
MESH = rights.MeshTiming(promise_duration=0.5, margin=0.01, max_hold=3.0, rtt_bound=0.05)
PORT = 7946
IPS = tuple(ip_address(f"172.18.0.{n}") for n in range(40, 44))
GROUP = EgressGroup(
    name="outpost", egress_ips=IPS, interface="net0", candidates=("gw-a", "gw-b"), source_cidrs=(), destination_cidrs=()
)
ADDRESSES = {"gw-a": "10.0.0.1", "gw-b": "10.0.0.2", "gw-c": "10.0.0.3"}


class Node(RunsDaemon):
    def __init__(self, name: str, store: FakeLeaseStore, net: FakeMeshNetwork | None, key: bytes = KEY) -> None:
        mesh = MeshSettings(key_file="/k", port=PORT, timing=MESH) if net is not None else None
        settings = Settings(
            node=NodeSettings(name=name, address=ip_address(ADDRESSES[name])),
            timing=TIMING,
            groups=(GROUP,),
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

    @property
    def name(self) -> str:
        return self.daemon.settings.node.name

    def serves(self, ip: IPAddress) -> bool:
        return ip in self.plane.snat


def owners(nodes: list[Node], ip: IPAddress) -> list[str]:
    return [n.name for n in nodes if n.serves(ip)]


async def settle(nodes: list[Node]) -> None:
    for node in nodes:
        node.start()
    await until(lambda: all(len(owners(nodes, ip)) == 1 for ip in IPS), 5.0)


async def stop(nodes: list[Node]) -> None:
    for node in nodes:
        if node.task is not None and not node.task.done():
            await node.stop()


async def test_holders_heartbeat_and_standbys_promise() -> None:
    store, net = FakeLeaseStore(), FakeMeshNetwork()
    nodes = [Node("gw-a", store, net), Node("gw-b", store, net)]
    try:
        await settle(nodes)
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
        await stop(nodes)


async def test_a_node_that_holds_nothing_sends_no_heartbeat() -> None:
    store, net = FakeLeaseStore(), FakeMeshNetwork()
    lone = replace(GROUP, candidates=("gw-a",))
    nodes = [Node("gw-a", store, net), Node("gw-b", store, net)]
    for n in nodes:
        n.daemon.groups = (lone,)
        n.daemon.settings = replace(n.daemon.settings, groups=(lone,))
    try:
        await settle(nodes[:1])
        nodes[1].start()
        await asyncio.sleep(5 * TIMING.retry_period)
        # gw-a holds everything but has no other candidate; gw-b is candidate of nothing
        assert net.delivered == []
    finally:
        await stop(nodes)


async def test_forged_unsigned_replayed_and_strangers_datagrams_change_nothing() -> None:
    store, net = FakeLeaseStore(), FakeMeshNetwork()
    nodes = [Node("gw-a", store, net), Node("gw-b", store, net)]
    try:
        await settle(nodes)
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
        assert transport.rejected["bad-signature"] == 2  # type: ignore[attr-defined]
        assert transport.rejected["unsigned"] == 1  # type: ignore[attr-defined]
        assert b.rejected == {"replayed": 1, "unknown-peer": 1}
        assert "gw-c" not in b.promised
        # no promise went to the injecting address, whatever the datagrams said
        assert not [d for src, dst, d in net.delivered if dst == "10.0.0.66"]
        assert b.promises_given - given <= 1  # at most gw-a's own heartbeat meanwhile
    finally:
        await stop(nodes)


async def test_a_promise_for_a_nonce_nobody_waits_for_is_stale() -> None:
    store, net = FakeLeaseStore(), FakeMeshNetwork()
    nodes = [Node("gw-a", store, net), Node("gw-b", store, net)]
    try:
        await settle(nodes)
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
        await stop(nodes)


async def test_without_a_key_there_is_no_mesh() -> None:
    store = FakeLeaseStore()
    nodes = [Node("gw-a", store, None), Node("gw-b", store, None)]
    try:
        await settle(nodes)
        assert all(n.daemon.mesh is None and n.daemon.mesh_timing is None for n in nodes)
        assert "mesh" not in nodes[0].daemon.status_report()
    finally:
        await stop(nodes)
