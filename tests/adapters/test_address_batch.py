"""The batched address refresh's netlink messages, against pyroute2's own encoding."""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import given
from hypothesis import strategies as st
from pyroute2 import IPBatch

from egressd.adapters.addresses import ADDRESS_PROTO, encode_claim, read_acks
from egressd.core.model import IPAddress

HEADER = struct.Struct("=IHHII")


def pyroute2_claim(ip: IPAddress, index: int, lifetime: int, label: str | None) -> bytes:
    """What ``KernelAddresses.claim`` has pyroute2 send, sequence and port id zeroed."""
    batch = IPBatch()
    kwargs: dict[str, object] = {"index": index, "address": str(ip), "prefixlen": ip.max_prefixlen}
    kwargs |= {"valid_lft": lifetime, "preferred_lft": lifetime, "proto": ADDRESS_PROTO}
    if ip.version == 4:
        if label is not None:
            kwargs["label"] = label
    else:
        kwargs["flags"] = 0x02
    batch.addr("replace", **kwargs)
    data = bytearray(batch.batch)
    batch.close()
    length, kind, flags, _seq, _port = HEADER.unpack_from(data)
    HEADER.pack_into(data, 0, length, kind, flags, 0, 0)
    return bytes(data)


def test_a_refresh_message_is_what_claim_sends() -> None:
    for ip, label in [
        (ipaddress.ip_address("10.200.0.1"), "net0:egd"),
        (ipaddress.ip_address("172.18.0.42"), None),
        (ipaddress.ip_address("fd00::42"), None),
    ]:
        for lifetime in (1, 7, 2**32 - 2):
            ours = encode_claim(0, 3, ip, lifetime=lifetime, proto=ADDRESS_PROTO, label=label)
            assert ours == pyroute2_claim(ip, 3, lifetime, label), (ip, lifetime)


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
