"""A graceful handoff wakes the successor over the mesh (virtual clock): the
successor reads the claim at once instead of waiting for its watch, and
takes it as the watch's news would have had it do. Without the wake the
watch still brings the release; a wake that is forged, replayed, misdirected,
stale, or from a stranger is dropped and counted; one that lies makes the
successor read, never serve."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from ipaddress import ip_address

from egressd.core.lease import LeaseRecord, lease_name
from egressd.core.mesh_messages import Offer, Wake, decode, encode
from egressd.core.model import EgressGroup
from egressd.ports import LeaseEvent
from tests.fakes import FakeLeaseStore, FakeMeshNetwork
from tests.runtime.support import (
    ADDRESSES,
    KEY,
    PORT,
    TIMING,
    CutStore,
    MeshNode,
    assert_no_two_owners,
    owners,
    settle,
    stop_all,
)
from tests.virtual_time import until

IP = ip_address("172.18.0.42")
NAME = lease_name(str(IP))
GROUP = EgressGroup(
    name="outpost",
    egress_ips=(IP,),
    interface="net0",
    candidates=("gw-a", "gw-b"),
    source_cidrs=(),
    destination_cidrs=(),
)
LAG = 0.4
"""Seconds the successor's watch holds claim news back: less than the handoff
grace (0.6 s), so the watch alone still makes the handoff."""


class LaggingStore(CutStore):
    """One node's way to the shared store whose watch brings the news of
    claims ``lag`` seconds late (node leases on time), and which counts the
    reads of claims."""

    def __init__(self, shared: FakeLeaseStore) -> None:
        super().__init__(shared)
        self.lag = 0.0
        self.read_delay = 0.0
        """Seconds a read of a claim takes (an API server slow to answer)."""
        self.reads: list[str] = []
        self.read: dict[str, LeaseRecord | None] = {}
        """What the last read of each claim returned."""

    async def get(self, name: str, *, deadline: float) -> LeaseRecord | None:
        self.reads.append(name)
        await asyncio.sleep(self.read_delay)
        self.read[name] = await super().get(name, deadline=deadline)
        return self.read[name]

    async def watch(self) -> AsyncIterator[LeaseEvent]:
        loop = asyncio.get_running_loop()
        out: asyncio.Queue[LeaseEvent] = asyncio.Queue()

        async def pump() -> None:
            async for event in self.shared.watch():
                if self.lag and event.kind == "upsert" and event.record is not None:
                    loop.call_later(self.lag, out.put_nowait, event)
                else:
                    out.put_nowait(event)

        task = asyncio.create_task(pump(), name="lagging-watch")
        try:
            while True:
                yield await out.get()
        finally:
            task.cancel()


class LossyNetwork(FakeMeshNetwork):
    """The fake node network, losing every wake while ``drop_wakes`` is set,
    and every offer while ``drop_offers`` is: here by default, so that a
    graceful handoff is a release and the successor's claim write, the path
    these tests are about (a transfer: tests/runtime/test_transfer.py)."""

    drop_wakes = False
    drop_offers = True

    def deliver(self, data: bytes, source: tuple[str, int], to: tuple[str, int]) -> None:
        if (self.drop_wakes and _is_a(data, Wake)) or (self.drop_offers and _is_a(data, Offer)):
            return
        super().deliver(data, source, to)


def _is_a(data: bytes, kind: type) -> bool:
    try:
        return isinstance(decode(data, KEY), kind)
    except Exception:  # not ours to judge here: the socket drops and counts it
        return False


async def _pair(net: FakeMeshNetwork) -> tuple[list[MeshNode], list[LaggingStore], FakeLeaseStore]:
    shared = FakeLeaseStore()
    stores = [LaggingStore(shared), LaggingStore(shared)]
    nodes = [MeshNode("gw-a", stores[0], net, GROUP), MeshNode("gw-b", stores[1], net, GROUP)]
    await settle(nodes, (IP,))
    await asyncio.sleep(3 * TIMING.retry_period)
    return nodes, stores, shared


async def _handoff(
    nodes: list[MeshNode], stores: list[LaggingStore], lag: float = LAG
) -> tuple[MeshNode, MeshNode, float]:
    """Stop the owner (SIGTERM: withdraw, release to the other, wake it) with
    the successor's watch ``lag`` behind; the successor, and how long after
    the stop it served."""
    loop = asyncio.get_running_loop()
    owner = next(n for n in nodes if n.serves(IP))
    successor = next(n for n in nodes if n is not owner)
    stores[nodes.index(successor)].lag = lag
    stopped = loop.time()
    await owner.stop()
    await until(lambda: successor.serves(IP), 2 * LAG)
    return owner, successor, loop.time() - stopped


async def test_a_woken_successor_takes_the_ip_at_once_while_its_watch_lags() -> None:
    net = LossyNetwork()
    nodes, stores, shared = await _pair(net)
    try:
        owner, successor, took = await _handoff(nodes, stores)
        # the watch would have told it LAG later: the wake made it read the claim at once
        assert took < LAG / 10, f"the successor served {took * 1000:.1f} ms after the stop"
        assert owner.daemon.mesh.wakes.sent == 1  # type: ignore[union-attr]
        assert successor.daemon.mesh.wakes.read == 1  # type: ignore[union-attr]
        store = stores[nodes.index(successor)]
        assert store.reads.count(NAME) == 1
        # it read the release, and took the claim by the usual conditional write on that version
        read = store.read[NAME]
        assert read is not None and read.holder is None and read.preferred_holder == successor.name
        verb, written = shared.writes[-1]
        assert (verb, written.holder, written.resource_version) == ("update", successor.name, read.resource_version)
        assert shared.leases[NAME].holder == successor.name
        assert owners(nodes, IP) == [successor.name]
        assert_no_two_owners(n.plane for n in nodes)
    finally:
        await stop_all(nodes)


async def test_a_slow_read_on_a_wake_never_holds_back_the_watchs_news() -> None:
    net = LossyNetwork()
    nodes, stores, _ = await _pair(net)
    try:
        for store in stores:
            store.read_delay = 0.2  # the read the wake starts answers long after the watch
        _, successor, took = await _handoff(nodes, stores, lag=0.01)
        assert successor.daemon.mesh.wakes.read == 1  # type: ignore[union-attr]
        assert took < 0.05, f"the successor served {took * 1000:.1f} ms after the stop"
        assert owners(nodes, IP) == [successor.name]
        assert_no_two_owners(n.plane for n in nodes)
    finally:
        await stop_all(nodes)


async def test_a_lost_wake_still_ends_in_a_handoff_when_the_watch_brings_the_release() -> None:
    net = LossyNetwork()
    nodes, stores, _ = await _pair(net)
    try:
        net.drop_wakes = True
        owner, successor, took = await _handoff(nodes, stores)
        assert took >= LAG  # the watch's news, late as it is, made the move
        assert owner.daemon.mesh.wakes.sent == 1  # type: ignore[union-attr]
        assert successor.daemon.mesh.wakes.read == 0  # type: ignore[union-attr]
        assert owners(nodes, IP) == [successor.name]
        assert_no_two_owners(n.plane for n in nodes)
    finally:
        await stop_all(nodes)


async def test_wakes_that_are_forged_replayed_stale_or_not_for_us_are_dropped_and_counted() -> None:
    net = LossyNetwork()
    nodes, stores, shared = await _pair(net)
    try:
        owner = next(n for n in nodes if n.serves(IP))
        standby = next(n for n in nodes if n is not owner)
        mesh = standby.daemon.mesh
        assert mesh is not None
        at = ADDRESSES[standby.name]
        source = ("10.0.0.66", PORT)
        claim = shared.put(replace(shared.leases[NAME], transitions=5))  # the owner's claim, at epoch 5
        await asyncio.sleep(TIMING.retry_period)
        reads = len(stores[nodes.index(standby)].reads)
        inc = owner.daemon.incarnation

        def wake(seq: int, **changes: object) -> Wake:
            base = Wake(owner.name, inc, seq, str(IP), 5, claim.resource_version, standby.name)
            return replace(base, **changes)  # type: ignore[arg-type]

        seen = wake(10**6 + 10)  # what the watch brought already: nothing to read
        for datagram in (
            encode(wake(10**6 + 1), b"x" * 32),  # forged: another key
            encode(wake(10**6 + 2, sender="gw-c"), KEY),  # a stranger
            encode(wake(10**6 + 3, to="gw-c"), KEY),  # misdirected
            encode(wake(10**6 + 4, ip="172.18.0.99"), KEY),  # an IP we are no candidate of
            encode(wake(10**6 + 5, epoch=4, resource_version="1"), KEY),  # an earlier handoff's
            encode(seen, KEY),
            encode(seen, KEY),  # replayed
        ):
            net.inject(datagram, source, at)
        await asyncio.sleep(TIMING.retry_period)
        assert mesh.transport.rejected["bad-signature"] == 1
        assert mesh.rejected == {
            "unknown-peer": 1,
            "misdirected": 1,
            "not-candidate": 1,
            "stale-epoch": 1,
            "replayed": 1,
        }
        assert (mesh.wakes.read, mesh.wakes.seen) == (0, 1)
        assert len(stores[nodes.index(standby)].reads) == reads, "a dropped wake made the standby read"
        assert owners(nodes, IP) == [owner.name]
    finally:
        await stop_all(nodes)


async def test_a_wake_that_lies_makes_the_successor_read_never_serve() -> None:
    net = LossyNetwork()
    nodes, stores, shared = await _pair(net)
    try:
        owner = next(n for n in nodes if n.serves(IP))
        standby = next(n for n in nodes if n is not owner)
        store = stores[nodes.index(standby)]
        store.lag = 10.0  # the standby's view keeps the claim as it was
        # the claim changes, still held by the owner (an operator's write, say) ...
        held = shared.put(replace(shared.leases[NAME], transition_reason="touched"))
        # ... and a wake, signed with the key, from the holder, in every field plausible (its
        # version is the claim's current one: a conditional write on it would succeed), says
        # it was released; it was not
        inc, rv = owner.daemon.incarnation, held.resource_version
        lie = Wake(owner.name, inc, 10**6, str(IP), held.transitions, rv, standby.name)
        reads = len(store.reads)
        net.inject(encode(lie, KEY), (ADDRESSES[owner.name], PORT), ADDRESSES[standby.name])
        for _ in range(round(TIMING.lease_duration / TIMING.retry_period)):
            await asyncio.sleep(TIMING.retry_period)
            assert owners(nodes, IP) == [owner.name]
        assert standby.daemon.mesh.wakes.read == 1  # type: ignore[union-attr]
        assert len(store.reads) == reads + 1  # it read the claim: held, so it stays put
        assert shared.leases[NAME].holder == owner.name
        assert_no_two_owners(n.plane for n in nodes)
    finally:
        await stop_all(nodes)
