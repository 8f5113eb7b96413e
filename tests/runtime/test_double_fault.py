"""The double fault on the virtual clock: the API server paused, the owner
killed while it is, and on the server's return the owner's last renew, held
by the paused server, committed. A standby that took a datagram of the
owner's process sent after that renew was stamped (its sequence above the
one the renew carries) knows the renew is old and takes over at once; without
such a datagram it waits ``leaseDuration`` from its sight of the renew."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import pytest

from egressd.core.node_lease import NodeLeaseRecord, node_lease_name
from tests.fakes import FakeLeaseStore, FakeMeshNetwork
from tests.runtime.support import MESH, TIMING, MeshNode, assert_no_two_owners, holder_and_other, settle, stop_all
from tests.runtime.test_wake import GROUP, IP
from tests.virtual_time import until


class PausedServer(FakeLeaseStore):
    """Keeps the node-lease renews sent while it is paused, as a stopped API
    server keeps the requests it has read: the test commits one on its return."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[NodeLeaseRecord] = []

    async def write_node_lease(self, record: NodeLeaseRecord, *, deadline: float) -> NodeLeaseRecord:
        if not self._running.is_set():
            self.held.append(record)
        return await super().write_node_lease(record, deadline=deadline)


class Node(MeshNode):
    def __init__(self, name: str, store: FakeLeaseStore, net: FakeMeshNetwork) -> None:
        super().__init__(name, store, net, GROUP)


def later_heartbeat(held: NodeLeaseRecord, owner: Node) -> NodeLeaseRecord:
    return held


def none_later(held: NodeLeaseRecord, owner: Node) -> NodeLeaseRecord:
    # as if stamped after the owner's last datagram
    assert owner.daemon.mesh is not None
    return replace(held, heartbeat_seq=owner.daemon.mesh.seq)


def other_incarnation(held: NodeLeaseRecord, owner: Node) -> NodeLeaseRecord:
    return replace(held, incarnation="another-process")


def no_sequence(held: NodeLeaseRecord, owner: Node) -> NodeLeaseRecord:
    return replace(held, heartbeat_seq=None)


async def double_fault(committed: object) -> tuple[float, list[Node]]:
    """Pause the API, kill the owner 1 s later, resume 3 s later committing the
    owner's first held renew (as ``committed`` makes it); the seconds from the
    API's return until the standby serves."""
    store, net = PausedServer(), FakeMeshNetwork()
    nodes = [Node("gw-a", store, net), Node("gw-b", store, net)]
    loop = asyncio.get_running_loop()
    try:
        await settle(nodes, [IP])
        await asyncio.sleep(3 * TIMING.retry_period)
        owner, standby = holder_and_other(nodes, IP)
        store.pause()
        await asyncio.sleep(1.0)  # the owner serves on promises, heart-beating the standby
        held = next(r for r in store.held if r.node == owner.name)  # the first the server would commit
        assert owner.serves(IP) and held.heartbeat_seq is not None
        queued = committed(held, owner)  # type: ignore[operator]
        await owner.crash()
        await asyncio.sleep(3.0)  # the promises run out; nobody can write a claim
        assert not standby.serves(IP)
        name = node_lease_name(owner.name)
        store.put_node(replace(queued, resource_version=store.node_leases[name].resource_version))
        store.resume()
        back = loop.time()
        await until(lambda: standby.serves(IP), 3 * TIMING.lease_duration)
        assert_no_two_owners([standby.plane])
        return loop.time() - back, nodes
    finally:
        store.resume()
        await stop_all(nodes)


async def test_a_standby_that_heard_the_owner_after_its_last_renew_takes_over_at_the_apis_return(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="egressd.runtime.member")
    took, _ = await double_fault(later_heartbeat)
    # its own renew and the quorum read of the owner's lease, a few retry periods
    assert took < TIMING.lease_duration / 2, f"{took:.3f}s after the API's return"
    lines = [r.getMessage() for r in caplog.records if "holder-lapsed-by-heartbeat" in r.getMessage()]
    assert lines and "ip=172.18.0.42" in lines[0] and "decision acquire (expired)" in lines[0]


@pytest.mark.parametrize("committed", [none_later, other_incarnation, no_sequence])
async def test_without_a_later_datagram_of_that_process_the_standby_waits_the_lease_duration(committed: object) -> None:
    took, _ = await double_fault(committed)
    assert took >= TIMING.lease_duration - TIMING.retry_period, f"{took:.3f}s after the API's return"
    assert took < TIMING.lease_duration + 4 * TIMING.retry_period
    assert MESH.promise_duration < 3.0  # the promises ran out long before the API's return
