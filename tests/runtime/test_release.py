"""Leases are never left held by nobody alive: a release after a cancelled
acquire reads the lease back; claims of IPs no longer configured are deleted
once released, with a resourceVersion precondition. On the fake clock."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from ipaddress import ip_address

import pytest

from egressd.adapters.recording import RecordingDataPlane
from egressd.core.errors import Forbidden
from egressd.core.lease import LeaseRecord, held_by, lease_name, released
from egressd.core.model import EgressGroup, NodeSettings, Settings
from egressd.core.states import State
from egressd.ports import LeaseEvent
from egressd.runtime.daemon import Daemon
from egressd.runtime.member import DataPlane, Member
from egressd.runtime.reconcile import ClaimRetirement
from egressd.runtime.sinks import NullMetrics
from egressd.runtime.view import LeaseView
from tests.fakes import FakeLeaseStore
from tests.runtime.support import TIMING, standalone_liveness
from tests.virtual_time import EPOCH, VirtualClock, run_virtual, until

IP = ip_address("172.18.0.42")
OTHER = ip_address("172.18.0.43")
NAME = lease_name(str(IP))
GROUP = EgressGroup(
    name="outpost",
    egress_ips=(IP, OTHER),
    interface="net0",
    candidates=("gw-a", "gw-b"),
    source_cidrs=(),
    destination_cidrs=(),
)


def settings(name: str, groups: tuple[EgressGroup, ...] = (GROUP,)) -> Settings:
    return Settings(node=NodeSettings(name=name, address=ip_address("10.0.0.1")), timing=TIMING, groups=groups)


class SlowAnswers(FakeLeaseStore):
    """Writes land at once, but their answers wait for ``answer`` (a slow API
    server, or a client cancelled before it read the response)."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = asyncio.Event()

    async def create(self, record: LeaseRecord, *, deadline: float) -> LeaseRecord:
        written = await super().create(record, deadline=deadline)
        await self.answer.wait()
        return written


