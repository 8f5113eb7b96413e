"""The nfnetlink batch of the nftables fence refresh, decoded field by field."""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import given
from hypothesis import strategies as st

from egressd.adapters.nftables import encode_fence_refresh, read_errors

HEADER = struct.Struct("=IHHII")


def attrs(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    offset = 0
    while offset < len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        out.append((kind, data[offset + 4 : offset + length]))
        offset += (length + 3) & ~3
    return out


def messages(batch: bytes) -> list[tuple[int, int, int, int, int, bytes]]:
    """(type, flags, seq, family, res_id, attributes) of each message."""
    out = []
    offset = 0
    while offset < len(batch):
        length, kind, flags, seq, _port = HEADER.unpack_from(batch, offset)
        family, _version, res_id = struct.unpack_from("=BBH", batch, offset + 16)
        out.append((kind, flags, seq, family, res_id, batch[offset + 20 : offset + length]))
        offset += length
    return out


def elements(payload: bytes) -> tuple[str, str, list[dict[int, bytes]]]:
    found = dict(attrs(payload))
    table, name = found[1].rstrip(b"\0").decode(), found[2].rstrip(b"\0").decode()
    listed = [dict(attrs(elem)) for kind, elem in attrs(found[3 | 0x8000]) if kind == 1 | 0x8000]
    return table, name, listed


def test_an_update_refresh_is_one_add_per_set_with_timeout_and_expiry_in_milliseconds() -> None:
    ips = [ipaddress.ip_address("172.18.0.42"), ipaddress.ip_address("fd00::42")]
    batch, acks = encode_fence_refresh(ips, 1500, update=True, seq=7)
    found = messages(batch)
    assert acks == 3
    assert [(m[0], m[1], m[2]) for m in found] == [
        (0x10, 0x01, 7),  # batch begin
        (0x0A0C, 0x405, 8),  # NEWSETELEM: request, create, ack
        (0x0A0C, 0x405, 9),
        (0x0A0C, 0x405, 10),
        (0x11, 0x01, 11),  # batch end
    ]
    assert found[0][4] == struct.unpack("=H", struct.pack(">H", 10))[0]  # NFNL_SUBSYS_NFTABLES, big-endian
    sets = [(m[3], *elements(m[5])[:2]) for m in found[1:-1]]
    assert sets == [(1, "egressd_fence", "owned4"), (3, "egressd_arp", "owned"), (1, "egressd_fence", "owned6")]
    (elem,) = elements(found[3][5])[2]
    assert dict(attrs(elem[1 | 0x8000]))[1] == ipaddress.ip_address("fd00::42").packed
    assert struct.unpack(">Q", elem[4]) == (1500,) and struct.unpack(">Q", elem[5]) == (1500,)


def test_a_portable_refresh_adds_deletes_and_adds_each_set_in_one_batch() -> None:
    ips = [ipaddress.ip_address("10.0.0.2"), ipaddress.ip_address("10.0.0.1")]
    batch, acks = encode_fence_refresh(ips, 800, update=False, seq=1)
    found = messages(batch)
    assert acks == 6 and [m[0] for m in found] == [0x10] + [0x0A0C, 0x0A0E, 0x0A0C] * 2 + [0x11]
    table, name, listed = elements(found[2][5])  # the delete: keys only
    assert (table, name) == ("egressd_fence", "owned4")
    assert [dict(attrs(e[1 | 0x8000]))[1] for e in listed] == [bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])]
    assert all(set(e) == {1 | 0x8000} for e in listed)
    assert all(struct.unpack(">Q", e[4]) == (800,) and 5 not in e for e in elements(found[1][5])[2])


def test_a_large_refresh_is_split_so_that_each_element_list_fits_its_16_bit_length() -> None:
    ips = [ipaddress.ip_address("fd00::") + i for i in range(2500)]
    batch, acks = encode_fence_refresh(ips, 800, update=True, seq=1)
    assert acks == 3
    assert sum(len(elements(m[5])[2]) for m in messages(batch)[1:-1]) == 2500


@given(st.binary(max_size=400))
def test_reading_errors_never_fails_on_any_bytes(data: bytes) -> None:
    assert all(isinstance(e, int) for e in read_errors(data))
