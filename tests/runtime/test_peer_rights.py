"""Moves onto and off peer rights, in the daemon on the virtual clock: an event
per IP served, with the reason, the time served on peer rights, and the right
per IP in the status."""

from __future__ import annotations

import asyncio
from ipaddress import ip_address

from egressd.core import rights
from egressd.core.model import NodeSettings, Settings
from egressd.core.ownership_events import OwnershipEvent
from egressd.runtime.liveness import NodeLiveness
from egressd.runtime.view import LeaseView
from tests.fakes import FakeLeaseStore, FakeMeshNetwork
from tests.runtime.support import MESH, TIMING, assert_no_two_owners, owners, settle, stop_all
from tests.runtime.test_mesh import IPS, Node
from tests.virtual_time import VirtualClock, until


class Recorded:
    """An EventSink that keeps what it was given."""

    def __init__(self) -> None:
        self.events: list[OwnershipEvent] = []

    def emit(self, event: OwnershipEvent) -> None:
        self.events.append(event)

    def of(self, kind: str) -> list[OwnershipEvent]:
        return [e for e in self.events if e.kind == kind]


def recorded_pair() -> tuple[FakeLeaseStore, FakeMeshNetwork, list[Node], list[Recorded]]:
    store, net = FakeLeaseStore(), FakeMeshNetwork()
    nodes = [Node("gw-a", store, net), Node("gw-b", store, net)]
    sinks = [Recorded(), Recorded()]
    for node, sink in zip(nodes, sinks, strict=True):
        node.daemon.events = sink
    return store, net, nodes, sinks


def served(node: Node) -> set[str]:
    return {str(ip) for ip in IPS if node.serves(ip)}


async def test_an_api_outage_moves_every_owner_onto_peer_rights_and_back() -> None:
    store, _, nodes, sinks = recorded_pair()
    loop = asyncio.get_running_loop()
    try:
        await settle(nodes, IPS)
        await asyncio.sleep(3 * TIMING.retry_period)
        assert not any(s.of("peer-right-started") for s in sinks)
        for node in nodes:
            report = node.daemon.status_report()
            assert {m["egressIP"]: m["right"] for m in report["members"] if m["right"]} == dict.fromkeys(
                served(node), "api"
            )
            assert node.daemon.serving_rights() == {
                **{(ip, "api"): 1.0 for ip in served(node)},
                **{(ip, "peer"): 0.0 for ip in served(node)},
            }
        store.pause()
        down = loop.time()
        await asyncio.sleep(TIMING.lease_duration)
        for node, sink in zip(nodes, sinks, strict=True):
            started = sink.of("peer-right-started")
            assert {e.egress_ip for e in started} == served(node)  # one per IP served, none for the others
            assert {e.reason for e in started} == {"api-right-lapsed"}
            epochs = {str(ip): m.epoch for ip, m in node.daemon.members.items()}
            assert all(e.node == node.name and e.epoch == epochs[e.egress_ip] for e in started)
            # seen when the API right ended: a renew deadline after the last renew sent
            assert all(down < e.at <= down + TIMING.renew_deadline + 1e-6 for e in started)
            assert started[0].detail.startswith("last API write 0.")
            assert node.daemon.peer_rights.on_peer_right
            assert {m["egressIP"]: m["right"] for m in node.daemon.status_report()["members"] if m["right"]} == (
                dict.fromkeys(served(node), "peer")
            )
            assert node.daemon.status_report()["right"]["source"] == "peer"
            assert all(node.daemon.serving_rights()[(ip, "peer")] == 1.0 for ip in served(node))
        await asyncio.sleep(1.0)
        store.resume()
        back = loop.time()
        await until(lambda: all(s.of("peer-right-ended") for s in sinks), 2 * TIMING.retry_period)
        for node, sink in zip(nodes, sinks, strict=True):
            ended = sink.of("peer-right-ended")
            assert {e.egress_ip for e in ended} == served(node)
            assert {e.reason for e in ended} == {"api-right-back"}
            on_peer = ended[0].at - sink.of("peer-right-started")[0].at
            assert ended[0].detail == f"served on peer rights for {on_peer:.3f}s"
            assert not node.daemon.peer_rights.on_peer_right
            assert abs(node.daemon.peer_rights.seconds(loop.time()) - on_peer) < 1e-9
            assert on_peer > back - down - TIMING.renew_deadline - TIMING.retry_period
            assert not sink.of("stepped-down")
        assert_no_two_owners(n.plane for n in nodes)
    finally:
        store.resume()
        await stop_all(nodes)