def test_a_member_cancelled_with_its_acquire_in_flight_releases_what_landed(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        store = SlowAnswers()
        view = LeaseView(VirtualClock())
        view.apply(LeaseEvent(kind="sync"))  # no watch runs: the view never sees the write
        plane = RecordingDataPlane("gw-a")
        solo = EgressGroup(
            name="outpost",
            egress_ips=(IP,),
            interface="net0",
            candidates=("gw-a",),
            source_cidrs=(),
            destination_cidrs=(),
        )
        clock = VirtualClock()
        liveness = standalone_liveness(settings("gw-a", (solo,)), store, view, clock, "inc-a")
        assert await liveness.renew_once()  # the right to acquire
        member = Member(
            IP,
            solo,
            settings("gw-a", (solo,)),
            store=store,
            view=view,
            dataplane=DataPlane(plane, plane, plane),
            clock=clock,
            liveness=liveness,
            events=_Quiet(),
            metrics=NullMetrics(),
        )
        task = asyncio.create_task(member.run())
        await until(lambda: bool(store.writes), 1.0)  # the acquire landed; its answer has not come
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert store.leases[NAME].holder == "gw-a" and view.get(NAME).record is None
        store.answer.set()
        await member.shutdown()
        assert store.leases[NAME].holder is None, "the lease was left held by a member that is gone"
        assert member.sm.state is State.STOPPED and not plane.snat

    with caplog.at_level(logging.INFO):
        run_virtual(main)
    assert "our last write may have landed unseen; reading the lease back" in caplog.text


class _Quiet:
    def emit(self, event: object) -> None:
        pass


def daemon(name: str, store: FakeLeaseStore) -> Daemon:
    plane = RecordingDataPlane(name)
    return Daemon(
        settings(name),
        store=store,
        dataplane=DataPlane(plane, plane, plane),
        clock=VirtualClock(),
        repair_interval=3600,
    )


def test_the_claim_of_a_removed_ip_is_deleted_once_released() -> None:
    async def main() -> None:
        store = FakeLeaseStore()
        nodes = [daemon("gw-a", store), daemon("gw-b", store)]
        tasks = [asyncio.create_task(d.run(install_signals=False)) for d in nodes]
        await until(lambda: all(store.leases.get(lease_name(str(ip)), None) for ip in (IP, OTHER)), 2.0)
        await until(lambda: all(r.holder for r in store.leases.values()), 2.0)
        kept = EgressGroup(
            name="outpost",
            egress_ips=(OTHER,),
            interface="net0",
            candidates=("gw-a", "gw-b"),
            source_cidrs=(),
            destination_cidrs=(),
        )
        # the policy lost IP: both daemons get the new resolution
        await asyncio.gather(*(d.apply([kept]) for d in nodes))
        await until(lambda: NAME not in store.leases, 2.0)
        await asyncio.sleep(TIMING.lease_duration * 3)
        assert NAME not in store.leases, "nobody takes a removed IP again"
        assert store.leases[lease_name(str(OTHER))].holder, "the other IP is untouched"
        deletes = [record for op, record in store.writes if op == "delete"]
        assert [r.name for r in deletes] == [NAME]
        assert deletes[0].holder is None, "deleted once released"
        assert all(not d.retirement.retiring for d in nodes)
        for d in nodes:
            d.supervisor.request_stop("test")
        await asyncio.gather(*tasks)

    run_virtual(main)


def test_a_delete_racing_an_acquire_keeps_the_new_holders_claim(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        store = FakeLeaseStore()
        d = daemon("gw-a", store)
        first = held_by(
            None,
            name=NAME,
            egress_ip=str(IP),
            holder="gw-a",
            holder_address=None,
            incarnation=d.incarnation,
            lease_duration=TIMING.lease_duration,
            now=EPOCH,
        )
        free = store.put(released(store.put(first), successor=None, now=EPOCH))
        d.view.apply(LeaseEvent(kind="sync", records=(free,)))  # what gw-a decided on
        d.groups = ()
        d.retirement.retiring[NAME] = str(IP)
        # meanwhile a daemon that still lists the IP took it
        store.put(
            held_by(
                free,
                name=NAME,
                egress_ip=str(IP),
                holder="gw-b",
                holder_address=None,
                incarnation="inc-b",
                lease_duration=TIMING.lease_duration,
                now=EPOCH,
            )
        )
        await d.retirement.retire_claims()
        assert store.leases[NAME].holder == "gw-b", "the new holder's claim was deleted"
        assert NAME in d.retirement.retiring, "decided again on the news of that write"
        # once the view shows gw-b holding it, gw-a leaves it to gw-b
        d.view.observe(NAME, store.leases[NAME])
        await d.retirement.retire_claims()
        assert store.leases[NAME].holder == "gw-b"

    with caplog.at_level(logging.INFO):
        run_virtual(main)
    assert "claim not deleted, it changed meanwhile" in caplog.text
    assert "held-by-other" in caplog.text


def test_claims_left_by_ips_removed_while_down_are_deleted_at_start_up() -> None:
    """A restart with a config that no longer lists an IP: its free claim, and
    the one our previous process left held once it expired, are deleted; a
    claim another node holds alive is left to that node."""
    removed = [ip_address(f"172.18.0.{n}") for n in (50, 51, 52)]

    def claim(ip: object, holder: str | None, incarnation: str) -> LeaseRecord:
        record = held_by(
            None,
            name=lease_name(str(ip)),
            egress_ip=str(ip),
            holder=holder or "gw-x",
            holder_address=None,
            incarnation=incarnation,
            lease_duration=TIMING.lease_duration,
            now=EPOCH,
        )
        return released(record, successor=None, now=EPOCH) if holder is None else record

    async def main() -> None:
        store = FakeLeaseStore()
        store.put(claim(removed[0], None, ""))
        store.put(claim(removed[1], "gw-a", "previous-process"))
        store.put(claim(removed[2], "gw-b", "inc-b"))

        async def gw_b_renews() -> None:  # a daemon that still lists the IP
            name = lease_name(str(removed[2]))
            while True:
                await asyncio.sleep(TIMING.retry_period)
                record = store.leases[name]
                renewed = held_by(
                    record,
                    name=name,
                    egress_ip=record.egress_ip,
                    holder="gw-b",
                    holder_address=None,
                    incarnation="inc-b",
                    lease_duration=TIMING.lease_duration,
                    now=EPOCH,
                )
                await store.update(renewed, deadline=asyncio.get_running_loop().time() + 1)

        renewer = asyncio.create_task(gw_b_renews())
        d = daemon("gw-a", store)
        task = asyncio.create_task(d.run(install_signals=False))
        await until(lambda: lease_name(str(removed[0])) not in store.leases, 1.0)
        assert lease_name(str(removed[1])) in store.leases, "not before it expired"
        await until(lambda: lease_name(str(removed[1])) not in store.leases, TIMING.lease_duration + 0.1)
        await asyncio.sleep(TIMING.lease_duration * 5)
        assert lease_name(str(removed[2])) in store.leases, "a live holder's claim is left to it"
        assert {lease_name(str(IP)), lease_name(str(OTHER))} <= set(store.leases), "configured IPs keep theirs"
        renewer.cancel()
        d.supervisor.request_stop("test")
        await task

    run_virtual(main)


class RefusesDeletes(FakeLeaseStore):
    """A lease store whose identity may not delete (a Role without ``delete``)."""

    def __init__(self) -> None:
        super().__init__()
        self.deletes = 0

    async def delete(self, record: LeaseRecord, *, deadline: float) -> bool:
        self.deletes += 1
        raise Forbidden('leases "egressd-172-18-0-42" is forbidden: cannot delete resource "leases"')


def test_a_refused_delete_backs_off_instead_of_following_every_lease_renewal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The other claims' renewals are lease news every retry period; a claim
    whose delete is refused is tried again after a growing backoff, not on
    each of them, and the refusal is not logged at each try."""

    async def main() -> None:
        store = RefusesDeletes()
        d = daemon("gw-a", store)
        d.retirement = ClaimRetirement(
            view=d.view, store=store, clock=d.clock, timing=TIMING, node="gw-a", incarnation=d.incarnation,
            listed=set, held=set, draw=lambda: 0.0,
        )  # fmt: skip
        free = store.put(
            released(
                held_by(
                    None, name=NAME, egress_ip=str(IP), holder="gw-b", holder_address=None, incarnation="inc-b",
                    lease_duration=TIMING.lease_duration, now=EPOCH,
                ),
                successor=None,
                now=EPOCH,
            )
        )  # fmt: skip
        other = held_by(
            None, name=lease_name(str(OTHER)), egress_ip=str(OTHER), holder="gw-b", holder_address=None,
            incarnation="inc-b", lease_duration=TIMING.lease_duration, now=EPOCH,
        )  # fmt: skip
        d.view.apply(LeaseEvent(kind="sync", records=(free, store.put(other))))
        d.retirement.add(NAME, str(IP))
        task = asyncio.create_task(d.retirement.run())
        for _ in range(int(30 / TIMING.retry_period)):  # 30 s of renewals of the other claim
            await asyncio.sleep(TIMING.retry_period)
            other = store.put(other)
            d.view.observe(other.name, other)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        # backoff ceilings 0.1, 0.4, 1.6, 6.4, 25.6 s: a handful of tries in 30 s, not 120
        assert 3 <= store.deletes <= 8, f"{store.deletes} deletes in 30 s"
        assert NAME in d.retirement.retiring, "still to be deleted once allowed"

    with caplog.at_level(logging.INFO, logger="egressd.runtime.reconcile"):
        run_virtual(main)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert 1 <= len(warnings) <= 5, [r.getMessage() for r in warnings]
