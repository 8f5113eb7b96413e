"""A gateway taking many IPs at once takes at most TAKEOVERS_AT_ONCE of them at a time
(claim write and data plane), and all of them in the end."""

from __future__ import annotations

import asyncio
from ipaddress import ip_address

import pytest

from egressd.adapters.recording import RecordingDataPlane
from egressd.core.model import EgressGroup, IPAddress, NodeSettings, Settings
from egressd.runtime import daemon as daemon_module
from egressd.runtime.daemon import Daemon
from egressd.runtime.member import DataPlane
from tests.fakes import FakeLeaseStore
from tests.runtime.support import TIMING
from tests.virtual_time import VirtualClock, run_virtual, until

IPS = tuple(ip_address(f"172.18.0.{n}") for n in range(10, 30))


class SlowPlane(RecordingDataPlane):
    """An activation takes a moment; counts how many run at once."""

    def __init__(self, node: str) -> None:
        super().__init__(node)
        self.running = 0
        self.most = 0

    async def activate(self, ip: IPAddress, group: str) -> None:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(0.01)
            await super().activate(ip, group)
        finally:
            self.running -= 1


@pytest.mark.parametrize("bound", [3, 50])
def test_a_start_with_many_free_claims_takes_them_a_bounded_number_at_a_time(
    monkeypatch: pytest.MonkeyPatch, bound: int
) -> None:
    monkeypatch.setattr(daemon_module, "TAKEOVERS_AT_ONCE", bound)
    plane = SlowPlane("gw-a")

    async def main() -> None:
        group = EgressGroup(name="outpost", egress_ips=IPS, interface="net0", candidates=("gw-a",))
        settings = Settings(
            node=NodeSettings(name="gw-a", address=ip_address("10.0.0.1")), timing=TIMING, groups=(group,)
        )
        d = Daemon(
            settings,
            store=FakeLeaseStore(),
            dataplane=DataPlane(plane, plane, plane),
            clock=VirtualClock(),
            repair_interval=3600,
        )
        task = asyncio.create_task(d.run(install_signals=False))
        await until(lambda: all(ip in plane.snat for ip in IPS), 5.0)
        d.supervisor.request_stop("test")
        await task

    run_virtual(main)
    assert plane.most == min(bound, len(IPS))
