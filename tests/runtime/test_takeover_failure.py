"""A data plane that fails during takeover, on the fake clock: the failing
node holds off (a decision of the core, read in every state, growing and
capped) and lets a healthy standby serve instead of flapping."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from ipaddress import ip_address

import pytest

from egressd.adapters.recording import RecordingDataPlane
from egressd.core.election import HOLD_OFF_GROWTH_CAP, spread_rank
from egressd.core.errors import DataPlaneError
from egressd.core.lease import lease_name
from egressd.core.model import EgressGroup, IPAddress, NodeSettings, Settings
from egressd.runtime.daemon import Daemon
from egressd.runtime.member import DataPlane
from tests.fakes import FakeLeaseStore
from tests.runtime.support import TIMING
from tests.virtual_time import VirtualClock, run_virtual, until

IP = ip_address("172.18.0.42")


class FailingPlane(RecordingDataPlane):
    """SNAT activation always fails, as with a broken nftables."""

    async def activate(self, ip: IPAddress, group: str) -> None:
        self._record("snat-on-failed", ip=str(ip))
        raise DataPlaneError(f"nft: activating SNAT to {ip} failed")


def node(name: str, candidates: tuple[str, ...], store: FakeLeaseStore, plane: RecordingDataPlane) -> Daemon:
    group = EgressGroup(
        name="outpost", egress_ips=(IP,), interface="net0", candidates=candidates, source_cidrs=(), destination_cidrs=()
    )
    settings = Settings(node=NodeSettings(name=name, address=ip_address("10.0.0.1")), timing=TIMING, groups=(group,))
    return Daemon(
        settings, store=store, dataplane=DataPlane(plane, plane, plane), clock=VirtualClock(), repair_interval=3600
    )


def acquires(store: FakeLeaseStore, name: str) -> int:
    """Writes that made ``name`` the holder (renews keep the holder, so are not counted)."""
    count, holder = 0, None
    for _, record in store.writes:
        if record.name == lease_name(str(IP)):
            if record.holder == name and holder != name:
                count += 1
            holder = record.holder
    return count


def test_a_failing_preferred_node_lets_the_healthy_standby_serve() -> None:
    candidates = ("gw-a", "gw-b")
    bad, good = spread_rank(str(IP), [str(IP)], candidates)
    served_after: list[float] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        store = FakeLeaseStore()
        healthy = RecordingDataPlane(good)
        daemons = [
            node(bad, candidates, store, FailingPlane(bad)),
            node(good, candidates, store, healthy),
        ]
        tasks = [asyncio.create_task(d.run(install_signals=False)) for d in daemons]
        started = loop.time()
        await until(lambda: IP in healthy.snat, 5.0)
        served_after.append(loop.time() - started)
        await asyncio.sleep(30.0)
        assert IP in healthy.snat, "the healthy standby keeps serving"
        assert store.leases[lease_name(str(IP))].holder == good
        assert acquires(store, bad) == 1, f"the failing node acquired {acquires(store, bad)} times"
        for d in daemons:
            d.supervisor.request_stop("test")
        await asyncio.gather(*tasks)

    run_virtual(main)
    # released to the next candidate at once: the standby does not even wait for the non-preferred delay
    assert served_after[0] < TIMING.non_preferred_delay + 4 * TIMING.retry_period


def test_a_lone_failing_node_backs_off_with_growth_capped(caplog: pytest.LogCaptureFixture) -> None:
    times: list[float] = []

    async def main() -> None:
        store = FakeLeaseStore()
        plane = FailingPlane("gw-a")
        d = node("gw-a", ("gw-a",), store, plane)
        task = asyncio.create_task(d.run(install_signals=False))
        loop = asyncio.get_running_loop()
        seen = 0
        end = loop.time() + 60.0
        while loop.time() < end:
            await asyncio.sleep(0.01)
            count = acquires(store, "gw-a")
            if count > seen:
                times.append(loop.time())
                seen = count
        d.supervisor.request_stop("test")
        await task

    with caplog.at_level(logging.INFO):
        run_virtual(main)
    assert "decision standby (hold-off) after dataplane-failed" in caplog.text
    gaps = [b - a for a, b in itertools.pairwise(times)]
    ld = TIMING.lease_duration
    # 0.6, 1.2, 2.4, 4.8, 9.6, then 9.6 s apart: about a dozen in a minute, not hundreds
    assert len(times) <= 12, f"{len(times)} acquires in 60 s"
    for gap, factor in zip(gaps, [1, 2, 4, 8, 16, 16, 16], strict=False):
        assert factor * ld - 0.02 <= gap <= factor * ld + 4 * TIMING.retry_period, gaps  # sampled every 10 ms
    assert max(gaps) <= HOLD_OFF_GROWTH_CAP * ld + 4 * TIMING.retry_period


def test_a_lasting_api_fault_logs_a_handful_of_lines_not_one_per_write(caplog: pytest.LogCaptureFixture) -> None:
    """A lone owner whose node-lease renewals fail for a minute (500s) tries
    every retry period, and logs the failure first, then at powers of two."""
    lines: dict[str, int] = {}

    async def main() -> None:
        store = FakeLeaseStore()
        plane = RecordingDataPlane("gw-a")
        daemon = node("gw-a", ("gw-a",), store, plane)
        task = asyncio.create_task(daemon.run(install_signals=False))
        await until(lambda: IP in plane.snat, 5.0)
        caplog.clear()
        store.fail()
        await asyncio.sleep(60.0)
        store.fail(False)
        await until(lambda: IP in plane.snat, 10.0)
        failures = [r for r in caplog.records if "node lease renew failed" in r.getMessage()]
        lines["warnings"] = sum(r.levelno >= logging.WARNING for r in failures)
        lines["tries"] = len(failures)
        lines["recovered"] = sum("node lease renewed after" in r.getMessage() for r in caplog.records)
        daemon.supervisor.request_stop("test")
        await task

    with caplog.at_level(logging.DEBUG, logger="egressd.runtime.liveness"):
        run_virtual(main)
    assert lines["tries"] >= 100, lines
    assert lines["warnings"] <= math.log2(lines["tries"]) + 2, lines
    assert lines["recovered"] == 1, lines
