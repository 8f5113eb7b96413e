"""Long-lived connections through a fault: a server in the outpost and a keeper per pod.

Standard library only (asyncio), one process per namespace, many connections per process::

    ip netns exec <outpost> python -m egressd.lab.longlived serve --tcp 0.0.0.0:8100 --udp 0.0.0.0:9100
    ip netns exec <pod> python -m egressd.lab.longlived keep --server 172.18.0.7 --pod xwing \\
        --server-first 5 --client-first 5 --udp-flows 2 --udp-base-port 41000

Each prints one JSON line ``{"ready": ...}`` once it serves (the server) or once every
connection is open (the keeper), then runs until SIGTERM or SIGINT, and prints one JSON line
with its report before it exits. A keeper whose parent is gone (the drill died) stops by itself,
and both stop after ``--max-seconds``, so nothing outlives a failed drill for long.

The line protocol (TCP, one connection per flow):

* the keeper opens the connection and sends ``HELLO <id> <kind>``; the server answers
  ``OK <source>:<port>``, the address and port it sees (the SNATed ones);
* ``server-first`` (``sf``): the server sends ``D <seq>`` every :data:`INTERVAL`; the pod only
  reads;
* ``client-first`` (``cf``): the pod sends ``P <seq>`` every :data:`INTERVAL` once the echo of
  the previous line is back; the server echoes each line;
* at the end the keeper sends ``BYE`` and closes: the server records a clean end. A connection
  that ends any other way (reset, end of file, an error) is recorded as reset, with its time.

UDP flows from fixed source ports: the pod sends ``U <id> <seq>`` every :data:`INTERVAL`; the
server echoes the datagram followed by `` <source>:<port>`` and records, per flow, every distinct
source it saw (the mapping) with the time it first saw it.

The receiving side measures the stall: the longest gap between two received lines (the keeper
for both TCP kinds and for UDP; the gap from the last line to the stop counts too, flagged
``open``). Times are CLOCK_MONOTONIC (:func:`egressd.lab.outpost.monotonic`), one clock for every
process of the machine. Per connection only a few numbers are kept, whatever its length.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from egressd.lab.outpost import monotonic, parse_listen

INTERVAL = 0.02
"""Seconds between two lines of one connection or datagrams of one flow."""

TCP_PORT = 8100
UDP_PORT = 9100

KINDS = ("sf", "cf")
"""``sf`` server-first (the server sends, the pod reads), ``cf`` client-first (the pod sends and
waits for the echo)."""

MAX_SOURCES = 8
"""Distinct sources the server keeps per UDP flow (the first ones; more are counted)."""

CONNECT_TIMEOUT = 5.0
MAX_SECONDS = 900.0
"""Default lifetime of a process whose stop never came."""


def _next(due: float) -> float:
    """The next tick of an absolute schedule; a ticker that fell behind skips what it missed."""
    now = monotonic()
    due += INTERVAL
    return due if due >= now else now + INTERVAL


class Gaps:
    """The longest gap between received lines, in O(1) memory."""

    __slots__ = ("count", "first", "last", "longest", "longest_end")

    def __init__(self) -> None:
        self.count = 0
        self.first: float | None = None
        self.last: float | None = None
        self.longest = 0.0
        self.longest_end: float | None = None

    def receive(self, t: float) -> None:
        if self.last is not None and t - self.last > self.longest:
            self.longest = t - self.last
            self.longest_end = t
        if self.first is None:
            self.first = t
        self.last = t
        self.count += 1

    def report(self, stop: float | None) -> dict[str, Any]:
        """``stall``: the longest gap, with the gap from the last line to ``stop`` when that is
        longer (then ``stall_open``: nothing came back before the stop)."""
        stall, end, open_ = self.longest, self.longest_end, False
        if stop is not None and self.last is not None and stop - self.last > stall:
            stall, end, open_ = stop - self.last, None, True
        return {
            "lines": self.count,
            "first_rx": self.first,
            "last_rx": self.last,
            "stall": stall,
            "stall_end": end,
            "stall_open": open_,
        }


class Lag:
    """How late a ticker woke up: the process's own delay, against which a stall is judged (a stall
    no longer than the lag of the process that measured it may be the process, not the network)."""

    __slots__ = ("longest", "longest_at")

    def __init__(self) -> None:
        self.longest = 0.0
        self.longest_at: float | None = None

    def woke(self, due: float, now: float) -> None:
        if now - due > self.longest:
            self.longest, self.longest_at = now - due, now

    def report(self) -> dict[str, Any]:
        return {"loop_lag": self.longest, "loop_lag_at": self.longest_at}


# --- server -------------------------------------------------------------------------------------


@dataclass
class _ServerConn:
    id: str
    kind: str
    source: str
    accepted: float
    writer: asyncio.StreamWriter
    seq: int = 0
    end: str | None = None
    """``bye`` (the pod ended it), ``reset``, ``eof`` or ``error: ...``; None while open."""
    ended: float | None = None

    def report(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "source": self.source,
            "accepted": self.accepted,
            "sent": self.seq,
            "end": self.end,
            "ended": self.ended,
        }


@dataclass
class _UdpFlow:
    sources: list[tuple[str, float]] = field(default_factory=list)
    more_sources: int = 0
    count: int = 0
    last_source: str = ""

    def see(self, source: str, t: float) -> None:
        self.count += 1
        if source == self.last_source:
            return
        self.last_source = source
        if any(s == source for s, _ in self.sources):
            self.more_sources += 1  # back to an earlier mapping: a change too
        elif len(self.sources) < MAX_SOURCES:
            self.sources.append((source, t))
        else:
            self.more_sources += 1


class _EchoProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: Server) -> None:
        self._server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        t = monotonic()
        source = f"{addr[0]}:{addr[1]}"
        parts = data.split()
        if len(parts) >= 2 and parts[0] == b"U":
            self._server.flows.setdefault(parts[1].decode(errors="replace"), _UdpFlow()).see(source, t)
        if self.transport is not None:
            self.transport.sendto(data.rstrip(b"\n") + b" " + source.encode() + b"\n", addr)

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error for an echo to a flow that is gone


class Server:
    """The outpost side: TCP on ``tcp``, UDP echo on ``udp``. ``async with Server(...) as s:``."""

    def __init__(self, tcp: str = f"0.0.0.0:{TCP_PORT}", udp: str = f"0.0.0.0:{UDP_PORT}") -> None:
        self._tcp = tcp
        self._udp = udp
        self.conns: dict[str, _ServerConn] = {}
        self.flows: dict[str, _UdpFlow] = {}
        self.tcp_address: tuple[str, int] | None = None
        self.udp_address: tuple[str, int] | None = None
        self._server: asyncio.Server | None = None
        self._udp_transport: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self.lag = Lag()

    async def __aenter__(self) -> Server:
        loop = asyncio.get_running_loop()
        host, port = parse_listen(self._tcp)
        self._server = await asyncio.start_server(self._serve, host, port, reuse_address=True, backlog=1024)
        self.tcp_address = cast(tuple[str, int], self._server.sockets[0].getsockname()[:2])
        host, port = parse_listen(self._udp)
        transport, _ = await loop.create_datagram_endpoint(lambda: _EchoProtocol(self), local_addr=(host, port))
        self._udp_transport = transport
        self.udp_address = cast(tuple[str, int], transport.get_extra_info("sockname")[:2])
        self._ticker = asyncio.create_task(self._tick(), name="longlived-server-tick")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._udp_transport is not None:
            self._udp_transport.close()

    async def _tick(self) -> None:
        """Every :data:`INTERVAL`, a line on every open server-first connection (absolute schedule)."""
        due = monotonic()
        while True:
            self.lag.woke(due, monotonic())
            for c in self.conns.values():
                if c.kind == "sf" and c.end is None:
                    c.seq += 1
                    c.writer.write(b"D %d\n" % c.seq)
            due = _next(due)
            await asyncio.sleep(due - monotonic())

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn: _ServerConn | None = None
        try:
            hello = (await asyncio.wait_for(reader.readline(), CONNECT_TIMEOUT)).split()
            if len(hello) != 3 or hello[0] != b"HELLO" or hello[2].decode() not in KINDS:
                return
            peer = writer.get_extra_info("peername")
            source = f"{peer[0]}:{peer[1]}"
            conn = _ServerConn(hello[1].decode(), hello[2].decode(), source, monotonic(), writer)
            self.conns[conn.id] = conn
            writer.write(b"OK " + source.encode() + b"\n")
            conn.end = await self._lines(conn, reader, writer)
        except (ConnectionError, OSError) as exc:
            if conn is not None:
                conn.end = "reset" if isinstance(exc, ConnectionResetError) else f"error: {exc}"
        except (TimeoutError, asyncio.IncompleteReadError, ValueError, UnicodeDecodeError):
            pass
        finally:
            if conn is not None:
                conn.ended = monotonic()
            self._tasks.discard(task)
            writer.close()

    @staticmethod
    async def _lines(conn: _ServerConn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        """Echo a client-first connection's lines, read a server-first one's; how it ended."""
        while True:
            line = await reader.readline()
            if not line:
                return "eof"
            if line.startswith(b"BYE"):
                return "bye"
            if conn.kind == "cf":
                writer.write(line)

    def report(self) -> dict[str, Any]:
        return {
            "role": "server",
            **self.lag.report(),
            "connections": [c.report() for c in self.conns.values()],
            "udp": {
                fid: {"count": f.count, "sources": f.sources, "more_sources": f.more_sources}
                for fid, f in self.flows.items()
            },
        }


# --- keeper -------------------------------------------------------------------------------------


@dataclass
class _KeptConn:
    id: str
    kind: str
    opened: float | None = None
    local: str | None = None
    seen: str | None = None
    """The source the server saw (from its ``OK``)."""
    error: str | None = None
    """Why the connection ended before the stop (``reset``, ``eof``, ...), or could not open."""
    error_at: float | None = None
    gaps: Gaps = field(default_factory=Gaps)
    writer: asyncio.StreamWriter | None = None
    reader: asyncio.StreamReader | None = None
    seq: int = 0
    waiting: bool = False
    """A client-first line is out and its echo not back yet."""

    def fail(self, reason: str) -> None:
        if self.error is None:
            self.error, self.error_at = reason, monotonic()

    def report(self, stop: float | None) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "opened": self.opened,
            "local": self.local,
            "seen": self.seen,
            "end": self.error,
            "ended": self.error_at,
            **self.gaps.report(stop if self.error is None else None),
        }


@dataclass
class _KeptFlow:
    id: str
    port: int
    opened: float | None = None
    seq: int = 0
    gaps: Gaps = field(default_factory=Gaps)
    sources: list[tuple[str, float]] = field(default_factory=list)
    more_sources: int = 0
    error: str | None = None

    def report(self, stop: float | None) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": "udp",
            "opened": self.opened,
            "local": f"0.0.0.0:{self.port}",
            "sources": self.sources,
            "more_sources": self.more_sources,
            "end": self.error,
            **self.gaps.report(stop),
        }


class _FlowProtocol(asyncio.DatagramProtocol):
    def __init__(self, flow: _KeptFlow) -> None:
        self._flow = flow

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        t = monotonic()
        parts = data.split()
        if len(parts) != 4 or parts[0] != b"U":
            return
        flow = self._flow
        flow.gaps.receive(t)
        source = parts[3].decode(errors="replace")
        if not flow.sources or flow.sources[-1][0] != source:
            if len(flow.sources) < MAX_SOURCES:
                flow.sources.append((source, t))
            else:
                flow.more_sources += 1

    def error_received(self, exc: Exception) -> None:
        pass  # the outpost unreachable for a moment: the stall shows it


class Keeper:
    """The pod side: ``server_first`` + ``client_first`` TCP connections and ``udp_flows`` UDP
    flows to ``server``, opened evenly over ``ramp`` seconds."""

    def __init__(
        self,
        server: str,
        *,
        pod: str,
        server_first: int,
        client_first: int,
        udp_flows: int = 0,
        udp_base_port: int = 41000,
        tcp_port: int = TCP_PORT,
        udp_port: int = UDP_PORT,
        ramp: float = 1.0,
    ) -> None:
        self.server = server
        self.tcp_port = tcp_port
        self.udp_port = udp_port
        self.ramp = ramp
        self.conns = [_KeptConn(f"{pod}-sf-{i}", "sf") for i in range(server_first)]
        self.conns += [_KeptConn(f"{pod}-cf-{i}", "cf") for i in range(client_first)]
        # interleave the kinds, so that both have old and young connections
        self.conns.sort(key=lambda c: (int(c.id.rsplit("-", 1)[1]), c.kind))
        self.flows = [_KeptFlow(f"{pod}-udp-{i}", udp_base_port + i) for i in range(udp_flows)]
        self.stopped: float | None = None
        self.lag = Lag()
        self._transports: list[asyncio.DatagramTransport] = []
        self._tasks: list[asyncio.Task[Any]] = []

    async def open(self) -> None:
        """Open every flow, evenly over ``ramp`` seconds; returns when all are open or failed."""
        loop = asyncio.get_running_loop()
        for flow in self.flows:
            transport, _ = await loop.create_datagram_endpoint(
                lambda f=flow: _FlowProtocol(f),  # type: ignore[misc]
                local_addr=("0.0.0.0", flow.port),
                remote_addr=(self.server, self.udp_port),
            )
            self._transports.append(transport)
            flow.opened = monotonic()
        total = len(self.conns)
        start = monotonic()
        opening = []
        for i, conn in enumerate(self.conns):
            delay = start + (self.ramp * i / total if total > 1 else 0.0) - monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            opening.append(asyncio.create_task(self._open(conn), name=f"open-{conn.id}"))
        await asyncio.gather(*opening)
        self._tasks.append(asyncio.create_task(self._tick(), name="keeper-tick"))

    async def _open(self, conn: _KeptConn) -> None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.server, self.tcp_port), CONNECT_TIMEOUT
            )
            writer.write(f"HELLO {conn.id} {conn.kind}\n".encode())
            ok = (await asyncio.wait_for(reader.readline(), CONNECT_TIMEOUT)).split()
        except (OSError, TimeoutError) as exc:
            conn.fail(f"open: {exc!r}")
            return
        if len(ok) != 2 or ok[0] != b"OK":
            conn.fail(f"open: unexpected answer {ok!r}")
            writer.close()
            return
        local = writer.get_extra_info("sockname")
        conn.opened, conn.local, conn.seen = monotonic(), f"{local[0]}:{local[1]}", ok[1].decode()
        conn.reader, conn.writer = reader, writer
        self._tasks.append(asyncio.create_task(self._read(conn), name=f"read-{conn.id}"))

    async def _read(self, conn: _KeptConn) -> None:
        assert conn.reader is not None
        try:
            while True:
                line = await conn.reader.readline()
                if not line:
                    conn.fail("eof")
                    return
                conn.gaps.receive(monotonic())
                conn.waiting = False
        except ConnectionResetError:
            conn.fail("reset")
        except (OSError, ValueError) as exc:
            conn.fail(f"error: {exc!r}")

    async def _tick(self) -> None:
        """Every :data:`INTERVAL`: a line on every client-first connection whose echo is back,
        a datagram on every UDP flow."""
        due = monotonic()
        while True:
            self.lag.woke(due, monotonic())
            for conn in self.conns:
                if conn.kind == "cf" and conn.writer is not None and conn.error is None and not conn.waiting:
                    conn.seq += 1
                    conn.waiting = True
                    conn.writer.write(b"P %d\n" % conn.seq)
            for flow, transport in zip(self.flows, self._transports, strict=True):
                flow.seq += 1
                with contextlib.suppress(OSError):
                    transport.sendto(f"U {flow.id} {flow.seq}\n".encode())
            due = _next(due)
            await asyncio.sleep(due - monotonic())

    async def close(self) -> None:
        """The stop: note its time, say ``BYE`` on every live connection, close everything."""
        self.stopped = monotonic()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for conn in self.conns:
            if conn.writer is not None:
                if conn.error is None:
                    with contextlib.suppress(OSError):
                        conn.writer.write(b"BYE\n")
                conn.writer.close()
        for conn in self.conns:
            if conn.writer is not None:
                with contextlib.suppress(OSError, ConnectionError):
                    await asyncio.wait_for(conn.writer.wait_closed(), 1.0)
        for transport in self._transports:
            transport.close()

    def ready(self) -> dict[str, Any]:
        return {
            "ready": monotonic(),
            "opened": sum(1 for c in self.conns if c.opened is not None),
            "failed": [c.id for c in self.conns if c.opened is None],
            "udp": len(self.flows),
        }

    def report(self) -> dict[str, Any]:
        return {
            "role": "keeper",
            "stopped": self.stopped,
            **self.lag.report(),
            "connections": [c.report(self.stopped) for c in self.conns],
            "udp": [f.report(self.stopped) for f in self.flows],
        }


# --- command line -------------------------------------------------------------------------------


def _print(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def _until_stopped(max_seconds: float) -> None:
    """Until SIGTERM/SIGINT, ``max_seconds``, or the parent's end (the drill is gone)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    parent = os.getppid()
    deadline = monotonic() + max_seconds
    while not stop.is_set() and monotonic() < deadline and os.getppid() == parent:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


