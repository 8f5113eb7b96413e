"""KernelConntrack against a real kernel: the SNAT rule's mark picks egressd's
flows; a dump shows their NAT mapping, status, TCP state and timeout; events
come filtered by mark; entries installed in another namespace translate like
the owner's and each refused one is named."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import sys
from collections.abc import AsyncIterator, Iterator

import pytest

from egressd.adapters.conntrack import KernelConntrack
from egressd.core.conntrack_entries import TCP, UDP, Entry, FlowTuple, Status, TcpInfo, TcpState, snat_reply
from egressd.lab.netns import run_cmd
from egressd.ports import ConntrackEvent
from tests.kernel.two_gateways import EGRESS, MARK, MASK, POD, PORT, SERVER, TwoGateways

pytestmark = pytest.mark.kernel

UNMARKED_UDP = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(b"not egress", ("10.99.0.100", 9999))
"""

UNMARKED_SNAT = f"""
table inet egct_other {{
  chain postrouting {{
    type nat hook postrouting priority srcnat + 1; policy accept;
    udp dport 9999 snat ip to {EGRESS}
  }}
}}
"""
"""Source NAT of the gateway's own UDP flow by someone else's rule: SNATed like
egressd's flows, but without egressd's mark."""


@pytest.fixture
def gws() -> Iterator[TwoGateways]:
    gws = TwoGateways()
    try:
        yield gws.build()
    finally:
        gws.close()


@contextlib.asynccontextmanager
async def table(ns: str, mark: int = MARK) -> AsyncIterator[KernelConntrack]:
    ct = KernelConntrack(mark=mark, mask=MASK, netns=ns)
    try:
        yield ct
    finally:
        await ct.close()


async def owner_entry(gws: TwoGateways) -> Entry:
    async with table(gws.gwa) as ct:
        for _ in range(50):
            found = await ct.dump()
            if found:
                assert len(found) == 1, found
                return found[0]
            await asyncio.sleep(0.02)
    raise AssertionError(f"no marked entry on gwa:\n{gws.conntrack_list(gws.gwa)}")


async def test_a_dump_by_mark_shows_the_nat_mapping_status_tcp_state_and_timeout(gws: TwoGateways) -> None:
    gws.nft(gws.gwa, UNMARKED_SNAT)
    stream = gws.stream(duration=1.0)
    gws.exec(gws.gwa, sys.executable, "-c", UNMARKED_UDP)  # SNATed, without egressd's mark
    entry = await owner_entry(gws)
    assert entry.proto == TCP
    assert (str(entry.original.src), str(entry.original.dst)) == (POD, SERVER)
    assert (entry.original.sport, entry.original.dport) == (stream.source_port, PORT)
    assert (str(entry.reply.src), str(entry.reply.dst), entry.reply.sport) == (SERVER, EGRESS, PORT)
    assert entry.mapped_port == stream.source_port  # the source port is kept
    assert entry.status & (Status.SRC_NAT | Status.SEEN_REPLY | Status.ASSURED | Status.CONFIRMED) == (
        Status.SRC_NAT | Status.SEEN_REPLY | Status.ASSURED | Status.CONFIRMED
    )
    assert entry.tcp is not None
    assert entry.tcp.state == TcpState.ESTABLISHED
    assert entry.tcp.wscale_original > 0
    assert entry.timeout > 400_000  # the established timeout, 5 days
    assert entry.mark & MASK == MARK
    (udp,) = [line for line in gws.conntrack_list(gws.gwa).splitlines() if "dport=9999" in line]
    assert f"dst={EGRESS}" in udp and "mark=0 " in udp  # the other flow: SNATed, unmarked, not dumped
    async with table(gws.gwa, mark=0x00E80000) as other:
        assert await other.dump() == []
    server, client = stream.results()
    assert server["error"] is None and client["error"] is None


