"""The nfnetlink batch of the nftables fence refresh, decoded field by field."""

from __future__ import annotations

import ipaddress
import struct
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egressd.adapters.nftables import (
    _LibNftables,
    encode_fence_refresh,
    encode_fence_remove,
    encode_get_generation,
    read_errors,
    read_generation,
)

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


def test_a_removal_adds_with_a_one_second_timeout_then_deletes_each_set() -> None:
    ips = [ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("fd00::1")]
    batch, acks = encode_fence_remove(ips, seq=1)
    found = messages(batch)
    assert acks == 6 and [m[0] for m in found] == [0x10] + [0x0A0C, 0x0A0E] * 3 + [0x11]
    assert [m[1] for m in found[1:-1]] == [0x405, 0x05] * 3  # the add creates, the delete only acknowledges
    sets = [elements(m[5])[:2] for m in found[1:-1:2]]
    assert sets == [("egressd_fence", "owned4"), ("egressd_arp", "owned"), ("egressd_fence", "owned6")]
    for added, deleted in zip(found[1:-1:2], found[2:-1:2], strict=True):
        (elem,) = elements(added[5])[2]
        assert struct.unpack(">Q", elem[4]) == (1000,) and 5 not in elem
        (bare,) = elements(deleted[5])[2]
        assert set(bare) == {1 | 0x8000} and bare[1 | 0x8000] == elem[1 | 0x8000]


def test_keys_kept_between_refreshes_give_the_same_batch() -> None:
    ips = [ipaddress.ip_address("10.0.0.1") + i for i in range(300)]
    keys: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, bytes] = {}
    first = encode_fence_refresh(ips, 1500, update=True, seq=1, keys=keys)
    assert len(keys) == 300
    assert encode_fence_refresh(ips, 1500, update=True, seq=1, keys=keys) == first
    assert encode_fence_refresh(ips, 1500, update=True, seq=1) == first


def newgen(seq: int, attributes: bytes, kind: int = 0x0A0F) -> bytes:
    body = struct.pack("=BBH", 0, 0, 0) + attributes
    return HEADER.pack(HEADER.size + len(body), kind, 0, seq, 0) + body


def test_the_generation_request_is_a_getgen_of_nftables() -> None:
    ((kind, flags, seq, family, res_id, payload),) = messages(encode_get_generation(9))
    assert (kind, flags, seq, family, res_id, payload) == (0x0A10, 0x01, 9, 0, 0, b"")


def test_the_generation_is_read_from_the_answer_of_its_own_sequence_number() -> None:
    gen_id = struct.pack("=HH", 8, 1) + struct.pack(">I", 0xA1B2C3D4)
    proc_pid = struct.pack("=HH", 8, 2) + struct.pack(">I", 77)
    stale = newgen(4, struct.pack("=HH", 8, 1) + struct.pack(">I", 5))
    assert read_generation(stale + newgen(5, proc_pid + gen_id), 5) == (True, 0xA1B2C3D4)
    assert read_generation(stale, 5) == (False, None)  # not answered yet: read on
    assert read_generation(newgen(5, proc_pid), 5) == (True, None)  # answered without one
    error = HEADER.pack(HEADER.size + 4, 2, 0, 5, 0) + struct.pack("=i", -1)
    assert read_generation(error, 5) == (True, None)


@given(st.binary(max_size=400), st.integers(0, 2**32 - 1))
def test_reading_a_generation_never_fails_on_any_bytes(data: bytes, seq: int) -> None:
    answered, generation = read_generation(data, seq)
    assert isinstance(answered, bool)
    assert generation is None or (answered and 0 <= generation < 2**32)


@given(st.integers(1, 2**31 - 1), st.integers(0, 27))
def test_an_answer_cut_short_is_not_read_as_one(seq: int, cut: int) -> None:
    answer = newgen(seq, struct.pack("=HH", 8, 1) + struct.pack(">I", 42))
    assert read_generation(answer, seq) == (True, 42)
    assert read_generation(answer[:cut], seq) == (False, None)


@pytest.mark.parametrize(
    ("clean", "before", "after", "committed", "carried"),
    [
        (7, 7, 8, True, 8),  # our commit alone
        (7, 7, 7, False, 7),  # refused: nothing committed
        (7, 7, 9, True, None),  # someone else's commit besides ours
        (7, 7, 8, False, None),  # someone else's, ours refused
        (7, 8, 9, True, None),  # moved before ours
        (None, 7, 8, True, None),  # never listed clean
        (7, None, 8, True, None),  # unreadable
        (7, 7, None, True, None),
        (0xFFFFFFFF, 0xFFFFFFFF, 0, True, 0),  # the 32-bit counter wraps
    ],
)
def test_a_transaction_carries_the_clean_generation_over_its_own_commit_only(
    clean: int | None, before: int | None, after: int | None, committed: bool, carried: int | None
) -> None:
    lib = SimpleNamespace(clean=clean)
    _LibNftables._carry(lib, before, after, committed=committed)  # type: ignore[arg-type]
    assert lib.clean == carried
