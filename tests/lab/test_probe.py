"""The standalone prober against the outpost on loopback, and its analysis."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from egressd.lab.outpost import Outpost
from egressd.lab.probe import analyse, send


def test_analysis_finds_the_gap_around_the_fault_and_the_losses() -> None:
    allowed = ["172.18.0.42"]
    lines: list[dict[str, Any]] = [{"clock": 0.0}]
    lines += [{"seq": i, "sent": i * 0.01, "echo": i * 0.01 + 0.001, "source": "172.18.0.42"} for i in range(100)]
    lines += [{"seq": 100 + i, "sent": 1.0 + i * 0.01, "echo": None, "source": None} for i in range(50)]
    lines += [
        {"seq": 150 + i, "sent": 1.5 + i * 0.01, "echo": 1.5 + i * 0.01 + 0.001, "source": "10.244.1.2"}
        for i in range(10)
    ]
    lines += [
        {"seq": 160 + i, "sent": 1.6 + i * 0.01, "echo": 1.6 + i * 0.01 + 0.001, "source": "172.18.0.42"}
        for i in range(10)
    ]
    result = analyse(lines, fault_at=1.0, allowed=allowed)
    assert result["lost_probes"] == 50 and result["sent"] == 170 and result["recovered"]
    assert result["gap_ms"] == pytest.approx(610, abs=0.5)  # 0.991 -> 1.601; un-NATed echoes are not good
    assert result["sources"] == {"172.18.0.42": 110, "10.244.1.2": 10}


@pytest.fixture
def outpost_port(tmp_path: object) -> Iterator[int]:
    import asyncio  # noqa: PLC0415
    import socket  # noqa: PLC0415

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()

    async def serve() -> None:
        async with Outpost(["127.0.0.1"], listen=None, udp=f"127.0.0.1:{port}", log_stream=io.StringIO()):
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True)
    thread.start()
    assert ready.wait(5)
    try:
        yield port
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(5)
        loop.close()


def test_send_records_every_echo_with_the_source_seen(outpost_port: int) -> None:
    out = io.StringIO()
    assert send(("127.0.0.1", outpost_port), interval=0.005, seconds=0.3, prober="t", out=out) == 0
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert "clock" in records[0]
    probes = records[1:]
    assert len(probes) >= 30
    assert all(r["echo"] is not None and r["source"] == "127.0.0.1" for r in probes)
