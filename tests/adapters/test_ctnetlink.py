"""ctnetlink messages checked against pyroute2's own decoder and encoder: what
egressd sends is what pyroute2 reads, what pyroute2 (like the kernel) writes
is what egressd reads; garbage from the socket is ``Malformed``."""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST
from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg

from egressd.adapters.conntrack import ctnetlink
from egressd.core.conntrack_entries import (
    TCP,
    UDP,
    Entry,
    FlowTuple,
    Removal,
    Status,
    TcpInfo,
    TcpState,
    snat_reply,
)

BOUNDED = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LIBERAL = 0x08

ORIGINAL = FlowTuple(ipaddress.ip_address("10.98.0.10"), ipaddress.ip_address("10.99.0.100"), 40000, 7000)
STATUS = int(Status.SEEN_REPLY | Status.ASSURED | Status.CONFIRMED | Status.SRC_NAT | Status.SRC_NAT_DONE)
ENTRY = Entry(
    TCP,
    ORIGINAL,
    snat_reply(ORIGINAL, ipaddress.ip_address("10.99.0.42"), 40001),
    STATUS,
    431999,
    0x00E90000,
    TcpInfo(TcpState.ESTABLISHED, 7, 10, 0x23, 0x21),
)


def decoded(data: bytes) -> Any:
    msg = nfct_msg(data)
    msg.decode()
    return msg


def addr(text: str) -> str:
    """An address as egressd prints it (pyroute2 prints some IPv6 addresses otherwise)."""
    return str(ipaddress.ip_address(text))


def tuple_of(nla: Any, v6: bool) -> tuple[str, str, int, int, int]:
    ip, proto = nla.get_attr("CTA_TUPLE_IP"), nla.get_attr("CTA_TUPLE_PROTO")
    fam = "V6" if v6 else "V4"
    return (
        addr(ip.get_attr(f"CTA_IP_{fam}_SRC")),
        addr(ip.get_attr(f"CTA_IP_{fam}_DST")),
        proto.get_attr("CTA_PROTO_NUM"),
        proto.get_attr("CTA_PROTO_SRC_PORT"),
        proto.get_attr("CTA_PROTO_DST_PORT"),
    )


def check_create(entry: Entry, liberal: bool) -> None:
    msg = decoded(ctnetlink.create_request(entry, 77, liberal=liberal))
    v6 = entry.original.src.version == 6
    o = entry.original
    assert msg["header"]["type"] == ctnetlink.MSG_NEW
    assert msg["header"]["flags"] == NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    assert msg["header"]["sequence_number"] == 77
    assert msg["nfgen_family"] == (socket.AF_INET6 if v6 else socket.AF_INET)
    assert tuple_of(msg.get_attr("CTA_TUPLE_ORIG"), v6) == (str(o.src), str(o.dst), entry.proto, o.sport, o.dport)
    # the plain inverse: the kernel derives the translated reply from it and CTA_NAT_SRC
    assert tuple_of(msg.get_attr("CTA_TUPLE_REPLY"), v6) == (str(o.dst), str(o.src), entry.proto, o.dport, o.sport)
    nat = msg.get_attr("CTA_NAT_SRC")
    fam = "V6" if v6 else "V4"
    low, high = addr(nat.get_attr(f"CTA_NAT_{fam}_MINIP")), addr(nat.get_attr(f"CTA_NAT_{fam}_MAXIP"))
    assert low == high == str(entry.egress_ip)
    ports = nat.get_attr("CTA_NAT_PROTO")
    assert ports.get_attr("CTA_PROTONAT_PORT_MIN") == ports.get_attr("CTA_PROTONAT_PORT_MAX") == entry.mapped_port
    status = msg.get_attr("CTA_STATUS")
    assert status & Status.CONFIRMED  # else the kernel answers EBUSY
    assert status & ~(Status.CONFIRMED | Status.SEEN_REPLY | Status.ASSURED) == 0
    assert status & (Status.SEEN_REPLY | Status.ASSURED) == entry.status & (Status.SEEN_REPLY | Status.ASSURED)
    assert (msg.get_attr("CTA_TIMEOUT"), msg.get_attr("CTA_MARK")) == (entry.timeout, entry.mark)
    info = msg.get_attr("CTA_PROTOINFO")
    if entry.tcp is None:
        assert info is None
        return
    tcp, extra = info.get_attr("CTA_PROTOINFO_TCP"), LIBERAL if liberal else 0
    assert tcp.get_attr("CTA_PROTOINFO_TCP_STATE") == entry.tcp.state
    assert tcp.get_attr("CTA_PROTOINFO_TCP_WSCALE_ORIGINAL") == entry.tcp.wscale_original
    assert tcp.get_attr("CTA_PROTOINFO_TCP_WSCALE_REPLY") == entry.tcp.wscale_reply
    assert tcp.get_attr("CTA_PROTOINFO_TCP_FLAGS_ORIGINAL") == (entry.tcp.flags_original | extra, 0xFF)
    assert tcp.get_attr("CTA_PROTOINFO_TCP_FLAGS_REPLY") == (entry.tcp.flags_reply | extra, 0xFF)


@pytest.mark.parametrize("liberal", [True, False])
def test_a_create_request_reads_back_through_pyroute2(liberal: bool) -> None:
    check_create(ENTRY, liberal)
    check_create(dataclasses.replace(ENTRY, proto=UDP, tcp=None), liberal)


ports = st.integers(1, 0xFFFF)
v4 = st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1))
v6 = st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1))


