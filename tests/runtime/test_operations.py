"""Handoff and drain (``egressd handoff``, ``egressd drain``) against daemons
on the fake clock: the request lands on the lease, the owner hands off, the
wait sees the successor; failures are said, bounded by the deadline."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from ipaddress import ip_address

import pytest

from egressd.adapters.recording import RecordingDataPlane
from egressd.core.lease import LeaseRecord, held_by, lease_name
from egressd.core.model import EgressGroup
from egressd.runtime import operations
from egressd.runtime.daemon import Daemon
from egressd.runtime.operations import Move, OperationError
from tests.fakes import FakeLeaseStore
from tests.runtime.support import TIMING, virtual_daemons
from tests.virtual_time import EPOCH, VirtualClock, run_virtual, until

IPS = (ip_address("172.18.0.42"), ip_address("172.18.0.43"))
GROUP = EgressGroup(
    name="outpost",
    egress_ips=IPS,
    interface="net0",
    candidates=("gw-a", "gw-b"),
    source_cidrs=(),
    destination_cidrs=(),
)
NODES = ("gw-a", "gw-b")


def daemons(store: FakeLeaseStore) -> tuple[dict[str, RecordingDataPlane], list[Daemon]]:
    return virtual_daemons(store, GROUP, NODES)


def holder_of(store: FakeLeaseStore, ip: object) -> str | None:
    record = store.leases.get(lease_name(str(ip)))
    return record.holder if record else None


def test_a_handoff_moves_the_ip_to_the_named_candidate_and_the_wait_sees_it() -> None:
    async def main() -> None:
        store, clock = FakeLeaseStore(), VirtualClock()
        planes, nodes = daemons(store)
        tasks = [asyncio.create_task(d.run(install_signals=False)) for d in nodes]
        await until(lambda: all(holder_of(store, ip) for ip in IPS), 2.0)
        ip = IPS[0]
        owner = holder_of(store, ip)
        other = next(n for n in NODES if n != owner)
        [move] = operations.handoff_moves((GROUP,), ip, other)
        record = await operations.request_move(store, clock, move, deadline=clock.monotonic() + 1.0)
        assert record.preferred_holder == other and record.holder == owner
        [seconds] = await operations.wait_for_moves(store, clock, [move], deadline=clock.monotonic() + 1.0)
        assert holder_of(store, ip) == other and seconds < 1.0
        assert ip in planes[other].snat and ip not in planes[str(owner)].snat
        again = await operations.request_move(store, clock, move, deadline=clock.monotonic() + 1.0)
        assert again.holder == other, "a move to the holder writes nothing"
        for d in nodes:
            d.supervisor.request_stop("test")
        await asyncio.gather(*tasks)

    run_virtual(main)


def test_a_drain_moves_every_ip_the_node_holds_to_its_next_candidate() -> None:
    async def main() -> None:
        store, clock = FakeLeaseStore(), VirtualClock()
        _, nodes = daemons(store)
        tasks = [asyncio.create_task(d.run(install_signals=False)) for d in nodes]
        await until(lambda: all(holder_of(store, ip) for ip in IPS), 2.0)
        node = str(holder_of(store, IPS[0]))
        held = [ip for ip in IPS if holder_of(store, ip) == node]
        moves = await operations.drain_moves(store, clock, (GROUP,), node, deadline=clock.monotonic() + 1.0)
        assert [m.ip for m in moves] == held and all(m.to != node for m in moves)
        for m in moves:
            await operations.request_move(store, clock, m, deadline=clock.monotonic() + 1.0)
        await operations.wait_for_moves(store, clock, moves, deadline=clock.monotonic() + 1.0)
        assert all(holder_of(store, ip) != node for ip in IPS)
        for d in nodes:
            d.supervisor.request_stop("test")
        await asyncio.gather(*tasks)

    run_virtual(main)


def test_a_handoff_refuses_an_unknown_ip_and_a_non_candidate() -> None:
    with pytest.raises(OperationError, match="not an egress IP of this config"):
        operations.handoff_moves((GROUP,), ip_address("10.1.1.1"), "gw-b")
    with pytest.raises(OperationError, match="not a candidate of group outpost"):
        operations.handoff_moves((GROUP,), IPS[0], "gw-z")


def held(holder: str) -> LeaseRecord:
    return held_by(
        None,
        name=lease_name(str(IPS[0])),
        egress_ip=str(IPS[0]),
        holder=holder,
        holder_address=None,
        incarnation="inc",
        lease_duration=TIMING.lease_duration,
        now=EPOCH,
    )


class RenewsOnEveryRead(FakeLeaseStore):
    """An owner that renews between each read and write of the request."""

    async def get(self, name: str, *, deadline: float) -> LeaseRecord | None:
        record = await super().get(name, deadline=deadline)
        if record is not None and self.renews:
            self.renews -= 1
            self.put(record)
        return record

    renews = 0


def test_a_request_that_loses_races_reads_the_lease_again_until_the_deadline() -> None:
    async def main() -> None:
        clock = VirtualClock()
        store = RenewsOnEveryRead()
        store.put(held("gw-a"))
        store.renews = 3
        record = await operations.request_move(store, clock, Move(IPS[0], "gw-b"), deadline=clock.monotonic() + 1.0)
        assert record.preferred_holder == "gw-b" and store.renews == 0
        store.renews = 10**6
        with pytest.raises(OperationError, match="the lease kept changing"):
            await operations.request_move(store, clock, Move(IPS[0], "gw-b"), deadline=clock.monotonic())

    run_virtual(main)


def test_a_move_without_a_lease_nobody_takes_or_without_the_api_fails_with_a_reason() -> None:
    async def main() -> None:
        clock = VirtualClock()
        store = FakeLeaseStore()
        move = Move(IPS[0], "gw-b")
        with pytest.raises(OperationError, match="no lease yet"):
            await operations.request_move(store, clock, move, deadline=clock.monotonic() + 1.0)
        store.put(replace(held("gw-a"), preferred_holder="gw-b"))
        started = clock.monotonic()
        with pytest.raises(OperationError, match="gw-b did not take it over within 2s"):
            await operations.wait_for_move(store, clock, move, deadline=started + 2.0)
        assert clock.monotonic() - started == pytest.approx(2.0, abs=operations.POLL_INTERVAL)
        store.fail()
        with pytest.raises(OperationError, match="lease API: fake API server failing"):
            await operations.request_move(store, clock, move, deadline=clock.monotonic() + 1.0)

    run_virtual(main)