async def _serve(args: argparse.Namespace) -> None:
    async with Server(args.tcp, args.udp) as server:
        _print({"ready": monotonic(), "tcp": server.tcp_address, "udp": server.udp_address})
        await _until_stopped(args.max_seconds)
        _print(server.report())


async def _keep(args: argparse.Namespace) -> None:
    keeper = Keeper(
        args.server,
        pod=args.pod,
        server_first=args.server_first,
        client_first=args.client_first,
        udp_flows=args.udp_flows,
        udp_base_port=args.udp_base_port,
        tcp_port=args.tcp_port,
        udp_port=args.udp_port,
        ramp=args.ramp,
    )
    try:
        await keeper.open()
        _print(keeper.ready())
        await _until_stopped(args.max_seconds)
    finally:
        await keeper.close()
        _print(keeper.report())


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m egressd.lab.longlived", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="the outpost side")
    s.add_argument("--tcp", default=f"0.0.0.0:{TCP_PORT}", help="TCP HOST:PORT")
    s.add_argument("--udp", default=f"0.0.0.0:{UDP_PORT}", help="UDP HOST:PORT")
    s.add_argument("--max-seconds", type=float, default=MAX_SECONDS)
    k = sub.add_parser("keep", help="the pod side")
    k.add_argument("--server", required=True, help="the server's address")
    k.add_argument("--pod", default=socket.gethostname().split(".")[0], help="prefix of the connection ids")
    k.add_argument("--server-first", type=int, default=0)
    k.add_argument("--client-first", type=int, default=0)
    k.add_argument("--udp-flows", type=int, default=0)
    k.add_argument("--udp-base-port", type=int, default=41000)
    k.add_argument("--tcp-port", type=int, default=TCP_PORT)
    k.add_argument("--udp-port", type=int, default=UDP_PORT)
    k.add_argument("--ramp", type=float, default=1.0, help="seconds over which the connections open")
    k.add_argument("--max-seconds", type=float, default=MAX_SECONDS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        asyncio.run(_serve(args) if args.command == "serve" else _keep(args))
    except (OSError, ValueError) as exc:
        print(f"longlived: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
