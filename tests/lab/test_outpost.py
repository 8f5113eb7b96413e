"""The outpost server on loopback: allowed and refused sources, the log, the UDP echo."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from egressd.lab.outpost import (
    FLUSH_INTERVAL,
    Outpost,
    decode_echo,
    decode_probe,
    encode_probe,
    monotonic,
)
from tests.lab.reference import read_log

ALLOWED = "127.0.0.1"
REFUSED = "127.0.0.2"  # also a loopback address, so the client can use it as its source


@pytest.fixture
async def outpost(tmp_path: Path) -> AsyncIterator[tuple[Outpost, Path]]:
    log_path = tmp_path / "outpost.jsonl"
    with log_path.open("a", encoding="utf-8") as stream:
        async with Outpost([ALLOWED], listen="127.0.0.1:0", udp="127.0.0.1:0", log_stream=stream) as server:
            yield server, log_path


async def _get(server: Outpost, source: str, requests: int = 1) -> list[tuple[int, dict[str, Any]]]:
    """``requests`` GETs on one keep-alive connection from ``source``."""
    assert server.http_address is not None
    reader, writer = await asyncio.open_connection(*server.http_address, local_addr=(source, 0))
    answers = []
    try:
        for i in range(requests):
            connection = "close" if i == requests - 1 else "keep-alive"
            writer.write(f"GET /{i} HTTP/1.1\r\nHost: outpost\r\nConnection: {connection}\r\n\r\n".encode())
            await writer.drain()
            status_line = await reader.readline()
            headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.lower()] = value.strip()
            body = await reader.readexactly(int(headers["content-length"]))
            answers.append((int(status_line.split()[1]), json.loads(body)))
    finally:
        writer.close()
        await writer.wait_closed()
    return answers


async def _records(path: Path, kind: str, count: int, timeout: float = 1.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        records = [r for r in read_log(path) if r.get("kind") == kind]
        if len(records) >= count or time.monotonic() > deadline:
            return records
        await asyncio.sleep(0.01)


async def test_allowed_source_gets_200(outpost: tuple[Outpost, Path]) -> None:
    server, _ = outpost
    assert await _get(server, ALLOWED) == [(200, {"ip": ALLOWED, "allowed": True})]


async def test_other_source_gets_403(outpost: tuple[Outpost, Path]) -> None:
    server, _ = outpost
    assert await _get(server, REFUSED) == [(403, {"ip": REFUSED, "allowed": False})]


async def test_keep_alive_and_log_lines(outpost: tuple[Outpost, Path]) -> None:
    server, log_path = outpost
    before = monotonic()
    answers = await _get(server, ALLOWED, requests=3)
    assert [status for status, _ in answers] == [200, 200, 200]
    await _get(server, REFUSED)
    records = await _records(log_path, "http", 4)
    assert [(r["src"], r["path"], r["status"]) for r in records] == [
        (ALLOWED, "/0", 200),
        (ALLOWED, "/1", 200),
        (ALLOWED, "/2", 200),
        (REFUSED, "/0", 403),
    ]
    assert len({r["port"] for r in records[:3]}) == 1  # one connection served all three
    for r in records:
        assert before <= r["t"] <= monotonic()
        assert abs(r["wall"] - time.time()) < 5
    start = read_log(log_path)[0]
    assert start["kind"] == "start"
    assert start["allowed"] == [ALLOWED]


async def test_bad_request_line_is_400(outpost: tuple[Outpost, Path]) -> None:
    server, _ = outpost
    assert server.http_address is not None
    reader, writer = await asyncio.open_connection(*server.http_address)
    writer.write(b"nonsense\r\n\r\n")
    await writer.drain()
    assert (await reader.readline()).startswith(b"HTTP/1.1 400")
    writer.close()
    await writer.wait_closed()


class _Prober(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.echoes: list[bytes] = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.echoes.append(data)


def test_probe_encoding_round_trip() -> None:
    data = encode_probe("xwing", 7, 123.25)
    probe = decode_probe(data)
    assert probe is not None
    assert (probe.prober, probe.seq, probe.sent) == ("xwing", 7, 123.25)
    assert decode_echo(data + b" 172.18.0.42") == (probe, "172.18.0.42")
    assert decode_probe(b"garbage") is None
    with pytest.raises(ValueError, match="prober id"):
        encode_probe("two words", 1, 0.0)


async def test_udp_echo_and_record(outpost: tuple[Outpost, Path]) -> None:
    server, log_path = outpost
    loop = asyncio.get_running_loop()
    transport, prober = await loop.create_datagram_endpoint(
        _Prober, local_addr=(REFUSED, 0), remote_addr=server.udp_address
    )
    try:
        sent = monotonic()
        transport.sendto(encode_probe("p1", 1, sent))
        transport.sendto(b"not a probe")
        deadline = time.monotonic() + 1
        while len(prober.echoes) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    finally:
        transport.close()
    probe, source = decode_echo(prober.echoes[0])
    assert probe is not None
    assert (probe.prober, probe.seq, source) == ("p1", 1, REFUSED)
    assert prober.echoes[1] == b"not a probe " + REFUSED.encode()
    records = await _records(log_path, "udp", 2)
    assert [(r["src"], r["prober"], r["seq"]) for r in records] == [(REFUSED, "p1", 1), (REFUSED, None, None)]
    assert records[0]["sent"] == pytest.approx(sent, abs=1e-6)
    assert sent <= records[0]["t"] <= records[0]["seen"] <= monotonic()


async def test_a_record_is_timed_when_the_kernel_received_the_datagram_not_when_the_loop_read_it(
    outpost: tuple[Outpost, Path],
) -> None:
    server, log_path = outpost
    assert server.udp_address is not None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((REFUSED, 0))
        sent = monotonic()
        sock.sendto(encode_probe("p1", 1, sent), server.udp_address)
        time.sleep(0.1)  # the outpost's loop (this one) is busy: it reads the datagram 100 ms late
        (record,) = await _records(log_path, "udp", 1)
    assert record["seen"] - sent >= 0.1
    assert record["t"] - sent < 0.05  # loopback: received within the sendto


async def test_udp_keeps_up_with_three_probers_and_flushes_quickly(outpost: tuple[Outpost, Path]) -> None:
    """Three probers, one datagram every 2 ms each, for 0.6 s: everything echoed and recorded,
    and the records are in the file within 100 ms of the last datagram."""
    server, log_path = outpost
    loop = asyncio.get_running_loop()
    endpoints = [
        await loop.create_datagram_endpoint(_Prober, local_addr=(REFUSED, 0), remote_addr=server.udp_address)
        for _ in range(3)
    ]
    count = 300
    try:
        start = time.monotonic()
        for seq in range(count):
            for i, (transport, _) in enumerate(endpoints):
                transport.sendto(encode_probe(f"p{i}", seq, monotonic()))
            await asyncio.sleep(max(0.0, start + (seq + 1) * 0.002 - time.monotonic()))
        last_sent = time.monotonic()
        await asyncio.sleep(0.1)
        on_disk = [r for r in read_log(log_path) if r["kind"] == "udp"]
    finally:
        for transport, _ in endpoints:
            transport.close()
    assert len(on_disk) == 3 * count, f"{len(on_disk)} of {3 * count} recorded 100 ms after the last send"
    assert FLUSH_INTERVAL <= 0.1
    for i, (_, prober) in enumerate(endpoints):
        assert len(prober.echoes) == count
        seqs = [r["seq"] for r in on_disk if r["prober"] == f"p{i}"]
        assert sorted(seqs) == list(range(count))
    assert time.monotonic() - last_sent < 1.0


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_command_line_serves_logs_and_stops_on_sigterm(tmp_path: Path) -> None:
    log_path = tmp_path / "outpost.jsonl"
    http_port, udp_port = _free_port(socket.SOCK_STREAM), _free_port(socket.SOCK_DGRAM)
    argv = [
        sys.executable,
        "-m",
        "egressd.lab.outpost",
        "--allowed",
        f"{REFUSED},10.0.0.1",
        "--listen",
        f"127.0.0.1:{http_port}",
        "--udp",
        f"127.0.0.1:{udp_port}",
        "--log",
        str(log_path),
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not (log_path.exists() and read_log(log_path)):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the outpost did not start"
            time.sleep(0.02)
        with socket.create_connection(("127.0.0.1", http_port), source_address=(REFUSED, 0)) as c:
            c.sendall(b"GET / HTTP/1.0\r\n\r\n")
            answer = b""
            while chunk := c.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200")
        assert answer.endswith(b'{"ip": "127.0.0.2", "allowed": true}\n')
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
    kinds = [r["kind"] for r in read_log(log_path)]
    assert kinds == ["start", "http"]
