"""The long-lived connection server and keeper on loopback: lines flow and end with ``BYE``, a stall
is measured by the receiving end, a reset is seen by the end that gets it, a changed UDP mapping
is recorded by the server; and the processes print their reports and stop."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import struct
import subprocess
import sys
import time
from typing import Any

import pytest

from egressd.drill import survival
from egressd.lab.longlived import Keeper, Server
from egressd.lab.outpost import monotonic


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "egressd.lab.longlived", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _first_line(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, proc.stderr.read() if proc.stderr else ""
    record: dict[str, Any] = json.loads(line)
    return record


def _report(proc: subprocess.Popen[str]) -> dict[str, Any]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    record: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return record


def test_lines_flow_a_stall_is_measured_and_bye_ends_cleanly() -> None:
    server = _spawn("serve", "--tcp", "127.0.0.1:0", "--udp", "127.0.0.1:0")
    keeper: subprocess.Popen[str] | None = None
    try:
        ready = _first_line(server)
        tcp_port, udp_port = ready["tcp"][1], ready["udp"][1]
        keeper = _spawn(
            "keep", "--server", "127.0.0.1", "--pod", "t", "--server-first", "2", "--client-first", "2",
            "--udp-flows", "1", "--udp-base-port", "0", "--tcp-port", str(tcp_port), "--udp-port", str(udp_port),
            "--ramp", "0.1",
        )  # fmt: skip
        assert _first_line(keeper)["opened"] == 4
        time.sleep(0.4)
        server.send_signal(signal.SIGSTOP)  # the server says nothing, echoes nothing
        stopped = monotonic()
        time.sleep(0.4)
        server.send_signal(signal.SIGCONT)
        time.sleep(0.4)
        kept = _report(keeper)
        served = _report(server)
    finally:
        for proc in (keeper, server):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.communicate()
    conns = {c["id"]: c for c in kept["connections"]}
    assert sorted(conns) == ["t-cf-0", "t-cf-1", "t-sf-0", "t-sf-1"]
    for c in kept["connections"]:
        assert c["end"] is None
        assert c["lines"] > 10
        assert 0.35 <= c["stall"] < 2.0, c  # the 0.4 s the server was stopped
        assert c["stall_end"] > stopped
        assert c["seen"] == c["local"]  # no NAT on loopback: the server saw the pod's own port
    (flow,) = kept["udp"]
    assert 0.35 <= flow["stall"] < 2.0
    assert all(c["end"] == "bye" for c in served["connections"])
    assert served["loop_lag"] >= 0.35  # the stopped process knows it was late
    flows = survival.flows([kept], served, fault=stopped)
    assert not any(f.reset or f.stuck for f in flows)
    assert [f.port_changed for f in flows] == [False] * 5


def _linger_reset(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0: the kernel sends a reset."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def test_a_reset_is_seen_by_the_end_that_gets_it() -> None:
    async with Server("127.0.0.1:0", "127.0.0.1:0") as server:
        assert server.tcp_address is not None and server.udp_address is not None
        keeper = Keeper(
            "127.0.0.1",
            pod="t",
            server_first=1,
            client_first=1,
            tcp_port=server.tcp_address[1],
            udp_port=server.udp_address[1],
            ramp=0.0,
        )
        await keeper.open()
        await asyncio.sleep(0.2)
        fault = monotonic()
        sf = server.conns["t-sf-0"]
        _linger_reset(sf.writer)  # the server resets the server-first one: the pod gets the reset
        cf = next(c for c in keeper.conns if c.kind == "cf")
        assert cf.writer is not None
        _linger_reset(cf.writer)  # the pod resets the client-first one: the server gets it
        await asyncio.sleep(0.2)
        await keeper.close()
        kept, served = keeper.report(), server.report()
    ends = {c["id"]: c["end"] for c in kept["connections"]}
    assert ends["t-sf-0"] == "reset"
    assert {c["id"]: c["end"] for c in served["connections"]}["t-cf-0"] == "reset"
    # (the end that aborted its own socket sees an end of file first: either end counts)
    flows = survival.flows([kept], served, fault=fault)
    assert [f.reset for f in flows] == [True, True]
    assert all(0 <= (f.reset_ms or -1) < 200 for f in flows)


async def test_the_server_records_a_changed_udp_mapping() -> None:
    async with Server("127.0.0.1:0", "127.0.0.1:0") as server:
        assert server.udp_address is not None
        socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
        try:
            for i, s in enumerate(socks):  # one flow id, two source ports: the mapping changed
                s.bind(("127.0.0.1", 0))
                s.setblocking(False)
                s.sendto(b"U t-udp-0 %d\n" % i, server.udp_address)
                await asyncio.sleep(0.05)
            echo = socks[1].recv(100).split()
        finally:
            for s in socks:
                s.close()
        report = server.report()
    flow = report["udp"]["t-udp-0"]
    assert flow["count"] == 2
    assert len(flow["sources"]) == 2
    assert echo[-1].decode() == flow["sources"][1][0]  # the echo says which source the server saw
    kept = {"id": "t-udp-0", "opened": 0.0, "sources": [], "last_rx": 1.0, "stall": 0.0}
    (f,) = survival.flows([{"udp": [kept]}], report, fault=0.5)
    assert f.port_changed is True


def test_a_keeper_stops_by_itself_after_its_lifetime_and_reports() -> None:
    server = _spawn("serve", "--tcp", "127.0.0.1:0", "--udp", "127.0.0.1:0", "--max-seconds", "30")
    try:
        ready = _first_line(server)
        keeper = _spawn(
            "keep", "--server", "127.0.0.1", "--pod", "t", "--server-first", "1", "--tcp-port", str(ready["tcp"][1]),
            "--udp-port", str(ready["udp"][1]), "--ramp", "0", "--max-seconds", "0.5",
        )  # fmt: skip
        out, _ = keeper.communicate(timeout=10)
        assert keeper.returncode == 0
        report = json.loads(out.strip().splitlines()[-1])
        assert report["role"] == "keeper"
        assert report["connections"][0]["end"] is None
    finally:
        server.kill()
        server.communicate()


@pytest.mark.parametrize("argv", [["keep"], ["keep", "--server", "127.0.0.1", "--server-first", "x"]])
def test_bad_arguments_are_refused(argv: list[str]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "egressd.lab.longlived", *argv], capture_output=True, text=True, check=False
    )
    assert out.returncode == 2
