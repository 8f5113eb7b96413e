"""Supervised tasks on the fake clock: a task that ends unexpectedly says so,
fails /healthz while it is down (and while it keeps dying), and is started
again with capped exponential backoff instead of ending the daemon."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from ipaddress import ip_address

import pytest

from egressd.core.model import EgressGroup, NodeSettings, Settings
from egressd.core.states import State
from egressd.ports import LeaseEvent
from egressd.runtime.daemon import Daemon
from egressd.runtime.member import DataPlane
from egressd.runtime.supervisor import Supervisor
from tests.fakes import FakeLeaseStore
from tests.runtime.support import TIMING
from tests.virtual_time import VirtualClock, run_virtual, until

IP = ip_address("172.18.0.42")
GROUP = EgressGroup(
    name="outpost", egress_ips=(IP,), interface="net0", candidates=("gw-a",), source_cidrs=(), destination_cidrs=()
)


def test_a_task_that_keeps_dying_is_restarted_with_capped_backoff_and_keeps_health_failing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    starts: list[float] = []
    unhealthy: list[bool] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        sup = Supervisor(backoff_initial=0.1, backoff_max=2.0, stable_after=1.0)

        async def broken() -> None:
            starts.append(loop.time())
            raise RuntimeError("bad input")

        sup.spawn("probe", broken)
        for _ in range(200):  # 20 s, sampled every 0.1 s
            await asyncio.sleep(0.1)
            unhealthy.append(bool(sup.problems()))
        assert "probe" in sup.running()
        assert not sup.stop_requested.is_set(), "a dying task must not stop the daemon"
        await sup.shutdown(1.0)

    with caplog.at_level(logging.INFO, logger="egressd.runtime.supervisor"):
        run_virtual(main)
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(starts)]
    assert gaps[:6] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0]
    assert set(gaps[5:]) == {2.0}, "the backoff is capped"
    assert all(unhealthy), "a task that keeps dying keeps /healthz failing"
    assert "task probe has finished unexpectedly: RuntimeError('bad input')" in caplog.text


def test_a_task_that_returns_is_restarted_and_healthy_again_once_it_runs() -> None:
    async def main() -> None:
        runs = 0
        sup = Supervisor(backoff_initial=0.5, backoff_max=4.0, stable_after=1.0)

        async def watch() -> None:
            nonlocal runs
            runs += 1
            if runs == 1:
                return  # the stream ended: unexpected for a watch
            await asyncio.Event().wait()

        sup.spawn("watch", watch)
        await asyncio.sleep(0.1)
        assert sup.problems() == ["task watch returned (down for 0.1s, restarting)"]
        await asyncio.sleep(0.5)
        assert runs == 2
        assert sup.problems(), "still failing until it has run stable_after"
        await asyncio.sleep(1.0)
        assert sup.problems() == []
        await sup.shutdown(1.0)

    run_virtual(main)


def test_a_one_shot_task_may_finish() -> None:
    async def main() -> None:
        sup = Supervisor()

        async def settle() -> None:
            await asyncio.sleep(0.1)

        sup.spawn("settle", settle, one_shot=True)
        await asyncio.sleep(1.0)
        assert sup.problems() == [] and "settle" not in sup.running()

    run_virtual(main)


class EndingWatchStore(FakeLeaseStore):
    """A store whose first watch stream ends after its list, as a broken
    connection handled wrongly would."""

    def __init__(self) -> None:
        super().__init__()
        self.watches = 0

    async def watch(self) -> AsyncIterator[LeaseEvent]:
        self.watches += 1
        first = self.watches == 1
        async for event in super().watch():
            yield event
            if first:
                return


def daemon(store: FakeLeaseStore) -> Daemon:
    from egressd.adapters.recording import RecordingDataPlane  # noqa: PLC0415

    plane = RecordingDataPlane("gw-a")
    settings = Settings(node=NodeSettings(name="gw-a", address=ip_address("10.0.0.1")), timing=TIMING, groups=(GROUP,))
    return Daemon(
        settings,
        store=store,
        dataplane=DataPlane(plane, plane, plane),
        clock=VirtualClock(),
        repair_interval=3600,
    )


def test_an_ended_lease_watch_fails_health_and_is_started_again() -> None:
    async def main() -> None:
        store = EndingWatchStore()
        d = daemon(store)
        task = asyncio.create_task(d.run(install_signals=False))
        await until(lambda: store.watches == 1 and bool(d.supervisor.problems()), 1.0)
        ok, problems = d.health()
        assert not ok and any("lease-watch returned" in p for p in problems)
        await until(lambda: store.watches == 2, 1.0)
        await until(lambda: d.health()[0], 10.0)
        d.supervisor.request_stop("test")
        assert await task == 0

    run_virtual(main)


def test_a_member_loop_that_raises_is_started_again_and_keeps_serving() -> None:
    async def main() -> None:
        store = FakeLeaseStore()
        d = daemon(store)
        task = asyncio.create_task(d.run(install_signals=False))
        await until(lambda: IP in d.members and d.members[IP].sm.state is State.OWNER, 2.0)
        member = d.members[IP]
        original = member.step
        failures = 0

        async def once_bad() -> float:
            nonlocal failures
            if failures == 0:
                failures += 1
                raise OverflowError("int too large to convert to float")
            return await original()

        member.step = once_bad  # type: ignore[method-assign]
        await until(lambda: failures == 1, 1.0)
        assert any(f"member:{IP}" in p for p in d.health()[1])
        # started again within the backoff, before the fence's renew deadline: no gap in service
        renews = len(store.node_writes)
        await asyncio.sleep(TIMING.lease_duration * 4)
        assert member.sm.state is State.OWNER and member.serving and len(store.node_writes) > renews
        await until(lambda: d.health()[0], 10.0)
        assert not d.supervisor.stop_requested.is_set()
        d.supervisor.request_stop("test")
        assert await task == 0

    run_virtual(main)
