"""One timer per holder node (egressd.runtime.lapses) on the virtual clock: a
holder that keeps renewing its node lease wakes none of the standbys parked on
it, a silent one wakes them all at its lapse time, a heartbeat bound brings
that time earlier within a retry period, and nothing is parked on a holder
whose time has come or whose node lease cannot be read."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from ipaddress import ip_address

import pytest

from egressd.core.model import NodeSettings, Settings
from egressd.core.node_lease import NodeLeaseRecord, node_lease_name
from egressd.ports import LeaseEvent
from egressd.runtime.lapses import HolderLapses
from egressd.runtime.liveness import NodeLiveness
from egressd.runtime.view import LeaseView
from tests.fakes import FakeLeaseStore
from tests.runtime.support import TIMING
from tests.virtual_time import VirtualClock, until

HOLDER = "gw-a"


class Setup:
    def __init__(self) -> None:
        clock = VirtualClock()
        settings = Settings(node=NodeSettings(name="gw-b", address=ip_address("10.0.0.2")), timing=TIMING)
        self.view = LeaseView(clock)
        self.liveness = NodeLiveness(
            settings,
            store=FakeLeaseStore(),
            view=self.view,
            clock=clock,
            incarnation="inc-b",
            peers=lambda: ("gw-a",),
            candidate=lambda: True,
            rearm=self._nothing,
            lapsed=self._nothing,
            clash=self._nothing,
        )
        _ = self.liveness.started_at
        self.lapses = HolderLapses(node="gw-b", view=self.view, liveness=self.liveness, clock=clock, timing=TIMING)
        self.woken: list[tuple[str, float]] = []
        self.version = 0

    async def _nothing(self, _arg: object) -> None:
        return None

    def renew(self, *, seq: int | None = None) -> float:
        """The holder's node lease seen renewed now; when it was seen."""
        self.version += 1
        record = NodeLeaseRecord(
            name=node_lease_name(HOLDER),
            node=HOLDER,
            incarnation="inc-a",
            lease_duration=TIMING.lease_duration,
            resource_version=str(self.version),
            peers=("gw-b",),
            heartbeat_seq=seq,
        )
        self.view.apply(LeaseEvent(kind="upsert", name=record.name, node=record))
        return asyncio.get_running_loop().time()

    def park(self, name: str) -> bool:
        loop = asyncio.get_running_loop()
        return self.lapses.park(HOLDER, name, lambda: self.woken.append((name, loop.time())))


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    s = Setup()
    task = asyncio.create_task(s.lapses.run())
    try:
        yield s
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_renewing_holder_wakes_nobody_and_a_silent_one_wakes_all_its_standbys_at_its_lapse(
    setup: Setup,
) -> None:
    setup.renew()
    assert setup.park("claim-1") and setup.park("claim-2")
    for _ in range(int(4 * TIMING.lease_duration / TIMING.retry_period)):
        last = setup.renew()
        await asyncio.sleep(TIMING.retry_period)
    assert setup.woken == [], "a holder renewing its node lease woke its standbys"
    await until(lambda: len(setup.woken) == 2, 2 * TIMING.lease_duration)
    assert {name for name, _ in setup.woken} == {"claim-1", "claim-2"}
    for _, at in setup.woken:
        # at its lapse time, not a retry period later, and not before
        assert last + TIMING.lease_duration <= at <= last + TIMING.lease_duration + 0.001, at - last
    assert setup.lapses.parked(HOLDER) == 0


async def test_an_unparked_member_is_not_woken(setup: Setup) -> None:
    setup.renew()
    assert setup.park("claim-1") and setup.park("claim-2")
    setup.lapses.unpark(HOLDER, "claim-1")
    await asyncio.sleep(2 * TIMING.lease_duration)
    assert [name for name, _ in setup.woken] == ["claim-2"]


async def test_a_heartbeat_bound_brings_the_wake_earlier_within_a_retry_period(setup: Setup) -> None:
    """A datagram of the holder's process sent after it stamped the version we
    see (taken at ``bound``) lets its claims be taken over a lease duration
    after ``bound``, earlier than after our sight of the version: the timer
    finds it within a retry period, without any news of the claims."""
    receipts: dict[int, float] = {}
    setup.liveness.sent_by = lambda _node, _inc, seq: receipts.get(seq)
    loop = asyncio.get_running_loop()
    bound = loop.time()
    await asyncio.sleep(0.4 * TIMING.lease_duration)
    seen = setup.renew(seq=7)  # a late sight of the renew (a watch behind)
    assert setup.park("claim-1")
    await asyncio.sleep(0.1 * TIMING.lease_duration)
    receipts[7] = bound  # only now do we learn that it was stamped by then
    learned = loop.time()
    await until(lambda: bool(setup.woken), 2 * TIMING.lease_duration)
    at = setup.woken[0][1]
    assert at < seen + TIMING.lease_duration
    assert at <= max(bound + TIMING.lease_duration, learned + TIMING.retry_period) + 0.001, at - bound


async def test_nothing_is_parked_on_a_holder_whose_time_came_or_whose_node_lease_is_unreadable(
    setup: Setup,
) -> None:
    assert not setup.park("claim-1"), "parked on a holder never seen"
    setup.renew()
    await asyncio.sleep(TIMING.lease_duration)
    assert not setup.park("claim-1"), "parked on a holder whose time has come"
    setup.renew()
    assert setup.park("claim-1")
    setup.view.apply(LeaseEvent(kind="invalid", name=node_lease_name(HOLDER), problem="spec: bad"))
    await until(lambda: bool(setup.woken), TIMING.retry_period + 0.001)
    assert not setup.park("claim-2"), "parked on a holder whose node lease is unreadable"