async def test_max_hold_ends_the_peer_right_and_says_so() -> None:
    store, _, nodes, sinks = recorded_pair()
    try:
        await settle(nodes, IPS)
        await asyncio.sleep(3 * TIMING.retry_period)
        held = [served(n) for n in nodes]
        store.pause()
        await until(lambda: not any(n.serves(ip) for n in nodes for ip in IPS), MESH.max_hold + TIMING.lease_duration)
        for sink, ips in zip(sinks, held, strict=True):
            ended = sink.of("peer-right-ended")
            assert {e.egress_ip for e in ended} == ips
            assert {e.reason for e in ended} == {"max-hold"}
            assert all(e.detail.startswith("max-hold; served on peer rights for 2.") for e in ended)
            # the step-down follows the end of the right, for each IP
            stepped = sink.of("stepped-down")
            assert {e.egress_ip for e in stepped} == ips
            assert min(e.at for e in stepped) >= max(e.at for e in ended)
    finally:
        store.resume()
        await stop_all(nodes)


async def test_promises_gone_end_the_peer_right_and_say_so() -> None:
    store, net, nodes, sinks = recorded_pair()
    try:
        await settle(nodes, IPS)
        await asyncio.sleep(3 * TIMING.retry_period)
        held = [served(n) for n in nodes]
        store.pause()
        await asyncio.sleep(TIMING.lease_duration)
        assert all(n.daemon.liveness.right().source is rights.Source.PEER for n in nodes)
        net.cut_link("10.0.0.1", "10.0.0.2")
        await until(lambda: not any(n.serves(ip) for n in nodes for ip in IPS), MESH.promise_duration + 0.1)
        for node, sink, ips in zip(nodes, sinks, held, strict=True):
            ended = sink.of("peer-right-ended")
            assert {e.egress_ip for e in ended} == ips
            assert {e.reason for e in ended} == {"promises-gone"}
            other = next(n.name for n in nodes if n is not node)
            assert all(e.detail.startswith(f"promise-expired-{other}; served on peer rights for") for e in ended)
            assert node.daemon.serving_rights() == {}
        store.resume()
        await until(lambda: all(len(owners(nodes, ip)) == 1 for ip in IPS), 10 * TIMING.lease_duration)
    finally:
        store.resume()
        await stop_all(nodes)


async def test_the_fence_sees_the_move_onto_peer_rights_when_the_api_right_ends() -> None:
    """Promises that reach past the API right: the daemon fence wakes when the
    API right ends (not only when the peer right does), so the move is reported then."""
    clock = VirtualClock()
    now = clock.monotonic()
    settings = Settings(node=NodeSettings(name="gw-a", address=ip_address("10.0.0.1")), timing=TIMING, groups=())
    liveness = NodeLiveness(
        settings,
        store=FakeLeaseStore(),
        view=LeaseView(clock),
        clock=clock,
        incarnation="i",
        peers=lambda: ("gw-b",),
        candidate=lambda: True,
        rearm=nothing,
        lapsed=nothing,
        clash=nothing,
        mesh=MESH,
        required_peers=lambda: frozenset({"gw-b"}),
        promises=lambda: {"gw-b": now},
    )
    liveness.last_renew_sent = liveness.last_api_write = now
    seen: list[tuple[rights.Source, float]] = []
    liveness.observed = lambda right, at: seen.append((right.source, at))
    fence = asyncio.create_task(liveness.fence())
    try:
        await asyncio.sleep(rights.promise_end(now, MESH) - now + 0.01)
    finally:
        fence.cancel()
    assert TIMING.renew_deadline < rights.promise_end(now, MESH) - now  # the promise reaches further
    api_end = now + TIMING.renew_deadline
    assert any(source is rights.Source.PEER and api_end <= at < api_end + 0.001 for source, at in seen), seen
    assert seen[-1][0] is rights.Source.NONE


async def nothing(*_: object) -> None:
    return None
