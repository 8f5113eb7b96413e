"""A handoff request naming a node that is not a candidate of the IP is
ignored by the owner: it keeps serving (on the fake clock)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import pytest

from tests.fakes import FakeLeaseStore
from tests.runtime.support import virtual_daemons
from tests.runtime.test_wake import GROUP, IP, NAME
from tests.virtual_time import run_virtual, until


def test_a_handoff_to_a_node_that_is_not_a_candidate_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        store = FakeLeaseStore()
        planes, daemons = virtual_daemons(store, GROUP)
        tasks = [asyncio.create_task(d.run(install_signals=False)) for d in daemons]
        await until(lambda: any(IP in p.snat for p in planes.values()), 2.0)
        owner = next(name for name, p in planes.items() if IP in p.snat)
        store.put(replace(store.leases[NAME], preferred_holder="gw-z"))  # `egressd handoff --to gw-z`, say
        served = []
        for _ in range(200):  # 2 s, sampled every 10 ms
            await asyncio.sleep(0.01)
            served.append(IP in planes[owner].snat)
        assert all(served), "the owner stopped serving"
        assert store.leases[NAME].holder == owner
        assert "release" not in [op["op"] for op in planes[owner].ops]
        for d in daemons:
            d.supervisor.request_stop("test")
        await asyncio.gather(*tasks)

    with caplog.at_level(logging.WARNING):
        run_virtual(main)
    assert "decision hold (handoff-target-not-candidate) preferredHolder=gw-z is not a candidate" in caplog.text
