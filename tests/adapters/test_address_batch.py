"""The batched address refresh's netlink messages, against pyroute2's own encoding."""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import given
from hypothesis import strategies as st

from egressd.adapters.addresses import (
    ADDRESS_PROTO,
    encode_barrier,
    encode_claim,
    encode_link_by_index,
    encode_link_request,
    read_acks,
    read_address_dump,
    read_link,
    read_link_index,
)
from egressd.core.model import IPAddress
from tests.adapters.ipbatch import pyroute2_sent

HEADER = struct.Struct("=IHHII")


def pyroute2_claim(ip: IPAddress, index: int, lifetime: int, label: str | None) -> bytes:
    """What ``KernelAddresses.claim`` has pyroute2 send, sequence and port id zeroed."""
    kwargs: dict[str, object] = {"index": index, "address": str(ip), "prefixlen": ip.max_prefixlen}
    kwargs |= {"valid_lft": lifetime, "preferred_lft": lifetime, "proto": ADDRESS_PROTO}
    if ip.version == 4:
        if label is not None:
            kwargs["label"] = label
    else:
        kwargs["flags"] = 0x02
    return pyroute2_sent(lambda batch: batch.addr("replace", **kwargs))


def test_a_refresh_message_is_what_claim_sends() -> None:
    for ip, label in [
        (ipaddress.ip_address("10.200.0.1"), "net0:egd"),
        (ipaddress.ip_address("172.18.0.42"), None),
        (ipaddress.ip_address("fd00::42"), None),
    ]:
        for lifetime in (1, 7, 2**32 - 2):
            ours = encode_claim(0, 3, ip, lifetime=lifetime, proto=ADDRESS_PROTO, label=label)
            assert ours == pyroute2_claim(ip, 3, lifetime, label), (ip, lifetime)


def test_a_refresh_message_without_acknowledgement_differs_only_in_that_flag() -> None:
    ip = ipaddress.ip_address("10.200.0.1")
    asked = encode_claim(7, 3, ip, lifetime=1, proto=ADDRESS_PROTO, label="net0:egd")
    quiet = encode_claim(7, 3, ip, lifetime=1, proto=ADDRESS_PROTO, label="net0:egd", ack=False)
    assert HEADER.unpack_from(asked)[2] == 0x505 and HEADER.unpack_from(quiet)[2] == 0x501  # NLM_F_ACK is 0x4
    assert quiet[:6] == asked[:6] and quiet[8:] == asked[8:]


def test_the_barrier_is_a_noop_that_asks_for_an_acknowledgement() -> None:
    assert encode_barrier(9) == HEADER.pack(16, 1, 0x05, 9, 0)


def test_a_link_request_names_the_interface() -> None:
    data = encode_link_request(4, "net0")
    length, kind, flags, seq, _port = HEADER.unpack_from(data)
    assert (length, kind, flags, seq) == (len(data), 18, 0x01, 4)
    assert data[32:] == struct.pack("=HH", 9, 3) + b"net0\0" + b"\0" * 3  # IFLA_IFNAME, padded


def link(seq: int, index: int) -> bytes:
    body = struct.pack("=BxHiII", 0, 1, index, 0, 0) + struct.pack("=HH", 8, 3) + b"net0"
    return HEADER.pack(16 + len(body), 16, 0, seq, 0) + body


def test_the_link_index_is_read_from_the_answer_to_its_request() -> None:
    assert read_link_index(ack(3, 19) + link(4, 12) + link(5, 99), 5) == 99
    assert read_link_index(link(4, 12), 5) is None


def test_a_link_request_by_index_names_no_interface() -> None:
    data = encode_link_by_index(6, 12)
    length, kind, flags, seq, _port = HEADER.unpack_from(data)
    assert (length, kind, flags, seq) == (len(data), 18, 0x01, 6) and len(data) == 32
    assert struct.unpack_from("=BxHiII", data, 16) == (0, 0, 12, 0, 0)


