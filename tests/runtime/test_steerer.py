"""The steering role: IPs whose owner changed together are steered together."""

from __future__ import annotations

import asyncio
import ipaddress

from egressd.core.lease import LeaseRecord, lease_name
from egressd.core.model import EgressGroup, IPAddress
from egressd.runtime.steerer import Steerer
from egressd.runtime.view import LeaseView
from tests.virtual_time import VirtualClock

IPS = tuple(ipaddress.ip_address(f"172.18.0.{n}") for n in (42, 43))
GROUP = EgressGroup(
    name="outpost",
    egress_ips=IPS,
    interface="net0",
    candidates=("gw-a", "gw-b"),
    source_cidrs=(ipaddress.ip_network("10.98.0.0/24"),),
    destination_cidrs=(ipaddress.ip_network("10.99.0.0/24"),),
)


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
        resource_version="1",
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
