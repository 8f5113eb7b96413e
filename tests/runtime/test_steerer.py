"""The steering role: IPs whose owner changed together are steered together."""

from __future__ import annotations

import asyncio
import ipaddress
import itertools

from egressd.core.errors import DataPlaneError
from egressd.core.lease import LeaseRecord, lease_name
from egressd.core.model import EgressGroup, IPAddress
from egressd.runtime.steerer import Steerer
from egressd.runtime.view import LeaseView
from tests.virtual_time import VirtualClock, until

IPS = tuple(ipaddress.ip_address(f"172.18.0.{n}") for n in (42, 43))
GROUP = EgressGroup(
    name="outpost",
    egress_ips=IPS,
    interface="net0",
    candidates=("gw-a", "gw-b"),
    source_cidrs=(ipaddress.ip_network("10.98.0.0/24"),),
    destination_cidrs=(ipaddress.ip_network("10.99.0.0/24"),),
)


_VERSIONS = itertools.count(1)


class SlowSteering:
    """Each route change takes until released; records when each began."""

    def __init__(self) -> None:
        self.began: list[IPAddress] = []
        self.release = asyncio.Event()

    async def route(self, group: EgressGroup, ip: IPAddress, via: IPAddress | None) -> None:
        self.began.append(ip)
        await self.release.wait()


def claim(ip: IPAddress, holder: str, address: str) -> LeaseRecord:
    return LeaseRecord(
        name=lease_name(str(ip)),
        egress_ip=str(ip),
        holder=holder,
        lease_duration=2.5,
        transitions=1,
        resource_version=str(next(_VERSIONS)),
        holder_address=address,
        incarnation="i",
    )


async def test_ips_whose_owner_changed_together_are_steered_together() -> None:
    view = LeaseView(VirtualClock())
    for ip in IPS:
        view.observe(lease_name(str(ip)), claim(ip, "gw-b", "172.18.0.5"))
    steering = SlowSteering()
    steerer = Steerer((GROUP,), view, steering)
    task = asyncio.create_task(steerer.converge())
    for _ in range(10):
        await asyncio.sleep(0)
    assert sorted(steering.began) == sorted(IPS)  # the second did not wait for the first to end
    steering.release.set()
    assert await task is False
    assert steerer.current == dict.fromkeys(IPS, ipaddress.ip_address("172.18.0.5"))


class GatedSteering:
    """Each IP's route change waits for its own gate; records when each began."""

    def __init__(self) -> None:
        self.began: list[IPAddress] = []
        self.gates = {ip: asyncio.Event() for ip in IPS}
        self.fail: set[IPAddress] = set()

    async def route(self, group: EgressGroup, ip: IPAddress, via: IPAddress | None) -> None:
        self.began.append(ip)
        await self.gates[ip].wait()
        if ip in self.fail:
            raise DataPlaneError("refused")


async def test_an_ip_whose_owner_changed_does_not_wait_for_another_ips_change_under_way() -> None:
    """The release of a gateway's IPs reaches a worker as one claim after the
    other: the second is steered while the first's change still runs."""
    view = LeaseView(VirtualClock())
    for ip in IPS:
        view.observe(lease_name(str(ip)), claim(ip, "gw-a", "172.18.0.6"))
    steering = GatedSteering()
    for gate in steering.gates.values():
        gate.set()
    steerer = Steerer((GROUP,), view, steering, retry=0.5)
    view.ready.set()
    task = asyncio.create_task(steerer.run())
    try:
        await until(lambda: len(steerer.current) == 2, 1.0)
        for gate in steering.gates.values():
            gate.clear()
        steering.began.clear()
        view.observe(lease_name(str(IPS[0])), claim(IPS[0], "gw-b", "172.18.0.5"))
        await until(lambda: steering.began == [IPS[0]], 1.0)
        view.observe(lease_name(str(IPS[1])), claim(IPS[1], "gw-b", "172.18.0.5"))
        await until(lambda: steering.began == [IPS[0], IPS[1]], 1.0)  # the first is still under way
        steering.fail.add(IPS[1])
        steering.gates[IPS[1]].set()
        steering.gates[IPS[0]].set()
        new = ipaddress.ip_address("172.18.0.5")
        await until(lambda: steerer.current[IPS[0]] == new, 1.0)
        assert steerer.current[IPS[1]] != new
        steering.fail.clear()
        began = len(steering.began)
        await asyncio.sleep(0.25)
        assert len(steering.began) == began  # a failed change waits for the retry time
        await until(lambda: steerer.current[IPS[1]] == new, 1.0)
    finally:
        task.cancel()