async def test_installed_entries_are_the_owners_and_each_refusal_is_named(gws: TwoGateways) -> None:
    stream = gws.stream(duration=0.5)
    entry = await owner_entry(gws)
    other_flow = dataclasses.replace(entry, original=dataclasses.replace(entry.original, sport=40001))
    other = dataclasses.replace(other_flow, reply=dataclasses.replace(entry.reply, dport=40001))
    async with table(gws.gwb) as ct:
        assert await ct.install([entry]) == []
        failures = await ct.install([other, entry])
        assert [(f.record, f.reason) for f in failures] == [(entry, "exists")]
        installed = {e.key: e for e in await ct.dump()}
        assert set(installed) == {entry.key, other.key}
        copy = installed[entry.key]
        assert (copy.original, copy.reply, copy.mark) == (entry.original, entry.reply, entry.mark)
        assert copy.status & Status.SRC_NAT  # the kernel translates it
        assert copy.tcp is not None and copy.tcp.state == TcpState.ESTABLISHED
        assert (copy.tcp.wscale_original, copy.tcp.wscale_reply) == (
            entry.tcp.wscale_original if entry.tcp else -1,
            entry.tcp.wscale_reply if entry.tcp else -1,
        )
        assert 0 < copy.timeout <= entry.timeout
        assert f"sport={entry.original.sport}" in gws.conntrack_list(gws.gwb)
        assert await ct.delete([other.key]) == []
        assert [f.reason for f in await ct.delete([other.key])] == ["absent"]
        assert [e.key for e in await ct.dump()] == [entry.key]
    stream.results()


async def next_event(events: AsyncIterator[ConntrackEvent], kind: str) -> ConntrackEvent:
    async with asyncio.timeout(5):
        async for event in events:
            if event.kind == kind:
                return event
    raise AssertionError(f"the events ended before a {kind} event")


async def test_events_come_filtered_by_mark(gws: TwoGateways) -> None:
    async with table(gws.gwa) as ct:
        events = ct.events()
        first = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0.3)  # the event socket is open (opening it in a namespace forks)
        gws.nft(gws.gwa, UNMARKED_SNAT)
        gws.exec(gws.gwa, sys.executable, "-c", UNMARKED_UDP)  # SNATed without egressd's mark: no event
        stream = gws.stream(duration=0.3)
        new = await asyncio.wait_for(first, 5)
        assert new.kind == "new"
        assert isinstance(new.record, Entry)
        assert new.record.original.sport == stream.source_port
        assert str(new.record.egress_ip) == EGRESS
        update = await next_event(events, "update")
        assert isinstance(update.record, Entry)
        stream.results()
        assert await ct.delete([new.record.key]) == []
        for _ in range(50):  # nobody reads the socket meanwhile: the destroy event waits in it
            if ct.events_pending():
                break
            await asyncio.sleep(0.01)
        assert ct.events_pending()
        gone = await next_event(events, "destroy")
        assert gone.record == new.record.key
        await events.aclose()  # type: ignore[attr-defined]


def test_a_mark_outside_its_mask_is_refused() -> None:
    with pytest.raises(ValueError, match="outside its mask"):
        KernelConntrack(mark=0x1_0000_0000 | MARK, mask=MASK)
    assert ipaddress.ip_address(EGRESS).version == 4


def synthetic(proto: int, pod: str, server: str, egress: str, port: int) -> Entry:
    original = FlowTuple(ipaddress.ip_address(pod), ipaddress.ip_address(server), port, 443)
    tcp = TcpInfo(TcpState.ESTABLISHED, 7, 7, 0x23, 0x23) if proto == TCP else None
    status = int(Status.SEEN_REPLY | Status.ASSURED | Status.CONFIRMED | Status.SRC_NAT)
    return Entry(proto, original, snat_reply(original, ipaddress.ip_address(egress), port + 1), status, 120, MARK, tcp)


async def test_ipv6_and_udp_entries_install_and_dump_back(gws: TwoGateways) -> None:
    entries = [
        synthetic(UDP, POD, SERVER, EGRESS, 5000),
        synthetic(TCP, "fd00:98::10", "fd00:99::100", "fd00:99::42", 5000),
        synthetic(UDP, "fd00:98::10", "fd00:99::100", "fd00:99::42", 5002),
    ]
    async with table(gws.gwb) as ct:
        assert await ct.install(entries) == []
        back = {e.key: e for e in await ct.dump()}
        assert set(back) == {e.key for e in entries}
        for entry in entries:
            copy = back[entry.key]
            liberal = entry.tcp and dataclasses.replace(entry.tcp, flags_original=0x2B, flags_reply=0x2B)
            assert (copy.reply, copy.mark, copy.tcp) == (entry.reply, entry.mark, liberal)  # BE_LIBERAL added
            assert copy.status & Status.SRC_NAT
        listed = gws.conntrack_list(gws.gwb) + run_cmd(
            ["ip", "netns", "exec", gws.gwb, "conntrack", "-L", "-f", "ipv6"]
        )
        assert "dst=fd00:99::42 sport=443 dport=5001" in listed
        assert "udp" in listed
