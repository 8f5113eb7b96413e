"""The poisoned-lease test, on the fake clock: a Lease that egressd cannot read
(``egressd.io/lease-duration-ms`` of 400 digits) is present while gateways and
a worker run. Nobody acts on it, no task dies, the daemons stay up and serve
their other IP, and once the bad lease is deleted or fixed the IP is owned
again and steered to its owner.

The store (:class:`tests.runtime.support.ObjectLeaseStore`) keeps such a lease
as the API server would and decodes it where the Kubernetes adapter does.
"""

from __future__ import annotations

import asyncio
from ipaddress import ip_address
from typing import Any

from egressd.adapters.recording import RecordingDataPlane
from egressd.core.lease import LeaseRecord, lease_name, object_from_record
from egressd.core.model import EgressGroup, NodeSettings, Settings
from egressd.core.states import State
from egressd.ports import LeaseEvent
from egressd.runtime.daemon import Daemon
from egressd.runtime.member import DataPlane
from tests.runtime.support import TIMING, ObjectLeaseStore, assert_no_two_owners, poisoned
from tests.virtual_time import VirtualClock, run_virtual, until

POISONED = ip_address("172.18.0.42")
HEALTHY = ip_address("172.18.0.43")
GROUP = EgressGroup(
    name="outpost",
    egress_ips=(POISONED, HEALTHY),
    interface="net0",
    candidates=("gw-a", "gw-b"),
    source_cidrs=(),
    destination_cidrs=(),
)
ADDRESSES = {"gw-a": "10.0.0.1", "gw-b": "10.0.0.2", "worker": "10.0.0.9"}


def daemon(name: str, store: ObjectLeaseStore) -> tuple[Daemon, RecordingDataPlane]:
    settings = Settings(
        node=NodeSettings(name=name, address=ip_address(ADDRESSES[name])), timing=TIMING, groups=(GROUP,)
    )
    plane = RecordingDataPlane(name)
    return (
        Daemon(
            settings,
            store=store,
            dataplane=DataPlane(plane, plane, plane),
            steering=plane,
            clock=VirtualClock(),
            repair_interval=3600,
        ),
        plane,
    )


def serving(planes: dict[str, RecordingDataPlane], ip: Any) -> list[str]:
    return [name for name, plane in planes.items() if name != "worker" and ip in plane.snat]


def assert_all_up(daemons: dict[str, Daemon], tasks: list[asyncio.Task[int]]) -> None:
    for name, d in daemons.items():
        assert not d.supervisor.dead, f"{name}: tasks died: {d.supervisor.dead}"
        assert not d.supervisor.stop_requested.is_set(), f"{name}: stop requested: {d.supervisor.stop_reason}"
        assert "lease-watch" in d.supervisor.running(), f"{name}: the lease watch is not running"
        healthy, problems = d.health()
        assert healthy, f"{name}: unhealthy: {problems}"
    for name in ("gw-a", "gw-b"):
        running = set(daemons[name].supervisor.running())
        for ip in (POISONED, HEALTHY):
            assert {f"member:{ip}", "node-lease", "node-fence"} <= running, f"{name}: the tasks of {ip} are not running"
    assert not any(t.done() for t in tasks)


def test_a_poisoned_lease_kills_nothing_and_the_ip_is_owned_once_it_is_deleted_or_fixed() -> None:
    poisoned_name, healthy_name = lease_name(str(POISONED)), lease_name(str(HEALTHY))

    async def main() -> None:
        store = ObjectLeaseStore()
        store.put_object(poisoned(str(POISONED)))  # present before the daemons start
        built = {name: daemon(name, store) for name in ("gw-a", "gw-b", "worker")}
        daemons = {name: d for name, (d, _) in built.items()}
        planes = {name: p for name, (_, p) in built.items()}
        tasks = [asyncio.create_task(d.run(install_signals=False)) for d in daemons.values()]
        try:
            # 1. the other IP is served; nobody touches the poisoned lease or serves its IP
            await until(lambda: len(serving(planes, HEALTHY)) == 1, 5.0)
            await asyncio.sleep(5 * TIMING.lease_duration)
            assert serving(planes, POISONED) == []
            assert [a for a in store.attempts if a[1] == poisoned_name] == []
            for d in daemons.values():
                assert poisoned_name in d.view.problems()
                assert "lease-duration-ms" in d.view.problems()[poisoned_name]
            assert_all_up(daemons, tasks)

            # 2. the lease of the served IP is poisoned under its owner: the owner
            # steps down at its renew deadline, nobody takes over, nothing dies
            owner = serving(planes, HEALTHY)[0]
            store.put_object(poisoned(str(HEALTHY)))
            await until(lambda: serving(planes, HEALTHY) == [], TIMING.renew_deadline + 0.1)
            writes = len(store.attempts)
            await asyncio.sleep(5 * TIMING.lease_duration)
            assert serving(planes, HEALTHY) == []
            assert len(store.attempts) - writes <= 2, "members kept writing a lease they cannot read"
            assert daemons[owner].members[HEALTHY].sm.state is State.STANDBY
            assert_all_up(daemons, tasks)

            # 3. the poisoned lease is deleted: its IP gets owned, and the worker steers to the owner
            store.remove_object(poisoned_name)
            await until(lambda: len(serving(planes, POISONED)) == 1, 2 * TIMING.lease_duration)
            new_owner = serving(planes, POISONED)[0]
            await until(lambda: planes["worker"].steering.get(POISONED) == ip_address(ADDRESSES[new_owner]), 1.0)

            # 4. the other is fixed (a free lease written over it): owned again
            fixed = object_from_record(
                LeaseRecord(
                    name=healthy_name,
                    egress_ip=str(HEALTHY),
                    holder=None,
                    lease_duration=0.0,
                    transitions=4,
                    resource_version="",
                ),
                "egressd",
            )
            store.put_object(fixed)
            await until(lambda: len(serving(planes, HEALTHY)) == 1, 2 * TIMING.lease_duration)
            assert store.leases[healthy_name].transitions == 5
            assert_all_up(daemons, tasks)
            assert all(d.view.problems() == {} for d in daemons.values())
            assert_no_two_owners(p for name, p in planes.items() if name != "worker")
        finally:
            for d in daemons.values():
                d.supervisor.request_stop("test over")
            await asyncio.gather(*tasks, return_exceptions=True)

    run_virtual(main)


def test_a_relist_keeps_an_unreadable_lease_a_problem_and_forgets_it_once_gone() -> None:
    """The watch's sync (after a reconnect or a 410) carries the unreadable leases:
    the view keeps them as problems rather than forgetting them until the next event."""

    async def main() -> None:
        from egressd.runtime.view import LeaseView  # noqa: PLC0415

        view = LeaseView(VirtualClock())
        name = lease_name(str(POISONED))
        view.apply(LeaseEvent(kind="sync", problems=((name, f"{name}: metadata.annotations[x]: bad"),)))
        assert view.get(name).problem and view.get(name).record is None
        view.apply(LeaseEvent(kind="sync", problems=((name, f"{name}: metadata.annotations[x]: bad"),)))
        assert view.problems() == {name: f"{name}: metadata.annotations[x]: bad"}
        view.apply(LeaseEvent(kind="sync"))
        assert view.problems() == {}
        assert view.ready.is_set()

    run_virtual(main)
