"""The runtime with in-memory fakes at its ports: several daemons, one store.

These run on the virtual-time loop (tests/runtime/conftest.py) with a
VirtualClock and short timings that keep the safety inequalities
(tests/runtime/support.py; the fakes have no kernel, so the address lifetime is
only modelled, on the process's monotonic clock).
Assertions are about order and safety, with the time bounds of the protocol.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from ipaddress import ip_address

import pytest

from egressd.adapters.recording import RecordingDataPlane
from egressd.core.election import rendezvous_rank
from egressd.core.errors import ConfigError
from egressd.core.lease import lease_name
from egressd.core.model import EgressGroup, IPAddress, NodeSettings, Settings
from egressd.core.ownership_events import OwnershipEvent
from egressd.core.states import State
from egressd.ports import LeaseEvent
from egressd.runtime.daemon import Daemon
from egressd.runtime.member import DataPlane, Member
from egressd.runtime.sinks import FanoutEvents, LogEvents, NullMetrics
from egressd.runtime.view import LeaseView
from tests.fakes import FakeLeaseStore
from tests.runtime.support import (
    TIMING,
    ObjectLeaseStore,
    RunsDaemon,
    assert_no_two_owners,
    poisoned,
    standalone_liveness,
)
from tests.virtual_time import VirtualClock, counts, until

IP = ip_address("172.18.0.42")
GROUP = EgressGroup(
    name="outpost",
    egress_ips=(IP,),
    interface="net0",
    candidates=("gw-a", "gw-b", "gw-c"),
    source_cidrs=(),
    destination_cidrs=(),
)


class Recorder:
    def __init__(self) -> None:
        self.events: list[OwnershipEvent] = []

    def emit(self, event: OwnershipEvent) -> None:
        self.events.append(event)


ADDRESSES = {"gw-a": "10.0.0.1", "gw-b": "10.0.0.2", "gw-c": "10.0.0.3", "worker": "10.0.0.9"}


class Node(RunsDaemon):
    def __init__(self, name: str, store: FakeLeaseStore, incarnation: str | None = None) -> None:
        settings = Settings(
            node=NodeSettings(name=name, address=ip_address(ADDRESSES[name])), timing=TIMING, groups=(GROUP,)
        )
        self.plane = RecordingDataPlane(name)
        self.events = Recorder()
        self.daemon = Daemon(
            settings,
            store=store,
            dataplane=DataPlane(self.plane, self.plane, self.plane),
            steering=self.plane,
            clock=VirtualClock(),
            events=FanoutEvents([LogEvents(), self.events]),
            incarnation=incarnation,
            repair_interval=3600,
        )
        self.task: asyncio.Task[int] | None = None

    async def crash(self) -> None:
        """Vanish without withdrawing: what SIGKILL does (the address expires by itself)."""
        assert self.task is not None
        for name in self.daemon.supervisor.running():
            await self.daemon.supervisor.cancel(name)
        self.daemon.members.clear()  # so the run task's shutdown path has nothing to withdraw or release
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    @property
    def serving(self) -> bool:
        return IP in self.plane.snat


@asynccontextmanager
async def cluster(*names: str) -> AsyncIterator[tuple[FakeLeaseStore, list[Node]]]:
    store = FakeLeaseStore()
    nodes = [Node(n, store) for n in names]
    for node in nodes:
        node.start()
    try:
        yield store, nodes
    finally:
        for node in nodes:
            if node.task is not None and not node.task.done():
                node.task.cancel()
                await asyncio.gather(node.task, return_exceptions=True)


def assert_safe(nodes: list[Node]) -> None:
    assert_no_two_owners(n.plane for n in nodes)


async def test_exactly_one_owner_and_it_is_the_preferred() -> None:
    async with cluster("gw-a", "gw-b", "gw-c") as (_, nodes):
        await until(lambda: sum(n.serving for n in nodes) == 1, 2.0)
        await asyncio.sleep(0.5)
        assert sum(n.serving for n in nodes) == 1
        owner = next(n for n in nodes if n.serving)
        assert owner.daemon.settings.node.name == rendezvous_rank(str(IP), GROUP.candidates)[0]
        assert_safe(nodes)


async def test_graceful_stop_hands_off_at_once() -> None:
    async with cluster("gw-a", "gw-b", "gw-c") as (_, nodes):
        await until(lambda: any(n.serving for n in nodes), 2.0)
        owner = next(n for n in nodes if n.serving)
        others = [n for n in nodes if n is not owner]
        loop = asyncio.get_running_loop()
        started = loop.time()
        await owner.stop()
        gap = await until(lambda: any(n.serving for n in others), 2.0)
        assert loop.time() - started < 0.5, f"handoff took {gap:.3f}s"
        withdrawal = [op["op"] for op in owner.plane.ops if op["op"] != "snat-off-together"][-3:]
        assert withdrawal == ["announce-stop", "release", "snat-off"]
        assert_safe(nodes)


async def test_crashed_owner_is_replaced_after_the_lease_expires() -> None:
    async with cluster("gw-a", "gw-b") as (_, nodes):
        await until(lambda: any(n.serving for n in nodes), 2.0)
        owner = next(n for n in nodes if n.serving)
        other = next(n for n in nodes if n is not owner)
        await owner.crash()
        waited = await until(lambda: other.serving, 3.0)
        assert waited >= TIMING.lease_duration - 0.1
        assert waited <= TIMING.lease_duration + 4 * TIMING.retry_period + 0.3


async def test_frozen_api_owner_steps_down_at_deadline_and_nobody_takes_over() -> None:
    async with cluster("gw-a", "gw-b") as (store, nodes):
        await until(lambda: any(n.serving for n in nodes), 2.0)
        owner = next(n for n in nodes if n.serving)
        store.pause()
        loop = asyncio.get_running_loop()
        paused_at = loop.time()
        waited = await until(lambda: not owner.serving, 2.0)
        assert waited <= TIMING.renew_deadline + 0.15
        assert any(e.reason == "renew-deadline" for e in owner.events.events)
        await asyncio.sleep(TIMING.lease_duration * 2)
        assert not any(n.serving for n in nodes), "someone served while the API was frozen"
        store.resume()
        await until(lambda: any(n.serving for n in nodes), 3.0)
        assert loop.time() - paused_at > TIMING.lease_duration
        assert_safe(nodes)


async def test_an_owner_whose_api_call_hangs_past_its_deadline_is_fenced_at_the_deadline() -> None:
    """The daemon fence does not wait for the member loop: a call that never
    returns (a client stuck in it) delays the step-down not at all."""
    async with cluster("gw-a", "gw-b") as (store, nodes):
        await until(lambda: any(n.serving for n in nodes), 2.0)
        owner = next(n for n in nodes if n.serving)
        store.wedge()
        waited = await until(lambda: not owner.serving, 2.0)
        assert waited <= TIMING.renew_deadline + 0.15
        assert any(e.reason == "renew-deadline" for e in owner.events.events)
        store.resume()
        await until(lambda: any(n.serving for n in nodes), 3.0)
        assert_safe(nodes)


async def test_a_graceful_stop_names_the_next_candidate_as_successor() -> None:
    async with cluster("gw-a", "gw-b", "gw-c") as (store, nodes):
        await until(lambda: any(n.serving for n in nodes), 2.0)
        owner = next(n for n in nodes if n.serving)
        others = set(GROUP.candidates) - {owner.daemon.settings.node.name}
        await owner.stop()
        released = [r for verb, r in store.writes if verb == "update" and not r.holder]
        assert released, "the lease was not released"
        successor = released[-1].preferred_holder
        assert successor in others, f"released to {successor!r}"
        await until(lambda: store.leases[lease_name(str(IP))].holder == successor, 2.0)


async def test_identity_clash_is_fenced() -> None:
    store = FakeLeaseStore()
    solo = replace(GROUP, candidates=("gw-a",))
    twins = []
    for incarnation in ("first", "second"):
        node = Node("gw-a", store, incarnation=incarnation)
        node.daemon.settings = replace(node.daemon.settings, groups=(solo,))
        node.daemon.groups = (solo,)
        twins.append(node)
    twins[0].start()
    await until(lambda: twins[0].serving, 2.0)
    # the twin appears: it waits for the lease (other incarnation) to expire, but the
    # first keeps renewing; force the clash by letting the twin write over it.
    record = store.leases[lease_name(str(IP))]
    store.put(replace(record, incarnation="second"))
    await until(lambda: not twins[0].serving, 1.0)
    assert any(e.kind == "fenced" and e.reason == "identity-clash" for e in twins[0].events.events)
    assert twins[0].daemon.members[IP].sm.state is State.FENCED
    await twins[0].stop()


async def test_malformed_lease_is_not_acted_on() -> None:
    """The guard in ``Member.step``: on a lease it cannot read, a member neither
    renews nor acquires, whatever its state; the owner's tenure ends by its
    fence at the renew deadline, and nobody takes over. (Without the guard the
    members decide on "no lease" and write it over and over; each such call
    takes the store's round trip, so virtual time still passes and the test
    fails instead of spinning.)"""
    store = ObjectLeaseStore()
    nodes = [Node(name, store) for name in ("gw-a", "gw-b")]
    for node in nodes:
        node.start()
    try:
        await until(lambda: any(n.serving for n in nodes), 2.0)
        attempts = len(store.attempts)
        store.put_object(poisoned(str(IP)))
        await until(lambda: not any(n.serving for n in nodes), TIMING.renew_deadline + 0.2)
        await asyncio.sleep(2 * TIMING.lease_duration)
        assert not any(n.serving for n in nodes)
        assert store.attempts[attempts:] == [], "a member wrote a lease it cannot read"
        assert all(n.daemon.members[IP].sm.state is State.STANDBY for n in nodes)
        assert not any(n.daemon.supervisor.dead for n in nodes)
        assert_safe(nodes)
    finally:
        for node in nodes:
            await node.stop()


async def test_restart_adopts_a_held_ip_without_withdrawing() -> None:
    store = FakeLeaseStore()
    first = Node("gw-a", store, incarnation="one")
    first.start()
    await until(lambda: first.serving, 2.0)
    await first.crash()
    second = Node("gw-a", store, incarnation="two")
    second.plane.addresses = dict(first.plane.addresses)  # the kernel kept the address
    second.plane.snat = dict(first.plane.snat)
    second.start()
    await until(
        lambda: second.daemon.members.get(IP) is not None and second.daemon.members[IP].sm.state is State.OWNER, 1.0
    )
    assert "release" not in [op["op"] for op in second.plane.ops], "the adopted address was withdrawn"
    assert any(e.reason == "adopt-previous-incarnation" for e in second.events.events)
    await second.stop()


async def test_reconcile_removes_what_this_node_does_not_hold() -> None:
    store = FakeLeaseStore()
    node = Node("gw-b", store)
    other = ip_address("172.18.0.99")
    node.plane.addresses = {(IP, "net0"): time.monotonic() + 5, (other, "net0"): time.monotonic() + 5}
    node.plane.snat = {other: "outpost"}
    node.start()
    await until(node.daemon.reconciled.is_set, 2.0)
    released = {op["ip"] for op in node.plane.ops if op["op"] == "release"}
    assert str(other) in released
    assert other not in node.plane.snat
    await node.stop()


async def test_unavailable_api_steps_down() -> None:
    async with cluster("gw-a", "gw-b") as (store, nodes):
        await until(lambda: any(n.serving for n in nodes), 2.0)
        store.fail()
        await until(lambda: not any(n.serving for n in nodes), 1.0)
        store.fail(False)
        await until(lambda: any(n.serving for n in nodes), 3.0)
        assert_safe(nodes)


async def test_drift_repair_restores_a_deleted_address_and_a_flushed_table() -> None:
    async with cluster("gw-a", "gw-b") as (_, nodes):
        await until(lambda: any(n.serving for n in nodes), 2.0)
        owner = next(n for n in nodes if n.serving)
        other = next(n for n in nodes if n is not owner)
        owner.plane.addresses.clear()  # someone deleted the address
        owner.plane.snat.clear()  # and flushed the ruleset
        other.plane.addresses[(IP, "net0")] = time.monotonic() + 5  # a stale address on the standby
        repaired_owner = await owner.daemon.repair_drift()
        repaired_other = await other.daemon.repair_drift()
        assert sorted(repaired_owner) == [f"{IP}:address-missing", f"{IP}:snat-missing"]
        assert repaired_other == [f"{IP}:stale-state"]
        assert owner.serving and (IP, "net0") in await owner.plane.owned()
        assert not await other.plane.owned()
        assert any(e.kind == "drift" for e in owner.events.events)
        assert await owner.daemon.repair_drift() == []  # converged


async def test_drift_repair_asks_only_the_members_whose_kernel_state_differs() -> None:
    async with cluster("gw-a", "gw-b") as (_, nodes):
        await until(lambda: any(n.serving for n in nodes), 2.0)
        owner = next(n for n in nodes if n.serving)
        other = next(n for n in nodes if n is not owner)
        asked: list[str] = []

        def counting(member: Member, name: str) -> None:
            reconcile = member.reconcile

            async def counted(present: set[IPAddress], active: set[IPAddress]) -> list[str]:
                asked.append(name)
                return await reconcile(present, active)

            member.reconcile = counted  # type: ignore[method-assign]

        for node in nodes:
            for member in node.daemon.members.values():
                counting(member, node.daemon.settings.node.name)
        assert await owner.daemon.repair_drift() == [] and await other.daemon.repair_drift() == []
        assert asked == []  # at rest: the owner's IP shown, the standby's not
        owner.plane.snat.clear()  # the SNAT rule alone is gone
        assert await owner.daemon.repair_drift() == [f"{IP}:snat-missing"]
        other.plane.snat[IP] = "web"  # a SNAT rule alone on the standby
        assert await other.daemon.repair_drift() == [f"{IP}:stale-state"]
        assert asked == [owner.daemon.settings.node.name, other.daemon.settings.node.name]
        owner.plane.snat.clear()
        (member,) = owner.daemon.members.values()
        stages = counts(owner.plane.ops, "stage")
        async with member.dp_lock:  # a change under way: left to the next pass, not waited for
            async with asyncio.timeout(1.0):
                assert await owner.daemon.repair_drift() == []
        assert counts(owner.plane.ops, "stage") == stages, "the table was staged again for a takeover under way"
        assert await owner.daemon.repair_drift() == [f"{IP}:snat-missing"]
        assert counts(owner.plane.ops, "stage") == stages + 1


async def test_steering_follows_the_owner_keeps_it_between_owners_and_is_removed_with_the_lease() -> None:
    async with cluster("gw-a", "gw-b", "worker") as (store, nodes):
        worker = nodes[2]
        await until(lambda: any(n.serving for n in nodes[:2]), 2.0)
        owner = next(n for n in nodes[:2] if n.serving)
        expected = ip_address(ADDRESSES[owner.daemon.settings.node.name])
        await until(lambda: worker.plane.steering.get(IP) == expected, 1.0)
        await owner.stop()
        new = next(n for n in nodes[:2] if n is not owner)
        await until(lambda: new.serving, 2.0)
        await until(lambda: worker.plane.steering.get(IP) == ip_address(ADDRESSES[new.daemon.settings.node.name]), 1.0)
        via_new = ip_address(ADDRESSES[new.daemon.settings.node.name])
        record = store.leases[lease_name(str(IP))]
        store.put(replace(record, holder=None, holder_address=None, incarnation=None))  # released
        await asyncio.sleep(0.2)
        assert worker.plane.steering.get(IP) == via_new, "a free lease keeps the route to the last owner"
        store.leases.pop(lease_name(str(IP)))
        store._publish(LeaseEvent(kind="delete", name=lease_name(str(IP))))
        await until(lambda: worker.plane.steering.get(IP, IP) is None, 1.0)


async def test_fence_and_member_stepping_down_at_once_do_not_crash() -> None:
    """Both paths withdraw; the second must find the state changed, not fire an illegal move."""
    async with cluster("gw-a", "gw-b") as (_, nodes):
        await until(lambda: any(n.serving for n in nodes), 2.0)
        owner = next(n for n in nodes if n.serving)
        member = owner.daemon.members[IP]
        original = owner.plane.deactivate

        async def slow_deactivate(ip: IPAddress) -> None:
            await asyncio.sleep(0.05)
            await original(ip)

        owner.plane.deactivate = slow_deactivate  # type: ignore[method-assign]
        await asyncio.gather(member.step_down("renew-deadline"), member.step_down("lost-lease"))
        assert member.sm.state is State.STANDBY
        assert not owner.daemon.supervisor.dead


def test_a_daemon_whose_timings_break_the_safety_argument_is_refused() -> None:
    plane = RecordingDataPlane("gw-a")
    settings = Settings(
        node=NodeSettings(name="gw-a", address=ip_address(ADDRESSES["gw-a"])),
        timing=replace(TIMING, fence_ttl=1.5),
        groups=(GROUP,),
    )
    with pytest.raises(ConfigError, match=r"\(T1\) leaseDuration"):
        Daemon(settings, store=FakeLeaseStore(), dataplane=DataPlane(plane, plane, plane), clock=VirtualClock())


def test_a_member_whose_timings_break_the_safety_argument_is_refused() -> None:
    plane = RecordingDataPlane("gw-a")
    settings = Settings(
        node=NodeSettings(name="gw-a", address=ip_address(ADDRESSES["gw-a"])),
        timing=replace(TIMING, fence_ttl=1.5),
        groups=(GROUP,),
    )
    clock = VirtualClock()
    with pytest.raises(ConfigError, match=r"\(T1\) leaseDuration"):
        Member(
            IP,
            GROUP,
            settings,
            store=FakeLeaseStore(),
            view=LeaseView(clock),
            dataplane=DataPlane(plane, plane, plane),
            clock=clock,
            liveness=standalone_liveness(settings, FakeLeaseStore(), LeaseView(clock), clock, "inc-a"),
            events=FanoutEvents(),
            metrics=NullMetrics(),
        )
