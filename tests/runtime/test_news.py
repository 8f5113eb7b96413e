"""News of a new owner over the mesh (virtual clock): a steering node listens
to the candidates it steers to; a gateway that starts serving tells it, and
it steers there at once, ahead of its watch of the claim, until the watch
brings that claim. News from a stranger, replayed, or behind the claim
changes nothing; a node that stopped listening gets no more news."""

from __future__ import annotations

import asyncio
from ipaddress import ip_address

from egressd.core import news
from egressd.core.lease import EPOCH_MODULUS
from egressd.core.mesh_messages import Serving, decode, encode
from tests.fakes import FakeLeaseStore, FakeMeshNetwork
from tests.runtime.support import ADDRESSES, KEY, PORT, TIMING, MeshNode, assert_no_two_owners, settle, stop_all
from tests.runtime.test_wake import GROUP, IP, NAME, LaggingStore
from tests.virtual_time import until

WORKER_LAG = 2.0
"""Seconds the steering node's watch holds claim news back (an API server
slow to deliver, or one just back from an outage)."""


def via(node: MeshNode) -> object:
    return ip_address(ADDRESSES[node.name])


async def _cluster(
    net: FakeMeshNetwork,
) -> tuple[list[MeshNode], MeshNode, LaggingStore, FakeLeaseStore]:
    """Two gateways and a steering node that steers to the IP's owner and
    listens to both gateways."""
    shared = FakeLeaseStore()
    gateways = [MeshNode("gw-a", LaggingStore(shared), net, GROUP), MeshNode("gw-b", LaggingStore(shared), net, GROUP)]
    worker_store = LaggingStore(shared)
    worker = MeshNode("wk-1", worker_store, net, GROUP)
    await settle(gateways, (IP,))
    worker.start()
    owner = next(g for g in gateways if g.serves(IP))
    await until(lambda: worker.plane.steering.get(IP) == via(owner), 1.0)
    await until(
        lambda: all("wk-1" in g.daemon.mesh.news.listeners for g in gateways),  # type: ignore[union-attr]
        2 * TIMING.lease_duration,
    )
    return gateways, worker, worker_store, shared


def _worker_heard(worker: MeshNode) -> news.Hint | None:
    assert worker.daemon.steerer is not None
    return worker.daemon.steerer.hints.get(IP)


async def test_a_graceful_handoff_steers_the_worker_before_its_watch_brings_the_claim() -> None:
    net = FakeMeshNetwork()
    gateways, worker, worker_store, shared = await _cluster(net)
    try:
        loop = asyncio.get_running_loop()
        owner = next(g for g in gateways if g.serves(IP))
        successor = next(g for g in gateways if g is not owner)
        worker_store.lag = WORKER_LAG
        stopped = loop.time()
        await owner.stop()
        await until(lambda: worker.plane.steering.get(IP) == via(successor), 0.5)
        took = loop.time() - stopped
        assert took < 0.05, f"the worker steered {took * 1000:.1f} ms after the stop"
        # the successor serves (address and SNAT) when the worker sends to it
        assert successor.serves(IP) and (IP, GROUP.interface) in successor.plane.addresses
        # its watch has not brought the new claim yet: the news did it
        known = worker.daemon.view.get(NAME).record
        assert known is not None and known.holder == owner.name
        hint = _worker_heard(worker)
        assert hint is not None and hint.holder == successor.name
        assert hint.epoch == shared.leases[NAME].transitions
        assert worker.daemon.mesh.news.taken == 1  # type: ignore[union-attr]
        # the watch catches up: the claim decides again, the route stays
        await until(lambda: worker.daemon.view.get(NAME).record.holder == successor.name, 2 * WORKER_LAG)  # type: ignore[union-attr]
        await until(lambda: _worker_heard(worker) is None, 0.5)
        assert worker.plane.steering.get(IP) == via(successor)
        assert_no_two_owners(g.plane for g in gateways)
    finally:
        await stop_all([*gateways, worker])


async def test_a_takeover_after_a_crash_steers_the_worker_before_its_watch_brings_the_claim() -> None:
    net = FakeMeshNetwork()
    gateways, worker, worker_store, _shared = await _cluster(net)
    try:
        owner = next(g for g in gateways if g.serves(IP))
        standby = next(g for g in gateways if g is not owner)
        worker_store.lag = WORKER_LAG
        await owner.crash()
        await until(lambda: standby.serves(IP), 4 * TIMING.lease_duration)
        await until(lambda: worker.plane.steering.get(IP) == via(standby), 0.05)
        known = worker.daemon.view.get(NAME).record
        assert known is not None and known.holder == owner.name
    finally:
        await stop_all([*gateways, worker])


