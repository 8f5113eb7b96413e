"""Conntrack entries between gateways: validation refuses what a candidate must
not install, the encoding round-trips and splits batches under the bound, and
any bytes decode to records or ``malformed``, never another exception."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from egressd.core.conntrack_entries import (
    MAX_TIMEOUT,
    PAYLOAD_LIMIT,
    TCP,
    UDP,
    Entry,
    EntryRejected,
    FlowTuple,
    Record,
    Removal,
    Status,
    TcpInfo,
    TcpState,
    check_entry,
    decode_all,
    decode_batch,
    encode_batch,
    encode_record,
    snat_reply,
    sort_out,
)
from egressd.core.model import IPAddress

BOUNDED = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

POD = ipaddress.ip_address("10.98.0.10")
SERVER = ipaddress.ip_address("10.99.0.100")
EGRESS = ipaddress.ip_address("10.99.0.42")
OTHER = ipaddress.ip_address("10.99.0.43")
NAT_STATUS = Status.SEEN_REPLY | Status.ASSURED | Status.CONFIRMED | Status.SRC_NAT | Status.SRC_NAT_DONE

ORIGINAL = FlowTuple(POD, SERVER, 40000, 7000)
ENTRY = Entry(
    proto=TCP,
    original=ORIGINAL,
    reply=snat_reply(ORIGINAL, EGRESS, 40000),
    status=int(NAT_STATUS),
    timeout=431999,
    mark=0x00E90000,
    tcp=TcpInfo(TcpState.ESTABLISHED, 7, 10, 0x23, 0x23),
)


def owns_egress(ip: IPAddress) -> bool:
    return ip == EGRESS


def reason(entry: Entry) -> str:
    with pytest.raises(EntryRejected) as info:
        check_entry(entry, owns_egress)
    return info.value.reason


# --- validation -------------------------------------------------------------------------------


def test_an_entry_of_an_owned_egress_ip_is_taken() -> None:
    assert check_entry(ENTRY, owns_egress) is ENTRY


def test_an_entry_for_an_ip_the_sender_does_not_own_is_refused() -> None:
    foreign = dataclasses.replace(ENTRY, reply=snat_reply(ORIGINAL, OTHER, 40000))
    assert reason(foreign) == "not-owned"


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"proto": 1}, "protocol"),
        ({"reply": FlowTuple(OTHER, EGRESS, 7000, 40000)}, "not a source-NAT"),
        ({"reply": FlowTuple(SERVER, EGRESS, 7001, 40000)}, "not a source-NAT"),
        ({"reply": FlowTuple(SERVER, EGRESS, 7000, 0)}, "port"),
        ({"original": FlowTuple(POD, SERVER, 70000, 7000)}, "port"),
        ({"original": FlowTuple(ipaddress.ip_address("fd00::1"), SERVER, 1, 7000)}, "families"),
        ({"status": int(Status.SEEN_REPLY | Status.CONFIRMED)}, "SRC_NAT"),
        ({"status": int(NAT_STATUS | Status.DST_NAT)}, "may not be replicated"),
        ({"status": int(NAT_STATUS | Status.DYING)}, "may not be replicated"),
        ({"status": 1 << 40}, "32 bits"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": MAX_TIMEOUT + 1}, "timeout"),
        ({"mark": -1}, "mark"),
        ({"tcp": None}, "needs its TCP state"),
        ({"tcp": TcpInfo(TcpState.ESTABLISHED, 15, 0)}, "window scale"),
        ({"tcp": TcpInfo(TcpState.ESTABLISHED, 0, 0, 256)}, "one byte"),
        ({"proto": UDP}, "has no TCP state"),
    ],
)
def test_a_malformed_entry_is_refused_naming_the_field(change: dict[str, object], why: str) -> None:
    bad = dataclasses.replace(ENTRY, **change)  # type: ignore[arg-type]
    with pytest.raises(EntryRejected) as info:
        check_entry(bad, lambda _ip: True)
    assert info.value.reason == "malformed"
    assert why in str(info.value)


def test_sort_out_keeps_the_good_and_names_the_refused() -> None:
    foreign = dataclasses.replace(ENTRY, reply=snat_reply(ORIGINAL, OTHER, 40000))
    gone = Removal(TCP, ORIGINAL)
    taken, refused = sort_out([ENTRY, foreign, gone], owns_egress)
    assert taken == [ENTRY, gone]
    assert [(r, e.reason) for r, e in refused] == [(foreign, "not-owned")]


# --- encoding ---------------------------------------------------------------------------------


def test_an_ipv4_tcp_entry_takes_35_bytes_and_33_fit_a_datagram() -> None:
    assert len(encode_record(ENTRY)) == 35
    many = [dataclasses.replace(ENTRY, original=dataclasses.replace(ORIGINAL, sport=p)) for p in range(1000, 1100)]
    payloads = encode_batch(many)
    assert [len(decode_batch(p)) for p in payloads] == [33, 33, 33, 1]
    assert all(len(p) <= PAYLOAD_LIMIT for p in payloads)
    assert list(decode_all(payloads)) == many


def test_an_entry_that_is_not_source_nat_cannot_be_encoded() -> None:
    with pytest.raises(ValueError, match="not a source-NAT"):
        encode_record(dataclasses.replace(ENTRY, reply=FlowTuple(OTHER, EGRESS, 7000, 40000)))


def test_nothing_to_send_gives_no_payload() -> None:
    assert encode_batch([]) == []


def test_a_limit_too_small_for_two_records_is_refused() -> None:
    with pytest.raises(ValueError, match="too small"):
        encode_batch([ENTRY], limit=100)


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"", "ends at byte 0"),
        (b"\x02\x01", "version 2"),
        (b"\x01\x00", "no records"),
        (encode_batch([ENTRY])[0] + b"\x00", "1 bytes after"),
        (encode_batch([ENTRY])[0][:-1], "ends at byte"),
        (b"\x01\x01\x80" + bytes(12), "unknown bits"),
    ],
)
def test_a_bad_payload_is_malformed(payload: bytes, why: str) -> None:
    with pytest.raises(EntryRejected) as info:
        decode_batch(payload)
    assert info.value.reason == "malformed"
    assert why in str(info.value)


# --- properties -------------------------------------------------------------------------------

ports = st.integers(1, 0xFFFF)
v4: st.SearchStrategy[IPAddress] = st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1))
v6: st.SearchStrategy[IPAddress] = st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1))
tcp_infos = st.builds(
    TcpInfo,
    st.sampled_from(list(TcpState)),
    st.integers(0, 14),
    st.integers(0, 14),
    st.integers(0, 255),
    st.integers(0, 255),
)
statuses = st.integers(0, 0xFFFFFFFF).map(
    lambda s: (s & (Status.SEEN_REPLY | Status.ASSURED | Status.CONFIRMED | Status.SRC_NAT_DONE)) | Status.SRC_NAT
)


@st.composite
def records(draw: st.DrawFn) -> Record:
    addrs = draw(st.sampled_from([v4, v6]))
    original = FlowTuple(draw(addrs), draw(addrs), draw(ports), draw(ports))
    proto = draw(st.sampled_from([TCP, UDP]))
    if draw(st.booleans()):
        return Removal(proto, original)
    return Entry(
        proto=proto,
        original=original,
        reply=snat_reply(original, draw(addrs), draw(ports)),
        status=int(draw(statuses)),
        timeout=draw(st.integers(1, MAX_TIMEOUT)),
        mark=draw(st.integers(0, 0xFFFFFFFF)),
        tcp=draw(tcp_infos) if proto == TCP else None,
    )


@BOUNDED
@given(st.lists(records(), max_size=120), st.integers(PAYLOAD_LIMIT // 4, PAYLOAD_LIMIT))
def test_any_batch_survives_the_round_trip_within_the_bound(batch: list[Record], limit: int) -> None:
    payloads = encode_batch(batch, limit)
    assert all(len(p) <= limit for p in payloads)
    assert list(decode_all(payloads)) == batch


@BOUNDED
@given(st.binary(max_size=PAYLOAD_LIMIT))
def test_any_bytes_decode_to_records_or_malformed(payload: bytes) -> None:
    try:
        decoded = decode_batch(payload)
    except EntryRejected as exc:
        assert exc.reason == "malformed"
    else:
        assert encode_batch(decoded, max(PAYLOAD_LIMIT, len(payload))) == [payload]


@BOUNDED
@given(st.lists(records(), min_size=1, max_size=30), st.data())
def test_a_flipped_byte_decodes_to_records_or_malformed(batch: list[Record], data: st.DataObject) -> None:
    payload = bytearray(encode_batch(batch)[0])
    at = data.draw(st.integers(0, len(payload) - 1))
    payload[at] ^= data.draw(st.integers(1, 255))
    try:
        decode_batch(bytes(payload))
    except EntryRejected as exc:
        assert exc.reason == "malformed"
