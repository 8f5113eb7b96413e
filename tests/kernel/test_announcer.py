"""ScapyAnnouncer against a real kernel: a peer's neighbour cache is corrected,
and a second MAC claiming our IP is reported.

The announcer runs in the test process; its sender thread enters the gateway's
namespace (``netns=``), so frames leave the gateway's ``net0``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time

import pytest
from scapy.layers.l2 import ARP, Ether

from egressd.adapters.announcer import ScapyAnnouncer, parse_arp_claim
from egressd.core.garp import GarpSchedule
from egressd.core.model import IPAddress
from tests.kernel.netns import Host, Lab, neigh_mac, ns_exec, sh

pytestmark = pytest.mark.kernel

IP = ipaddress.ip_address("10.99.0.42")
IP6 = ipaddress.ip_address("fd99::42")
OLD_MAC = "02:00:00:00:00:99"


@pytest.fixture
def hosts(lab: Lab) -> tuple[Host, Host]:
    gw = lab.attach("gw", ["10.99.0.2/24", f"{IP}/32"])
    peer = lab.attach("peer", ["10.99.0.50/24"])
    for ns in (gw.ns, peer.ns):
        ns_exec(ns, "sysctl", "-qw", "net.ipv6.conf.net0.accept_dad=0")
    return gw, peer


async def wait_for(predicate: object, timeout: float = 2.0) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(predicate):
            return True
        await asyncio.sleep(0.02)
    return False


@pytest.mark.parametrize("form", ["request", "reply"])
async def test_first_frame_corrects_a_stale_neighbour_entry(hosts: tuple[Host, Host], form: str) -> None:
    gw, peer = hosts
    sh("ip", "-n", peer.ns, "neigh", "replace", str(IP), "lladdr", OLD_MAC, "dev", "net0", "nud", "stale")
    announcer = ScapyAnnouncer(schedule=GarpSchedule(refresh=0, form=form), netns=gw.ns)  # type: ignore[arg-type]
    try:
        await announcer.prepare("net0")  # staged, as a settled daemon has it
        await announcer.start(IP, "net0")
        assert announcer.sent(IP) == 1  # frame 0 went out before start() returned
        assert await wait_for(lambda: neigh_mac(peer.ns, "net0", str(IP)) == gw.mac, timeout=0.5)
        await asyncio.sleep(0.8)
        assert announcer.sent(IP) == 5  # the burst
        await announcer.stop(IP)
        assert not [t for t in asyncio.all_tasks() if t.get_name() == f"garp:{IP}"]
    finally:
        await announcer.close()


async def test_unsolicited_neighbour_advertisement_for_ipv6(hosts: tuple[Host, Host]) -> None:
    gw, peer = hosts
    sh("ip", "-n", gw.ns, "addr", "add", f"{IP6}/128", "dev", "net0", "nodad")
    sh("ip", "-n", peer.ns, "addr", "add", "fd99::50/64", "dev", "net0", "nodad")
    sh("ip", "-n", peer.ns, "neigh", "replace", str(IP6), "lladdr", OLD_MAC, "dev", "net0", "nud", "stale")
    announcer = ScapyAnnouncer(schedule=GarpSchedule(refresh=0), netns=gw.ns)
    try:
        await announcer.start(IP6, "net0")
        assert await wait_for(lambda: neigh_mac(peer.ns, "net0", str(IP6)) == gw.mac, timeout=1.0)
    finally:
        await announcer.close()


async def test_another_mac_claiming_our_ip_is_reported(lab: Lab, hosts: tuple[Host, Host]) -> None:
    gw, _ = hosts
    rogue = lab.attach("rogue", ["10.99.0.66/24"])
    found: list[tuple[IPAddress, str]] = []
    ours = ScapyAnnouncer(
        schedule=GarpSchedule(refresh=0), on_conflict=lambda ip, mac: found.append((ip, mac)), netns=gw.ns
    )
    theirs = ScapyAnnouncer(schedule=GarpSchedule(burst=(0.05,), refresh=0), netns=rogue.ns)
    try:
        await ours.start(IP, "net0")
        await asyncio.sleep(0.1)
        assert found == []  # our own frames are not conflicts
        await theirs.start(IP, "net0")
        assert await wait_for(lambda: bool(found), timeout=1.0)
        assert found[0] == (IP, rogue.mac)
        await asyncio.sleep(0.2)
        assert len(found) == 1  # reported at most once per second per (ip, mac)
        await ours.stop(IP)
        await theirs.start(IP, "net0")
        await asyncio.sleep(0.2)
        assert len(found) == 1  # not watching once we stopped owning
    finally:
        await ours.close()
        await theirs.close()


def test_parse_arp_claim() -> None:
    frame = bytes(Ether(src="02:00:00:00:00:01") / ARP(op=2, hwsrc="02:00:00:00:00:01", psrc="10.99.0.42"))
    assert parse_arp_claim(frame) == (IP, "02:00:00:00:00:01")
    probe = bytes(Ether() / ARP(op=1, hwsrc="02:00:00:00:00:01", psrc="0.0.0.0", pdst="10.99.0.42"))
    assert parse_arp_claim(probe) is None
    assert parse_arp_claim(b"\x00" * 20) is None