async def test_news_from_a_stranger_replayed_or_behind_the_claim_changes_nothing() -> None:
    net = FakeMeshNetwork()
    gateways, worker, _worker_store, _shared = await _cluster(net)
    try:
        owner = next(g for g in gateways if g.serves(IP))
        other = next(g for g in gateways if g is not owner)
        mesh = worker.daemon.mesh
        assert mesh is not None
        epoch = worker.daemon.view.get(NAME).record.transitions  # type: ignore[union-attr]
        seq = 10**6
        # a key holder that is no candidate of the IP
        net.inject(encode(Serving("gw-c", "x", seq, ((str(IP), epoch + 1),)), KEY), ("10.0.0.3", PORT), "10.0.0.9")
        # a candidate's news of the epoch the claim already shows (or older)
        net.inject(
            encode(Serving(other.name, "y", seq, ((str(IP), epoch),)), KEY), (ADDRESSES[other.name], PORT), "10.0.0.9"
        )
        net.inject(
            encode(Serving(other.name, "y", seq + 1, ((str(IP), (epoch - 1) % EPOCH_MODULUS),)), KEY),
            (ADDRESSES[other.name], PORT),
            "10.0.0.9",
        )
        # news signed with another key never gets past the socket
        net.inject(
            encode(Serving(other.name, "z", seq, ((str(IP), epoch + 1),)), b"o" * 32),
            (ADDRESSES[other.name], PORT),
            "10.0.0.9",
        )
        await asyncio.sleep(0.05)
        assert dict(mesh.news.dropped) == {"not-candidate": 1, "stale-epoch": 2}
        assert mesh.transport.rejected["bad-signature"] == 1
        assert mesh.news.taken == 0 and _worker_heard(worker) is None
        assert worker.plane.steering.get(IP) == via(owner)
        # a recorded datagram played again is refused, whatever it says
        good = encode(Serving(other.name, "y", seq + 2, ((str(IP), epoch + 1),)), KEY)
        net.inject(good, (ADDRESSES[other.name], PORT), "10.0.0.9")
        await until(lambda: worker.plane.steering.get(IP) == via(other), 0.05)
        net.inject(good, (ADDRESSES[other.name], PORT), "10.0.0.9")
        await asyncio.sleep(0.01)
        assert mesh.rejected["replayed"] == 1
    finally:
        await stop_all([*gateways, worker])


async def test_a_node_that_stopped_listening_gets_no_more_news() -> None:
    net = FakeMeshNetwork()
    gateways, worker, _worker_store, _shared = await _cluster(net)
    try:
        await worker.crash()
        await asyncio.sleep(news.LISTEN_KEEP_LEASES * TIMING.lease_duration + 0.05)
        since = len(net.delivered)
        owner = next(g for g in gateways if g.serves(IP))
        successor = next(g for g in gateways if g is not owner)
        await owner.stop()
        await until(lambda: successor.serves(IP), 0.5)
        await asyncio.sleep(0.05)
        to_worker = [d for _src, dst, d in net.delivered[since:] if dst == "10.0.0.9"]
        assert not [d for d in to_worker if isinstance(decode(d, KEY), Serving)]
        assert "wk-1" not in successor.daemon.mesh.news.listeners  # type: ignore[union-attr]
    finally:
        await stop_all([*gateways, worker])


async def test_a_steering_node_started_first_listens_as_soon_as_the_gateways_are_known() -> None:
    net = FakeMeshNetwork()
    shared = FakeLeaseStore()
    worker = MeshNode("wk-1", LaggingStore(shared), net, GROUP)
    gateways = [MeshNode("gw-a", LaggingStore(shared), net, GROUP), MeshNode("gw-b", LaggingStore(shared), net, GROUP)]
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        worker.start()  # no gateway's node lease yet: its first listen goes nowhere
        await asyncio.sleep(TIMING.retry_period)
        for g in gateways:
            g.start()
        await until(
            lambda: all("wk-1" in g.daemon.mesh.news.listeners for g in gateways),  # type: ignore[union-attr]
            TIMING.lease_duration,
        )
        assert loop.time() - started < TIMING.lease_duration  # not a whole listen period later
    finally:
        await stop_all([*gateways, worker])


async def test_a_restarted_gateway_is_listened_to_as_soon_as_its_node_lease_names_the_new_process() -> None:
    net = FakeMeshNetwork()
    gateways, worker, _worker_store, shared = await _cluster(net)
    loop = asyncio.get_running_loop()
    restarted: MeshNode | None = None
    try:
        mesh = worker.daemon.mesh
        assert mesh is not None
        before = mesh.news.listens_sent
        await until(lambda: mesh.news.listens_sent >= before + 2, 2 * TIMING.lease_duration)  # a full round just went
        await gateways[0].crash()
        restarted = MeshNode(gateways[0].name, LaggingStore(shared), net, GROUP)
        started = loop.time()
        restarted.start()
        await until(
            lambda: "wk-1" in restarted.daemon.mesh.news.listeners,  # type: ignore[union-attr]
            TIMING.lease_duration,
        )
        # well before the next full round of listens (a leaseDuration after the last)
        assert loop.time() - started < TIMING.lease_duration / 2
    finally:
        await stop_all([*gateways, worker, *([restarted] if restarted else [])])