@st.composite
def entries(draw: st.DrawFn) -> Entry:
    addrs: st.SearchStrategy[Any] = draw(st.sampled_from([v4, v6]))
    original = FlowTuple(draw(addrs), draw(addrs), draw(ports), draw(ports))
    proto = draw(st.sampled_from([TCP, UDP]))
    tcp = None
    if proto == TCP:
        tcp = TcpInfo(
            draw(st.sampled_from(list(TcpState))),
            draw(st.integers(0, 14)),
            draw(st.integers(0, 14)),
            draw(st.integers(0, 255)),
            draw(st.integers(0, 255)),
        )
    status = draw(st.integers(0, 0xFFFFFFFF)) | Status.SRC_NAT
    return Entry(
        proto,
        original,
        snat_reply(original, draw(addrs), draw(ports)),
        int(status),
        draw(st.integers(1, 432000)),
        draw(st.integers(0, 0xFFFFFFFF)),
        tcp,
    )


@BOUNDED
@given(entries(), st.booleans())
def test_any_create_request_reads_back_through_pyroute2(entry: Entry, liberal: bool) -> None:
    check_create(entry, liberal)


def kernel_like(entry: Entry, kind: int = ctnetlink.MSG_NEW, flags: int = 0) -> bytes:
    """The message the kernel sends for ``entry`` (a dump answer or an event), built by pyroute2."""
    fam = "V6" if entry.original.src.version == 6 else "V4"

    def tup(t: FlowTuple) -> dict[str, Any]:
        return {
            "attrs": [
                ["CTA_TUPLE_IP", {"attrs": [[f"CTA_IP_{fam}_SRC", str(t.src)], [f"CTA_IP_{fam}_DST", str(t.dst)]]}],
                [
                    "CTA_TUPLE_PROTO",
                    {
                        "attrs": [
                            ["CTA_PROTO_NUM", entry.proto],
                            ["CTA_PROTO_SRC_PORT", t.sport],
                            ["CTA_PROTO_DST_PORT", t.dport],
                        ]
                    },
                ],
            ]
        }

    attrs: list[Any] = [
        ["CTA_TUPLE_ORIG", tup(entry.original)],
        ["CTA_TUPLE_REPLY", tup(entry.reply)],
        ["CTA_STATUS", entry.status],
        ["CTA_MARK", entry.mark],
        ["CTA_USE", 1],
        ["CTA_ID", 1234],
        ["CTA_TIMEOUT", entry.timeout],
    ]
    if entry.tcp is not None:
        t = entry.tcp
        tcp = [
            ["CTA_PROTOINFO_TCP_STATE", int(t.state)],
            ["CTA_PROTOINFO_TCP_WSCALE_ORIGINAL", t.wscale_original],
            ["CTA_PROTOINFO_TCP_WSCALE_REPLY", t.wscale_reply],
            ["CTA_PROTOINFO_TCP_FLAGS_ORIGINAL", (t.flags_original, 0)],
            ["CTA_PROTOINFO_TCP_FLAGS_REPLY", (t.flags_reply, 0)],
        ]
        attrs.append(["CTA_PROTOINFO", {"attrs": [["CTA_PROTOINFO_TCP", {"attrs": tcp}]]}])
    msg = nfct_msg()
    msg["header"]["type"] = kind
    msg["header"]["flags"] = flags
    msg["nfgen_family"] = socket.AF_INET6 if fam == "V6" else socket.AF_INET
    msg["attrs"] = attrs
    msg.encode()
    return bytes(msg.data[: msg["header"]["length"]])


@BOUNDED
@given(entries())
def test_what_the_kernel_writes_parses_to_the_entry(entry: Entry) -> None:
    (message,) = ctnetlink.messages(kernel_like(entry))
    assert ctnetlink.parse(message) == (entry, entry.mark)
    (gone,) = ctnetlink.messages(kernel_like(entry, kind=ctnetlink.MSG_DELETE))
    assert ctnetlink.parse(gone) == (Removal(entry.proto, entry.original), entry.mark)


def test_flows_that_are_not_replicated_parse_to_none() -> None:
    not_nated = dataclasses.replace(ENTRY, status=int(Status.SEEN_REPLY | Status.CONFIRMED))
    (message,) = ctnetlink.messages(kernel_like(not_nated))
    assert ctnetlink.parse(message) == (None, ENTRY.mark)


def test_acknowledgements_are_read_by_sequence_number() -> None:
    def ack(seq: int, errno: int) -> bytes:
        return struct.pack("=IHHIIi", 20 + 16, 2, 0, seq, 0, -errno) + bytes(16)

    assert list(ctnetlink.acks(ack(5, 0) + ack(6, 17))) == [(5, 0), (6, 17)]


@pytest.mark.parametrize(
    "data",
    [
        struct.pack("=IHHII", 8, 0, 0, 0, 0),  # shorter than its own header
        struct.pack("=IHHII", 400, 0, 0, 0, 0),  # longer than the buffer
    ],
)
def test_garbage_from_the_socket_is_malformed(data: bytes) -> None:
    with pytest.raises(ctnetlink.Malformed):
        list(ctnetlink.messages(data))


def test_a_message_missing_its_tuples_is_malformed() -> None:
    body = struct.pack("=BBH", socket.AF_INET, 0, 0)
    message = ctnetlink.NetlinkMessage(ctnetlink.MSG_NEW, 0, 1, body)
    with pytest.raises(ctnetlink.Malformed):
        ctnetlink.parse(message)