def test_the_link_name_is_read_from_the_answer_to_its_request() -> None:
    stats = struct.pack("=HH", 12, 7) + b"\1" * 8  # an attribute before the name
    body = struct.pack("=BxHiII", 0, 1, 12, 0, 0) + stats + struct.pack("=HH", 9, 3) + b"eth1\0" + b"\0" * 3
    answer = HEADER.pack(16 + len(body), 16, 0, 5, 0) + body
    assert read_link(ack(3, 19) + link(4, 9) + answer, 5) == (12, "eth1")
    assert read_link(link(5, 12), 5) == (12, "net0")  # unterminated, as the kernel never sends it
    nameless = struct.pack("=BxHiII", 0, 1, 13, 0, 0)
    assert read_link(HEADER.pack(16 + len(nameless), 16, 0, 5, 0) + nameless, 5) == (13, None)
    assert read_link(link(4, 12), 5) is None


@given(st.binary(max_size=400), st.integers(0, 2**32 - 1))
def test_reading_a_link_never_fails_on_any_bytes(data: bytes, seq: int) -> None:
    found = read_link(data, seq)
    assert found is None or (isinstance(found[0], int) and (found[1] is None or isinstance(found[1], str)))


@given(st.binary(max_size=400), st.integers(0, 2**32 - 1))
def test_reading_a_link_index_never_fails_on_any_bytes(data: bytes, seq: int) -> None:
    index = read_link_index(data, seq)
    assert index is None or isinstance(index, int)


def ack(seq: int, errno: int) -> bytes:
    original = HEADER.pack(16, 20, 0x505, seq, 0)
    return HEADER.pack(36, 2, 0x100, seq, 4242) + struct.pack("=i", -errno) + original


def test_acknowledgements_are_read_by_sequence_with_their_errno() -> None:
    data = ack(1, 0) + ack(2, 19) + HEADER.pack(20, 3, 0, 9, 0) + b"\0" * 4 + ack(3, 0)
    assert read_acks(data) == [(1, 0), (2, 19), (3, 0)]


@given(st.binary(max_size=400))
def test_reading_acknowledgements_never_fails_on_any_bytes(data: bytes) -> None:
    for seq, errno in read_acks(data):
        assert isinstance(seq, int) and isinstance(errno, int)


def _newaddr(seq: int, ip: IPAddress, index: int, proto: int | None) -> bytes:
    """An RTM_NEWADDR as the kernel sends it in a dump (IFA_PROTO when ``proto``)."""
    family = 2 if ip.version == 4 else 10
    body = struct.pack("=BBBBI", family, ip.max_prefixlen, 0, 0, index)
    body += struct.pack("=HH", 4 + len(ip.packed), 1) + ip.packed + b"\0" * (-len(ip.packed) % 4)
    if proto is not None:
        body += struct.pack("=HHB", 5, 11, proto) + b"\0" * 3
    return struct.pack("=IHHII", 16 + len(body), 20, 2, seq, 0) + body


def _done(seq: int) -> bytes:
    return struct.pack("=IHHIIi", 20, 3, 2, seq, 0, 0)


def test_a_dump_yields_the_marked_addresses_of_its_own_sequence_until_done() -> None:
    ours, other = ipaddress.ip_address("172.18.0.42"), ipaddress.ip_address("2001:db8::42")
    data = (
        _newaddr(7, ours, 3, 0xE9)
        + _newaddr(7, ipaddress.ip_address("172.18.0.5"), 3, None)  # the node's own: no mark
        + _newaddr(7, ipaddress.ip_address("172.18.0.6"), 3, 4)  # marked by another tool
        + _newaddr(6, ipaddress.ip_address("172.18.0.7"), 3, 0xE9)  # an older request's
        + _newaddr(7, other, 4, 0xE9)
    )
    assert read_address_dump(data, 7, 0xE9) == ([(ours, 3), (other, 4)], False, 0)
    assert read_address_dump(_done(6) + _done(7), 7, 0xE9) == ([], True, 0)
    error = struct.pack("=IHHIIi", 20, 2, 0, 7, 0, -1)
    assert read_address_dump(error, 7, 0xE9) == ([], True, 1)


@given(st.binary(max_size=600), st.integers(0, 2**32 - 1))
def test_any_bytes_read_as_a_dump_end_or_yield_addresses_never_raise(data: bytes, seq: int) -> None:
    found, done, error = read_address_dump(data, seq, 0xE9)
    assert all(isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address) for ip, _ in found)
    assert isinstance(done, bool) and isinstance(error, int)
