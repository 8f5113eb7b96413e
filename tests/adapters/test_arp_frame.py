"""The gratuitous ARP frame packed by hand is the one scapy builds, byte for byte."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.l2 import ARP, Ether

from egressd.adapters.announcer import arp_announcement

macs = st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b))
ips = st.integers(min_value=0, max_value=2**32 - 1).map(ipaddress.IPv4Address)


def scapy_frame(ip: ipaddress.IPv4Address, mac: str, form: str) -> bytes:
    op = 1 if form == "request" else 2
    arp = ARP(op=op, hwsrc=mac, psrc=str(ip), pdst=str(ip), hwdst="00:00:00:00:00:00" if op == 1 else mac)
    return bytes(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / arp)


@given(ip=ips, mac=macs, form=st.sampled_from(["request", "reply"]))
def test_packed_frame_is_scapys(ip: ipaddress.IPv4Address, mac: str, form: str) -> None:
    assert arp_announcement(ip, mac, form) == scapy_frame(ip, mac, form)


def test_request_names_no_target_and_reply_names_the_sender() -> None:
    ip, mac = ipaddress.IPv4Address("192.0.2.7"), "02:00:00:00:00:01"
    request, reply = arp_announcement(ip, mac, "request"), arp_announcement(ip, mac, "reply")
    assert len(request) == len(reply) == 42
    assert request[20:22] == b"\x00\x01" and request[32:38] == bytes(6)
    assert reply[20:22] == b"\x00\x02" and reply[32:38] == bytes.fromhex("020000000001")


def test_a_malformed_mac_is_refused() -> None:
    with pytest.raises(ValueError, match="not a MAC"):
        arp_announcement(ipaddress.IPv4Address("192.0.2.7"), "02:00:00:00:01", "request")
