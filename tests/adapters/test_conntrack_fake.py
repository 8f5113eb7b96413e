"""The conntrack fake answers like the kernel adapter does (tests/kernel/test_conntrack.py):
an entry whose flow is there is ``exists``, a flow that is not is ``absent``,
and changes of the owner's table reach every event consumer."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress

from egressd.core.conntrack_entries import TCP, Entry, FlowTuple, Status, TcpInfo, TcpState, snat_reply
from egressd.ports import Conntrack, ConntrackEvent
from tests.fakes import FakeConntrack

ORIGINAL = FlowTuple(ipaddress.ip_address("10.98.0.10"), ipaddress.ip_address("10.99.0.100"), 40000, 7000)
ENTRY = Entry(
    TCP,
    ORIGINAL,
    snat_reply(ORIGINAL, ipaddress.ip_address("10.99.0.42"), 40000),
    int(Status.SEEN_REPLY | Status.ASSURED | Status.CONFIRMED | Status.SRC_NAT),
    300,
    0x00E90000,
    TcpInfo(TcpState.ESTABLISHED),
)
OTHER = dataclasses.replace(ENTRY, original=dataclasses.replace(ORIGINAL, sport=40001))


async def test_install_and_delete_refuse_like_the_kernel() -> None:
    ct: Conntrack = FakeConntrack()
    assert await ct.install([ENTRY]) == []
    assert [(f.record, f.reason) for f in await ct.install([OTHER, ENTRY])] == [(ENTRY, "exists")]
    assert {e.key for e in await ct.dump()} == {ENTRY.key, OTHER.key}
    assert await ct.delete([OTHER.key]) == []
    assert [f.reason for f in await ct.delete([OTHER.key])] == ["absent"]


async def test_the_owners_changes_reach_every_consumer() -> None:
    ct = FakeConntrack()
    streams = [ct.events(), ct.events()]
    waiting = [asyncio.ensure_future(anext(s)) for s in streams]
    await asyncio.sleep(0)
    ct.flow_new(ENTRY)
    assert [await w for w in waiting] == [ConntrackEvent("new", ENTRY)] * 2
    ct.flow_gone(ENTRY.key)
    ct.overflow()
    assert [await anext(streams[0]), await anext(streams[0])] == [
        ConntrackEvent("destroy", ENTRY.key),
        ConntrackEvent("overflow"),
    ]
    assert await ct.dump() == []
    for s in streams:
        await s.aclose()  # type: ignore[attr-defined]
