"""The mesh's UDP socket on loopback: signed messages pass, anything else is counted and dropped."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from egressd.adapters.mesh import QUEUE_SIZE, MeshSocket
from egressd.core.mesh_messages import Heartbeat, Promise, encode

KEY = bytes(range(32))
NONCE = "ab" * 16


@pytest.fixture
async def pair() -> AsyncIterator[tuple[MeshSocket, MeshSocket, tuple[str, int]]]:
    a, b = MeshSocket(KEY), MeshSocket(KEY)
    await a.open("127.0.0.1", 0)
    b_addr = await b.open("127.0.0.1", 0)
    try:
        yield a, b, b_addr
    finally:
        a.close()
        b.close()


async def test_a_heartbeat_and_its_promise_cross_the_socket(
    pair: tuple[MeshSocket, MeshSocket, tuple[str, int]],
) -> None:
    a, b, b_addr = pair
    hb = Heartbeat("gw-a", "i1", 1, NONCE, api_ok=False)
    a.send(hb, b_addr)
    got = await asyncio.wait_for(b.receive(), 5)
    assert got.message == hb
    promise = Promise("gw-b", "i2", "gw-a", NONCE, 2000)
    b.send(promise, got.sender)
    assert (await asyncio.wait_for(a.receive(), 5)).message == promise
    assert (a.sent, b.received) == (1, 1)


async def test_forged_and_garbage_datagrams_are_counted_never_delivered(
    pair: tuple[MeshSocket, MeshSocket, tuple[str, int]],
) -> None:
    _, b, b_addr = pair
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        raw.sendto(encode(Heartbeat("gw-x", "i", 1, NONCE, api_ok=True), b"z" * 32), b_addr)
        raw.sendto(b"hello", b_addr)
        raw.sendto(b"EGM1" + b"\0" * 100, b_addr)
        good = MeshSocket(KEY)
        await good.open("127.0.0.1", 0)
        good.send(Heartbeat("gw-a", "i", 2, NONCE, api_ok=True), b_addr)  # a marker after the junk
        got = await asyncio.wait_for(b.receive(), 5)
        good.close()
    finally:
        raw.close()
    assert got.message.sender == "gw-a"
    assert b.rejected == {"bad-signature": 2, "size": 1}
    assert b.received == 1


async def test_a_flood_keeps_only_the_newest_messages() -> None:
    b = MeshSocket(KEY)
    extra = 50
    for seq in range(QUEUE_SIZE + extra):  # faster than anyone reads
        b.feed(encode(Heartbeat("gw-a", "i", seq, NONCE, api_ok=True), KEY), ("127.0.0.1", 9))
    assert b.rejected["overflow"] == extra
    first = await b.receive()
    assert isinstance(first.message, Heartbeat)
    assert first.message.seq == extra


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        MeshSocket(b"short")
